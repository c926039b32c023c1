"""Adaptive superpixels (Kim et al., ICCV 2023, "Adaptive superpixel for active learning in
semantic segmentation"): base superpixels (SEEDS or SLIC, cached as for region=seeds|slic)
merged before each query from the current model's predictions.

Each cycle after cycle 0, every base superpixel gets the mean of the model's softmax over its
pixels; two adjacent base superpixels, both not yet asked, are linked when the Jensen-Shannon
distance (the square root of the JS divergence, natural log, as scipy's `jensenshannon`)
between their means is below `region.merge_threshold`; the merged regions are the connected
components of the links. Kim et al. grow each merged region from a seed base superpixel in
order of uncertainty and compare neighbours to the seed's mean; the connected components here
are that rule without the order (a chain of similar neighbours merges even if its ends
differ), so the merge is a whole-pool library call instead of a loop over regions.

A merged region is asked as one unit; an asked region keeps its shape in later cycles (only
unasked base superpixels merge). The state is a look-up table `lut` [N, R_base]: for each base
superpixel, the smallest base id of the region that holds it. It is saved after every cycle
(`state/regions/cycle_NN.npy`), so a resumed run continues from the same regions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from alseg.cache import cache_key, cached_array
from alseg.errors import AlsegError
from alseg.model import autocast, to_input
from alseg.pool import NOT_ASKED, atomic_write
from alseg.regions import Regions
from alseg.regions.build import CHUNK

VERSION = 1  # bump when the adjacency pairs an unchanged config gives change


def adjacent_pairs(maps: np.ndarray, num_regions: int) -> np.ndarray:
    """The pairs of base superpixels that touch (4-neighbourhood) in each image, int64 [P, 3]
    rows (image, a, b) with a < b, each pair once; vectorised over images in chunks."""
    found = []
    for s in range(0, len(maps), CHUNK):
        m = np.asarray(maps[s:s + CHUNK]).astype(np.int64)
        image = np.arange(s, s + len(m)).reshape(-1, 1, 1)
        for a, b in ((m[:, :, :-1], m[:, :, 1:]), (m[:, :-1, :], m[:, 1:, :])):
            where = a != b
            lo, hi = np.minimum(a, b)[where], np.maximum(a, b)[where]
            img = np.broadcast_to(image, a.shape)[where]
            found.append((img * num_regions + lo) * num_regions + hi)
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    image, rest = np.divmod(keys, num_regions * num_regions)
    return np.stack([image, *np.divmod(rest, num_regions)], axis=1)


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon distance between the rows of `p` and `q` (probability vectors): the
    square root of the JS divergence in nats, in [0, sqrt(ln 2)]."""
    m = (p + q) / 2
    kl = lambda a: torch.where(a > 0, a * (a.clamp_min(1e-30).log() - m.clamp_min(1e-30).log()), 0).sum(-1)  # noqa: E731
    return ((kl(p) + kl(q)) / 2).clamp_min(0).sqrt()


def merged_lut(means: torch.Tensor, asked: torch.Tensor, pairs: torch.Tensor, lut: torch.Tensor,
               threshold: float) -> torch.Tensor:
    """The new look-up table [N, R]: links adjacent, unasked base superpixels whose mean
    predictions `means` [N, R, C] are closer than `threshold` (JS distance); each connected
    component takes its smallest base id. Asked base superpixels (`asked` [N, R]) keep their
    entry of `lut`. `pairs` [P, 3] (image, a, b) lie on the device; only the links leave it."""
    n, r = asked.shape
    i, a, b = pairs.unbind(1)
    link = ~asked[i, a] & ~asked[i, b] & (js_distance(means[i, a], means[i, b]) < threshold)
    src, dst = (i[link] * r + a[link]).cpu().numpy(), (i[link] * r + b[link]).cpu().numpy()
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n * r, n * r))
    _, component = connected_components(graph, directed=False)
    component = torch.from_numpy(component).to(lut.device)
    smallest = torch.full((int(component.max()) + 1,), n * r, dtype=torch.int64, device=lut.device)
    smallest.scatter_reduce_(0, component, torch.arange(n * r, device=lut.device), reduce="amin")
    merged = (smallest[component] % r).view(n, r)
    return torch.where(asked, lut, merged)


def dense(lut: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Region ids 0..k_i-1 per image from `lut` [N, R] (ordered by smallest base id), and k_i."""
    n, r = lut.shape
    valid = torch.arange(r, device=lut.device) < counts[:, None]
    present = torch.zeros(n, r, dtype=torch.int64, device=lut.device).scatter_add_(1, lut * valid, valid.long()) > 0
    rank = present.long().cumsum(1) - 1
    return torch.gather(rank, 1, lut * valid), present.sum(1)


def region_means(probs: torch.Tensor, maps: torch.Tensor, num_regions: int) -> torch.Tensor:
    """Mean of per-pixel probabilities [B, C, H, W] over each region of `maps` [B, H, W]:
    [B, R, C] (zeros for ids with no pixel), by index_add on the device."""
    b, c = probs.shape[:2]
    index = (maps + torch.arange(b, device=maps.device).view(-1, 1, 1) * num_regions).flatten()
    pixels = probs.permute(0, 2, 3, 1).reshape(-1, c).float()
    sums = torch.zeros(b * num_regions, c, device=probs.device).index_add_(0, index, pixels)
    counts = torch.bincount(index, minlength=b * num_regions).clamp_min(1)[:, None]
    return (sums / counts).view(b, num_regions, c)


class _MergedMaps:
    """The merged map of image i on the host (`maps[i]`), made on demand from the base map."""

    def __init__(self, regions: "AdaptiveRegions"):
        self.regions = regions

    def __len__(self) -> int:
        return len(self.regions.base.counts)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.regions.dense_ids[i].cpu().numpy()[np.asarray(self.regions.base.maps[i]).astype(np.int64)]


class _MergedSource:
    """Merged region ids per batch: the dense ids of each base superpixel looked up in the base maps."""

    def __init__(self, dense_ids: torch.Tensor, base, device: torch.device) -> None:
        self.dense_ids, self.base, self.device = dense_ids, base, device

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        base = self.base[index].to(self.device, torch.int64)
        where = index.to(self.dense_ids.device) if isinstance(index, torch.Tensor) else index
        return torch.gather(self.dense_ids[where].to(self.device), 1, base.flatten(1)).view_as(base)


@dataclass
class AdaptiveRegions(Regions):
    """Regions made of base superpixels, merged again before each query (`refresh`)."""

    base: Regions | None = field(default=None, repr=False)
    threshold: float = 0.1
    pairs: np.ndarray | None = field(default=None, repr=False)
    lut: torch.Tensor | None = field(default=None, repr=False)
    dense_ids: torch.Tensor | None = field(default=None, repr=False)

    def set_lut(self, lut: torch.Tensor) -> None:
        """Adopt `lut` [N, R_base]: the dense ids and counts follow."""
        self.lut = lut
        self.dense_ids, counts = dense(lut, torch.as_tensor(self.base.counts, device=lut.device))
        self.counts = counts.cpu().numpy()

    @property
    def stored_maps(self) -> np.ndarray | None:
        return self.base.stored_maps

    def source(self, device: torch.device, stream: bool = False) -> "_MergedSource":
        """This cycle's merged maps as a batch source (alseg.placement.batches): indexed by a
        batch, its merged ids on `device`, made from the base maps (resident or streamed)."""
        return _MergedSource(self.dense_ids, self.base.source(device, stream), torch.device(device))

    @torch.inference_mode()
    def refresh(self, model: torch.nn.Module, images: torch.Tensor, revealed: torch.Tensor, batch_size: int) -> None:
        """Merge the unasked base superpixels anew from `model`'s predictions (see the module doc)."""
        device = images.device
        n, r = len(images), self.base.max_regions
        means = torch.zeros(n, r, 0, device=device)
        asked = torch.zeros(n, r, dtype=torch.bool, device=device)
        model.eval()
        for start in range(0, n, batch_size):
            batch = slice(start, min(start + batch_size, n))
            maps = self.base.batch_maps(batch, device)
            with autocast(device):
                probs = model(to_input(images[batch])).float().softmax(dim=1)
            batch_means = region_means(probs, maps, r)
            if means.shape[2] == 0:
                means = torch.zeros(n, r, batch_means.shape[2], device=device)
            means[batch] = batch_means
            flat = (maps + torch.arange(maps.shape[0], device=device).view(-1, 1, 1) * r).flatten()
            hit = torch.zeros(maps.shape[0] * r, dtype=torch.bool, device=device)
            asked[batch] = hit.index_fill_(0, flat[(revealed[batch] != NOT_ASKED).flatten()], True).view(-1, r)
        self.set_lut(merged_lut(means, asked, torch.from_numpy(self.pairs).to(device), self.lut.to(device), self.threshold))

    def save(self, state: Path, cycle: int) -> None:
        folder = state / "regions"
        folder.mkdir(parents=True, exist_ok=True)
        lut = self.lut.cpu().numpy().astype(np.int32)
        atomic_write(folder / f"cycle_{cycle:02d}.npy", lambda f: np.save(f, lut))

    def restore(self, state: Path, cycle: int) -> None:
        path = state / "regions" / f"cycle_{cycle:02d}.npy"
        if not path.exists():
            raise AlsegError(f"cannot resume: {path} (the merged regions of region=adaptive) is missing; start the run anew")
        self.set_lut(torch.from_numpy(np.load(path).astype(np.int64)).to(self.lut.device))


def base_config(cfg):
    """The base superpixels' config: the packaged conf/region/<base>.yaml with `num_superpixels`."""
    if cfg.base not in ("seeds", "slic"):
        raise AlsegError(f"region.base must be seeds or slic, got {cfg.base!r}")
    with resources.files("alseg.conf").joinpath(f"region/{cfg.base}.yaml").open() as f:
        base = OmegaConf.load(f)
    base.num_superpixels = cfg.num_superpixels
    return base


def adaptive_regions(cfg, images: np.ndarray, cache_dir: str, key: dict) -> AdaptiveRegions:
    """Base superpixels (cached), their adjacency pairs (cached), no merge yet (cycle 0)."""
    from alseg.regions import build_regions

    base = build_regions(base_config(cfg), images, cache_dir, key)
    r = base.max_regions
    pairs = cached_array(cache_dir, f"regions/adjacency-{cache_key(base=base.key, version=VERSION)}",
                         lambda: adjacent_pairs(base.maps, r))
    regions = AdaptiveRegions("adaptive", None, base.counts, key=None, cache_dir=cache_dir, base=base,
                              threshold=float(cfg.merge_threshold), pairs=np.array(pairs))
    regions.maps = _MergedMaps(regions)
    regions.set_lut(torch.arange(r).repeat(len(base.counts), 1))
    return regions
