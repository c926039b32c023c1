"""Stage 2 of multi-class labelling (Hwang et al., NeurIPS 2023; `annotation.prototypes=true`):
pixel-wise pseudo-labels inside the regions that named several classes.

Intra-region label localisation, as the paper describes it: in a region with named classes S,
the prototype of each class c in S is the feature of the region's pixel most likely of class c
(its highest softmax probability p_c, under the stage-1 model); each labelled pixel of the
region takes the class in S whose prototype is most similar to its own feature (cosine
similarity of the decoder features, upsampled to the pixels). Pixels given one class keep it.
The paper's label expansion to neighbouring regions is not done here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from alseg.model import autocast, to_input
from alseg.pool import NO_LABEL
from alseg.regions import Regions

CHUNK = 4096  # pixels whose similarities to their region's prototypes are taken at once


@torch.inference_mode()
def prototype_labels(model: torch.nn.Module, images: torch.Tensor, revealed: np.ndarray, table: np.ndarray,
                     regions: Regions, batch_size: int) -> np.ndarray:
    """A copy of `revealed` (label-set codes) whose multi-class pixels hold the class that the
    prototypes choose; `table` is alseg.pool.Pool.label_table(), `images` the pool's images on
    the model's device. The model must have features(x) and head(features, size)
    (experiment checks it when the run starts)."""
    num_classes = table.shape[2]
    out = revealed.copy()
    multi = (revealed >= num_classes) & (revealed < NO_LABEL)
    todo = np.flatnonzero(multi.any(axis=(1, 2)))
    model.eval()
    device = images.device
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        features, probs = _features_and_probs(model, images[torch.from_numpy(batch).to(device)])
        for j, i in enumerate(batch):
            mask = multi[i]
            ids = np.flatnonzero(mask) if regions.maps is None else np.asarray(regions.maps[i])[mask]
            sets = torch.from_numpy(table[i][revealed[i][mask]]).to(device)
            where = torch.from_numpy(mask).to(device)
            out[i][mask] = localise(features[j][:, where].T, probs[j][:, where].T, sets,
                                    torch.from_numpy(ids.astype(np.int64)).to(device)).cpu().numpy()
    return out


def _features_and_probs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder features upsampled to the pixels [B, D, H, W] and softmax probabilities [B, C, H, W]."""
    x = to_input(images)
    h, w = x.shape[-2:]
    with autocast(x.device):
        features = model.features(x)
        logits = model.head(features, (h, w))
    m = getattr(model, "multiple", 1)  # features cover the input padded to this multiple
    size = (math.ceil(h / m) * m, math.ceil(w / m) * m)
    features = F.interpolate(features.float(), size=size, mode="bilinear", align_corners=False)[..., :h, :w]
    return features, logits.float().softmax(dim=1)


def localise(features: torch.Tensor, probs: torch.Tensor, sets: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Pixel classes from region prototypes: `features` [P, D], `probs` [P, C] and named `sets`
    [P, C] (bool) of P pixels, `region` [P] their region ids. Returns int64 [P], each pixel's
    named class whose prototype (its region's pixel of highest p_c) is the most similar."""
    p, c = probs.shape
    _, group = torch.unique(region, return_inverse=True)
    g = int(group.max()) + 1
    score = probs.masked_fill(~sets, -1.0)
    best = torch.full((g, c), -1.0, device=probs.device).scatter_reduce(0, group[:, None].expand(p, c), score, "amax")
    at_best = torch.where(score == best[group], torch.arange(p, device=probs.device)[:, None], -1)
    pick = torch.full((g, c), -1, device=probs.device).scatter_reduce(0, group[:, None].expand(p, c), at_best, "amax")
    unit = F.normalize(features, dim=1)
    labels = torch.empty(p, dtype=torch.int64, device=probs.device)
    for start in range(0, p, CHUNK):
        rows = slice(start, start + CHUNK)
        prototypes = unit[pick[group[rows]].clamp_min(0)]  # [chunk, C, D]
        similarity = torch.einsum("pd,pcd->pc", unit[rows], prototypes).masked_fill(~sets[rows], -math.inf)
        labels[rows] = similarity.argmax(dim=1)
    return labels
