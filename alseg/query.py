"""Score the unlabelled pool on the device (alseg.selection turns the scores into a batch).

Scores live in a [N, R] tensor (N images, R = most regions in any image); entries that
cannot be asked (already asked, void pixels, padding) are -inf. Only region scores (and, for
core-set strategies, region embeddings) are kept: pixel scores are reduced to regions on
the device with scatter_reduce.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from alseg import distributed
from alseg.errors import AlsegError
from alseg.data.base import IGNORE
from alseg.model import autocast, is_split, mc_passes, to_input
from alseg.placement import Streamed, batches, host_view, is_streamed
from alseg.pool import NOT_ASKED
from alseg.progress import Progress
from alseg.regions import Regions
from alseg.selection import lowest, order_keys
from alseg.strategies import Strategy

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


def _passes(models: list[torch.nn.Module], x: torch.Tensor, strategy: Strategy, keep: dict) -> Iterator[torch.Tensor]:
    """Softmax probabilities of every pass: `strategy.passes` passes of each model (MC dropout
    in `strategy.mc_scope`, see alseg.model.mc_passes). Keeps the first model's features (for
    embeddings) and the running sum of probabilities in `keep`."""
    for m, model in enumerate(models):
        features, passes = mc_passes(model, x, strategy.passes, strategy.mc_scope, m == 0 and strategy.uses_embeddings)
        if m == 0:
            keep["features"] = features
        for logits in passes:
            probs = logits.float().softmax(dim=1)
            keep["sum"] = probs if "sum" not in keep else keep["sum"] + probs
            yield probs


@torch.inference_mode()
def score_pool(strategy: Strategy, models: list[torch.nn.Module], images: torch.Tensor | Streamed,
               labels: torch.Tensor | Streamed, revealed: torch.Tensor | Streamed, regions: Regions,
               generator: torch.Generator, batch_size: int, num_classes: int, rows: slice | None = None) -> PoolScores:
    """Score every region of the pool. `models=[]` draws random region scores; several models
    form a committee. The strategy's config says how pixel scores become region scores
    (`aggregate`), whether void pixels may be asked (`exclude_void`), whether the regions'
    majority predicted classes are kept (`class_balance`) and how many candidates an embedding
    strategy keeps (for pixels: the `pixel_candidates` best askable pixels per image). Arrays
    are on the device or all `Streamed` (alseg.placement, read one batch ahead). Random draws
    (MC dropout's too) are seeded per batch from one draw of `generator`, so a batch scores
    alike in whichever process: `rows` (whole batches, alseg.distributed.shard) scores those
    images only. A NaN or +inf score (a diverged model) is an error, never a rank."""
    s = strategy.cfg
    device = images.device
    seed = int(torch.randint(2**62, (1,), generator=generator))
    n, r = len(images), regions.max_regions
    rows = rows or slice(0, n)
    m = rows.stop - rows.start
    out = PoolScores(torch.empty(m, r, device=device),
                     torch.empty(m, r, dtype=torch.int64, device=device) if models and s.get("class_balance") else None)
    counts = torch.as_tensor(regions.counts, device=device)
    keep_embeddings = strategy.uses_embeddings and bool(models)
    if keep_embeddings:
        cand_width, lab_width = _embedding_widths(models[0], strategy, regions, revealed)
    broken = torch.zeros((), dtype=torch.bool, device=device)
    progress = Progress("scoring the pool", m, every=None)  # a bar on a terminal (no sync)
    slices = [slice(start, min(start + batch_size, n)) for start in range(rows.start, rows.stop, batch_size)]
    sources = [images, labels, revealed, regions.source(device, is_streamed(images))]
    for batch, (batch_images, batch_labels, batch_revealed, maps) in zip(slices, batches(sources, slices)):
        here = slice(batch.start - rows.start, batch.stop - rows.start)
        draws = torch.Generator(device=device).manual_seed(seed + batch.start)
        maps = None if maps is None else maps.to(torch.int64)
        asked_regions, blocked = _blocked(batch_revealed, batch_labels, maps, counts[batch], r, s.get("exclude_void", True))
        keep: dict = {}
        if not models:
            batch_scores = torch.rand(len(blocked), r, generator=draws, device=device)
        else:
            with autocast(device), _seeded(device, seed + batch.start):
                pixel = strategy.score_passes(_passes(models, to_input(batch_images), strategy, keep))
            batch_scores = _to_regions(pixel.float(), maps, r, _REDUCE[s.get("aggregate", "mean")])
            if out.classes is not None:
                out.classes[here] = _majority(keep["sum"].argmax(dim=1), maps, r, num_classes)
        broken |= (torch.isnan(batch_scores) | torch.isposinf(batch_scores)).any()
        batch_scores = batch_scores.masked_fill(blocked, -math.inf)
        out.scores[here] = batch_scores
        if keep_embeddings:
            embedder = _embedder(keep["features"], maps, images.shape[1:3], r)
            _keep_embeddings(out, here, embedder, order_keys(batch_scores, draws), asked_regions, len(out.scores),
                             cand_width, lab_width)
        progress.tick(batch.stop - batch.start)
    progress.close()
    if distributed.any_rank(broken):
        raise AlsegError("the model's scores are NaN or infinite: training diverged (lower train.lr, or check the data)")
    return out


def _blocked(revealed: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor | None, counts: torch.Tensor, r: int,
             exclude_void: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's asked regions [B, R], and those that cannot be asked: asked, padding past each
    image's count, and (pixel regions, `exclude_void`) void pixels."""
    asked = _to_regions((revealed != NOT_ASKED).to(torch.float32), maps, r, "amax") > 0
    blocked = asked | (torch.arange(r, device=asked.device) >= counts[:, None])
    if maps is None and exclude_void:
        blocked |= labels.flatten(1) == IGNORE
    return asked, blocked


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's global random draws (MC dropout) from `seed`; the run's own stream goes on after
    as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _embedding_widths(model: torch.nn.Module, strategy: Strategy, regions: Regions,
                      revealed: torch.Tensor | Streamed) -> tuple[int, int]:
    """Candidates and asked regions kept per image: every region, or for pixel regions the
    `strategy.pixel_candidates` best and room for the most pixels asked in one image."""
    if not is_split(model):
        raise AlsegError(f"{strategy.cfg.name} needs embeddings: {type(model).__name__} must have features(x) "
                         "and head(features, size)")
    r = regions.max_regions
    if regions.maps is not None:
        return r, r
    asked = host_view(revealed)
    candidates = int(strategy.cfg.get("pixel_candidates", 1024))
    return min(r, candidates), int((asked.reshape(len(asked), -1) != NOT_ASKED).sum(1).max())


def _keep_embeddings(out: PoolScores, batch: slice, embed, keys, asked, n, cand_width, lab_width) -> None:
    """Store the embeddings of the askable regions ranked first by `keys` as candidates, and
    the asked regions' embeddings."""
    top = keys.topk(cand_width, dim=1)
    emb = embed(top.indices)
    if out.embeddings is None:
        d, device = emb.shape[2], emb.device
        out.candidates = torch.full((n, cand_width), -1, dtype=torch.int64, device=device)
        out.embeddings = torch.zeros(n, cand_width, d, device=device)
        out.labelled = torch.zeros(n, lab_width, d, device=device)
        out.labelled_valid = torch.zeros(n, lab_width, dtype=torch.bool, device=device)
    out.candidates[batch] = torch.where(top.values > lowest(keys), top.indices, -1)
    out.embeddings[batch] = emb
    if lab_width:
        lab = asked.float().topk(lab_width, dim=1)
        out.labelled[batch] = embed(lab.indices)
        out.labelled_valid[batch] = lab.values > 0
