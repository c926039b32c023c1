"""Sieving (Kim et al., ICCV 2023, "Adaptive superpixel for active learning in semantic
segmentation"): a dominant label is wrong on the pixels of its region that belong to another
class, so before each cycle's training (after cycle 0) the model of the cycle before judges
them. In each labelled region, the model's confidence for the region's label, sorted
ascending, is a curve whose knee (Kneedle: the largest gap between the curve and the diagonal,
both scaled to [0, 1]) splits the doubtful pixels from the rest; the pixels below the knee
are left out of this cycle's loss (they stay revealed, and are judged again next cycle).
A region with no knee (a straight or convex curve, or one confidence) keeps every pixel.
Kim et al. sieve only merged regions and sample the curve at 20 points; here every labelled
region of a region map is sieved on its whole curve.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from alseg.model import autocast, to_input
from alseg.pool import NO_LABEL
from alseg.regions import Regions

log = logging.getLogger(__name__)


def knee_keep(confidence: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Which pixels to keep [P] (bool): in each group (region), those whose `confidence` is at
    or above the knee of the group's ascending confidence curve."""
    order = torch.argsort(confidence, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    c = confidence[order].float()
    _, inverse, counts = torch.unique_consecutive(groups[order], return_inverse=True, return_counts=True)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(c), device=c.device) - starts[inverse]
    x = rank / (counts[inverse] - 1).clamp_min(1)
    low, high = c[starts][inverse], c[starts + counts - 1][inverse]
    y = torch.where(high > low, (c - low) / (high - low).clamp_min(1e-12), 0.0)
    gap = y - x
    best = torch.full((len(counts),), -math.inf, device=c.device).scatter_reduce(0, inverse, gap, "amax")
    at_knee = torch.where(gap >= best[inverse], c, math.inf)
    knee = torch.full((len(counts),), math.inf, device=c.device).scatter_reduce(0, inverse, at_knee, "amin")
    keep = torch.empty_like(c, dtype=torch.bool)
    keep[order] = c >= knee[inverse]
    return keep


@torch.inference_mode()
def sieve(model: torch.nn.Module, images: torch.Tensor, revealed: np.ndarray, regions: Regions, batch_size: int) -> np.ndarray:
    """A copy of `revealed` [N, H, W] in which the pixels `model` sieves out (see the module doc)
    are NO_LABEL, for one cycle's training; images without labels are not run."""
    out = np.array(revealed)
    device = images.device
    labelled_images = np.flatnonzero((out < NO_LABEL).reshape(len(out), -1).any(axis=1))
    model.eval()
    dropped = 0
    for start in range(0, len(labelled_images), batch_size):
        idx = labelled_images[start:start + batch_size]
        labels = torch.from_numpy(out[idx]).to(device).long()
        labelled = labels < NO_LABEL
        with autocast(device):
            logits = model(to_input(images[torch.from_numpy(idx).to(device)]))
        probs = logits.float().softmax(dim=1)
        confidence = probs.gather(1, (labels * labelled)[:, None]).squeeze(1)[labelled]
        maps = regions.batch_maps(torch.from_numpy(idx), device)
        groups = (maps + torch.arange(len(idx), device=device).view(-1, 1, 1) * regions.max_regions)[labelled]
        drop = torch.zeros_like(labelled)
        drop[labelled] = ~knee_keep(confidence, groups)
        drop = drop.cpu().numpy()
        out[idx] = np.where(drop, NO_LABEL, out[idx])
        dropped += int(drop.sum())
    total = int((np.asarray(revealed) < NO_LABEL).sum())
    log.info("  sieving left out %d of %d labelled pixels (%.1f%%) from this cycle's training",
             dropped, total, 100 * dropped / max(1, total))
    return out
