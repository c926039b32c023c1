"""Score the unlabelled pool on the device and choose a batch of regions within the budget.

Scores live in a [N, R] tensor (N images, R = most regions in any image); entries that
cannot be asked (already asked, void pixels, padding) are -inf. Only region scores are kept:
pixel scores are reduced to regions on the device with scatter_reduce.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from alseg.model import to_input
from alseg.regions import Regions
from alseg.strategies import Strategy

NOT_ASKED = 255


def _to_regions(values: torch.Tensor, maps: torch.Tensor | None, num_regions: int, reduce: str) -> torch.Tensor:
    """Reduce per-pixel values [B, H, W] to per-region values [B, R] ('mean' | 'sum' | 'amax')."""
    if maps is None:
        return values.flatten(1)
    b = values.shape[0]
    index = (maps + torch.arange(b, device=maps.device).view(b, 1, 1) * num_regions).flatten()
    out = torch.zeros(b * num_regions, dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, index, values.flatten(), reduce=reduce, include_self=False)
    return out.view(b, num_regions)


def _majority(pred: torch.Tensor, maps: torch.Tensor | None, num_regions: int, num_classes: int) -> torch.Tensor:
    """The most frequent predicted class of each region, [B, R] (the pixel's own class for pixels)."""
    if maps is None:
        return pred.flatten(1)
    b = pred.shape[0]
    index = ((maps + torch.arange(b, device=maps.device).view(b, 1, 1) * num_regions) * num_classes + pred).flatten()
    votes = torch.zeros(b * num_regions * num_classes, dtype=torch.int32, device=pred.device)
    votes.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
    return votes.view(b, num_regions, num_classes).argmax(dim=2)


@torch.inference_mode()
def score_pool(
    strategy: Strategy,
    model: torch.nn.Module | None,
    images: torch.Tensor,
    labels: np.ndarray,
    revealed: np.ndarray,
    regions: Regions,
    generator: torch.Generator,
    batch_size: int,
    num_classes: int,
    aggregate: str = "mean",
    exclude_void: bool = True,
    class_balance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Region scores [N, R] of the whole pool (-inf = not askable) and, with `class_balance`,
    each region's majority predicted class [N, R]. `model=None` draws random region scores.
    `exclude_void` keeps pixels whose ground truth is void from being asked (pixel regions)."""
    device = images.device
    n, r = len(images), regions.max_regions
    scores = torch.empty(n, r, device=device)
    classes = torch.empty(n, r, dtype=torch.int64, device=device) if class_balance else None
    counts = torch.as_tensor(regions.counts, device=device)
    if model is not None:
        model.eval()
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        maps = regions.batch_maps(index, device)
        asked = torch.from_numpy(np.asarray(revealed[index])).to(device) != NOT_ASKED
        blocked = _to_regions(asked.to(torch.float32), maps, r, "amax") > 0
        if maps is None and exclude_void:
            blocked |= torch.from_numpy(np.asarray(labels[index])).to(device).flatten(1) == NOT_ASKED
        blocked |= torch.arange(r, device=device) >= counts[index, None]
        if model is None:
            batch_scores = torch.rand(len(index), r, generator=generator, device="cpu").to(device)
        else:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(to_input(images[index]))
            probs = logits.float().softmax(dim=1)
            batch_scores = _to_regions(strategy.pixel_scores(probs), maps, r, _REDUCE[aggregate])
            if classes is not None:
                classes[index] = _majority(probs.argmax(dim=1), maps, r, num_classes)
        scores[index] = batch_scores.masked_fill(blocked, -math.inf)
    return scores, classes


_REDUCE = {"mean": "mean", "sum": "sum", "max": "amax"}


def balance_classes(scores: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cai et al.'s ClassBal: min-max normalised score x exp(-p_c), where p_c is the share of
    askable regions whose majority predicted class is c."""
    valid = torch.isfinite(scores)
    if not valid.any():
        return scores
    lo, hi = scores[valid].min(), scores[valid].max()
    norm = (scores - lo) / (hi - lo).clamp_min(1e-12)
    share = torch.bincount(classes[valid], minlength=num_classes).float() / valid.sum()
    return torch.where(valid, norm * torch.exp(-share[classes]), scores)


def sample_top_percent(scores: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """PixelPick's top-n%: per image keep the `fraction` most informative askable regions and
    give them uniform random scores, so that the batch is sampled uniformly among them."""
    valid = torch.isfinite(scores)
    keep = (valid.sum(dim=1).float() * fraction).ceil().long().clamp_min(1)
    k = int(min(keep.max().item(), scores.shape[1]))
    top = scores.topk(k, dim=1)
    rank = torch.arange(k, device=scores.device)
    chosen = (rank < keep[:, None]) & torch.isfinite(top.values)
    random = torch.rand(top.values.shape, generator=generator, device="cpu").to(scores.device)
    out = torch.full_like(scores, -math.inf)
    return out.scatter(1, top.indices, torch.where(chosen, random, -math.inf))


def select_per_image(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scoring askable regions of every image (PixelPick's per-image quota)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1)
    keep = torch.isfinite(top.values)
    rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand(-1, k)
    return rows[keep].cpu().numpy(), top.indices[keep].cpu().numpy()


def select_by_clicks(scores: torch.Tensor, costs: torch.Tensor | None, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Cai et al.'s Algorithm 1: regions in descending score, adding each one's cost, until the
    click budget is reached (the last region may overshoot it). Every region costs >= 1 click,
    so at most `budget` regions can be needed."""
    flat = scores.flatten()
    k = int(min(torch.isfinite(flat).sum().item(), math.ceil(budget)))
    top = flat.topk(k)
    cost = torch.ones(k, device=flat.device) if costs is None else costs.flatten()[top.indices].float()
    spent_before = torch.cumsum(cost, 0) - cost
    chosen = top.indices[spent_before < budget]
    r = scores.shape[1]
    return (chosen // r).cpu().numpy(), (chosen % r).cpu().numpy()
