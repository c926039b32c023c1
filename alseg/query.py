"""Score the unlabelled pool on the device and choose a batch of regions within the budget.

Scores live in a [N, R] tensor (N images, R = most regions in any image); entries that
cannot be asked (already asked, void pixels, padding) are -inf. Only region scores (and, for
core-set strategies, region embeddings) are kept: pixel scores are reduced to regions on
the device with scatter_reduce.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from alseg.device import upload
from alseg.errors import AlsegError
from alseg.model import autocast, enable_dropout, to_input
from alseg.regions import Regions
from alseg.strategies import Strategy

NOT_ASKED = 255
_REDUCE = {"mean": "mean", "sum": "sum", "max": "amax"}


@dataclass
class PoolScores:
    """What a scoring pass over the pool leaves on the device."""

    scores: torch.Tensor                     # [N, R], -inf = not askable
    classes: torch.Tensor | None = None      # [N, R] majority predicted class (class balance)
    candidates: torch.Tensor | None = None   # [N, M] region ids with embeddings (-1 = none)
    embeddings: torch.Tensor | None = None   # [N, M, D] candidate embeddings
    labelled: torch.Tensor | None = None     # [N, L, D] embeddings of asked regions
    labelled_valid: torch.Tensor | None = None  # [N, L]


def _offsets(maps: torch.Tensor, num_regions: int) -> torch.Tensor:
    """Region ids made unique across the batch: image b's region r -> b * R + r."""
    return maps + torch.arange(maps.shape[0], device=maps.device).view(-1, 1, 1) * num_regions


def _to_regions(values: torch.Tensor, maps: torch.Tensor | None, num_regions: int, reduce: str) -> torch.Tensor:
    """Reduce per-pixel values [B, H, W] to per-region values [B, R] ('mean' | 'sum' | 'amax')."""
    if maps is None:
        return values.flatten(1)
    out = torch.zeros(maps.shape[0] * num_regions, dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, _offsets(maps, num_regions).flatten(), values.flatten(), reduce=reduce, include_self=False)
    return out.view(-1, num_regions)


def _majority(pred: torch.Tensor, maps: torch.Tensor | None, num_regions: int, num_classes: int) -> torch.Tensor:
    """The most frequent predicted class of each region, [B, R] (the pixel's own class for pixels)."""
    if maps is None:
        return pred.flatten(1)
    index = (_offsets(maps, num_regions) * num_classes + pred).flatten()
    votes = torch.zeros(maps.shape[0] * num_regions * num_classes, dtype=torch.int32, device=pred.device)
    votes.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
    return votes.view(-1, num_regions, num_classes).argmax(dim=2)


def _embedder(features: torch.Tensor, maps: torch.Tensor | None, size: tuple[int, int], num_regions: int):
    """A function `ids [B, K] -> embeddings [B, K, D]` of regions from the decoder features.

    A region's embedding is the mean feature of the cells whose centre pixel lies in it
    (regions smaller than a cell get their image's mean feature); a pixel's is the feature of
    the cell holding it. Feature strides are powers of two (the input is padded up to them).
    """
    b, d, fh, fw = features.shape
    h, w = size
    sy, sx = (2 ** max(0, math.ceil(math.log2(a / f))) for a, f in ((h, fh), (w, fw)))
    flat = features.float().flatten(2).transpose(1, 2)  # [B, fh * fw, D]
    if maps is None:
        def embed(ids):
            cell = (ids // w) // sy * fw + (ids % w) // sx
            return torch.gather(flat, 1, cell[..., None].expand(-1, -1, d))
        return embed
    cy = (torch.arange(fh, device=features.device) * sy + sy // 2).clamp_max(h - 1)
    cx = (torch.arange(fw, device=features.device) * sx + sx // 2).clamp_max(w - 1)
    cell_region = _offsets(maps[:, cy][:, :, cx], num_regions).flatten()
    sums = torch.zeros(b * num_regions, d, device=features.device).index_add_(0, cell_region, flat.reshape(-1, d))
    counts = torch.bincount(cell_region, minlength=b * num_regions)[:, None]
    means = flat.mean(dim=1).repeat_interleave(num_regions, dim=0)
    emb = torch.where(counts > 0, sums / counts.clamp_min(1), means).view(b, num_regions, d)
    return lambda ids: torch.gather(emb, 1, ids[..., None].expand(-1, -1, d))


def _passes(models: list[torch.nn.Module], x: torch.Tensor, passes: int, keep: dict) -> Iterator[torch.Tensor]:
    """Softmax probabilities of every pass: `passes` MC-dropout passes of each model (only the
    head re-runs when the model exposes features/head). Keeps the first model's features and
    the running sum of probabilities in `keep`."""
    size = x.shape[-2:]
    for m, model in enumerate(models):
        split = hasattr(model, "features") and hasattr(model, "head")
        features = model.features(x) if split else None
        if m == 0:
            keep["features"] = features
        for _ in range(passes):
            logits = model.head(features, size) if split else model(x)
            probs = logits.float().softmax(dim=1)
            keep["sum"] = probs if "sum" not in keep else keep["sum"] + probs
            yield probs


@torch.inference_mode()
def score_pool(
    strategy: Strategy,
    models: list[torch.nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    revealed: torch.Tensor,
    regions: Regions,
    generator: torch.Generator,
    batch_size: int,
    num_classes: int,
    aggregate: str = "mean",
    exclude_void: bool = True,
    class_balance: bool = False,
    pixel_candidates: int = 1024,
) -> PoolScores:
    """Score every region of the pool. `models=[]` draws random region scores; several models
    form a committee. `exclude_void` keeps pixels whose ground truth is void from being asked
    (pixel regions). With an embedding strategy, keeps candidate and labelled embeddings
    (for pixels: the `pixel_candidates` best-scoring askable pixels of each image).
    `labels` and `revealed` [N, H, W] (uint8) are tensors on the device: a copy from host
    memory per batch would make a GPU wait."""
    device = images.device
    n, r = len(images), regions.max_regions
    out = PoolScores(torch.empty(n, r, device=device))
    if class_balance:
        out.classes = torch.empty(n, r, dtype=torch.int64, device=device)
    counts = torch.as_tensor(regions.counts, device=device)
    for model in models:
        model.eval()
        if strategy.passes > 1 and len(models) == 1 and enable_dropout(model) == 0:
            raise AlsegError(f"{strategy.cfg.name} needs stochastic passes, but {type(model).__name__} has no dropout layer")
    keep_embeddings = strategy.uses_embeddings and bool(models)
    if keep_embeddings:
        if regions.maps is None:  # room for the embeddings of the most pixels asked in one image
            lab_width = int((revealed.flatten(1) != NOT_ASKED).sum(dim=1).max())
        else:
            lab_width = r
        cand_width = min(r, pixel_candidates) if regions.maps is None else r
    for start in range(0, n, batch_size):
        batch = slice(start, min(start + batch_size, n))
        maps = regions.batch_maps(batch, device)
        asked = revealed[batch] != NOT_ASKED
        asked_regions = _to_regions(asked.to(torch.float32), maps, r, "amax") > 0
        blocked = asked_regions.clone()
        if maps is None and exclude_void:
            blocked |= labels[batch].flatten(1) == NOT_ASKED
        blocked |= torch.arange(r, device=device) >= counts[batch, None]
        if not models:
            batch_scores = upload(torch.rand(len(asked), r, generator=generator), device)
        else:
            keep: dict = {}
            x = to_input(images[batch])
            with autocast(device):
                pixel = strategy.score_passes(_passes(models, x, strategy.passes, keep))
            batch_scores = _to_regions(pixel.float(), maps, r, _REDUCE[aggregate])
            if out.classes is not None:
                out.classes[batch] = _majority(keep["sum"].argmax(dim=1), maps, r, num_classes)
        batch_scores = batch_scores.masked_fill(blocked, -math.inf)
        out.scores[batch] = batch_scores
        if keep_embeddings:
            if keep["features"] is None:
                raise AlsegError(f"{strategy.cfg.name} needs embeddings: {type(models[0]).__name__} must have features(x) and head(features, size)")
            embedder = _embedder(keep["features"], maps, images.shape[1:3], r)
            _keep_embeddings(out, batch, embedder, batch_scores, asked_regions, n, cand_width, lab_width)
    return out


def _keep_embeddings(out: PoolScores, batch: slice, embed, scores, asked, n, cand_width, lab_width) -> None:
    """Store the best-scoring askable regions' embeddings as candidates, and the asked ones'."""
    top = scores.topk(cand_width, dim=1)
    emb = embed(top.indices)
    if out.embeddings is None:
        d, device = emb.shape[2], emb.device
        out.candidates = torch.full((n, cand_width), -1, dtype=torch.int64, device=device)
        out.embeddings = torch.zeros(n, cand_width, d, device=device)
        out.labelled = torch.zeros(n, lab_width, d, device=device)
        out.labelled_valid = torch.zeros(n, lab_width, dtype=torch.bool, device=device)
    out.candidates[batch] = torch.where(torch.isfinite(top.values), top.indices, -1)
    out.embeddings[batch] = emb
    if lab_width:
        lab = asked.float().topk(lab_width, dim=1)
        out.labelled[batch] = embed(lab.indices)
        out.labelled_valid[batch] = lab.values > 0


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
    random = upload(torch.rand(top.values.shape, generator=generator), scores.device)
    out = torch.full_like(scores, -math.inf)
    return out.scatter(1, top.indices, torch.where(chosen, random, -math.inf))


def k_center(emb: torch.Tensor, valid: torch.Tensor, labelled: torch.Tensor, labelled_valid: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center, batched over groups: emb [G, M, D] candidates (valid [G, M]),
    labelled [G, L, D] (labelled_valid [G, L]). Returns [G, k] picked candidate positions in
    pick order (-1 when a group runs out). Each pick is the candidate farthest from
    everything labelled or picked; distances are computed per pick, never all pairs."""
    g, m, _ = emb.shape
    far = torch.full((g, m), math.inf, device=emb.device)
    for chunk in range(0, labelled.shape[1], 256):
        d = torch.cdist(emb, labelled[:, chunk : chunk + 256])
        d = d.masked_fill(~labelled_valid[:, None, chunk : chunk + 256], math.inf)
        far = torch.minimum(far, d.amin(dim=2))
    # a group with nothing labelled starts from the candidate farthest from its mean
    start = torch.cdist(emb, (emb * valid[..., None]).sum(1, keepdim=True) / valid.sum(1).clamp_min(1)[:, None, None])[..., 0]
    far = torch.where(torch.isinf(far), start, far).masked_fill(~valid, -math.inf)
    picks = torch.full((g, k), -1, dtype=torch.int64, device=emb.device)
    rows = torch.arange(g, device=emb.device)
    for j in range(k):
        best, pick = far.max(dim=1)
        ok = best > -math.inf
        picks[:, j] = torch.where(ok, pick, -1)
        d = torch.linalg.vector_norm(emb - emb[rows, pick][:, None], dim=2)
        far = torch.minimum(far, d).masked_fill(~valid, -math.inf)
        far[rows[ok], pick[ok]] = -math.inf
        valid = valid.clone()
        valid[rows[ok], pick[ok]] = False
    return picks


def diverse_scores(pool: PoolScores, per_image: int | None, total: int | None, multiple: float | None) -> torch.Tensor:
    """Scores [N, R] that rank a greedy k-center batch first: per image (`per_image` picks each)
    or over the whole pool (`total` picks). With `multiple`, only the multiple x batch
    best-scoring candidates take part (the hybrid strategy)."""
    n, m = pool.candidates.shape
    valid = pool.candidates >= 0
    cand_scores = torch.gather(pool.scores, 1, pool.candidates.clamp_min(0)).masked_fill(~valid, -math.inf)
    if per_image is not None:
        if multiple:
            keep = min(m, math.ceil(multiple * per_image))
            valid &= cand_scores >= cand_scores.topk(keep, dim=1).values[:, -1:]
        picks = k_center(pool.embeddings, valid, pool.labelled, pool.labelled_valid, per_image)
        image = torch.arange(n, device=picks.device)[:, None].expand_as(picks)
        rank = torch.arange(per_image, 0, -1, device=picks.device, dtype=torch.float32).expand_as(picks)
    else:
        if multiple:
            keep = min(int(valid.sum()), math.ceil(multiple * total))
            if keep > 0:
                valid &= cand_scores >= cand_scores.flatten().topk(keep).values[-1]
        flat = lambda t: t.reshape(1, n * t.shape[1], *t.shape[2:])  # noqa: E731
        picks = k_center(flat(pool.embeddings), flat(valid), flat(pool.labelled), flat(pool.labelled_valid), total)
        image, picks = picks // m, picks % m
        image = torch.where(picks >= 0, image, -1)
        rank = torch.arange(total, 0, -1, device=picks.device, dtype=torch.float32)[None]
    out = torch.full_like(pool.scores, -math.inf)
    ok = picks >= 0
    regions = pool.candidates[image[ok], picks[ok]]
    out[image[ok], regions] = rank[ok]
    return out


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
