"""Region registry: `region.name` -> a builder of per-image region maps for a split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alseg.cache import cache_key
from alseg.errors import AlsegError
from alseg.placement import Streamed


@dataclass
class Regions:
    """The regions an annotator can be asked about, per training image.

    `maps[i]` holds local region ids 0..counts[i]-1 for image i (an unsigned type, usually
    a read-only memmap or broadcast view); `maps` is None for pixel regions, where region r
    of an image is the pixel at flat index r. `key` names the maps (data and parameters) for
    caches built on top of them (the oracle's click costs), kept in `cache_dir`.
    """

    name: str
    maps: np.ndarray | None
    counts: np.ndarray
    key: str | None = None
    cache_dir: str | None = None
    device_maps: torch.Tensor | None = field(default=None, repr=False)

    @property
    def max_regions(self) -> int:
        return int(self.counts.max())

    @property
    def stored_maps(self) -> np.ndarray | None:
        """The map array these regions place on the device or stream (see `source`)."""
        return self.maps

    def source(self, device: torch.device, stream: bool = False) -> "torch.Tensor | Streamed | None":
        """The region maps as a batch source (alseg.placement.batches): None for pixels; with
        `stream`, read from host memory batch by batch; otherwise on `device`, all maps sent
        there on the first call and kept (a view on the CPU). A map shared by every image (box,
        image) is always one map on the device."""
        if self.maps is None:
            return None
        shared = self.maps.strides[0] == 0
        if stream and not shared:
            return Streamed(self.maps, device)
        if self.device_maps is None or self.device_maps.device != torch.device(device):
            if shared:
                one = torch.from_numpy(np.array(self.maps[0])).to(device)
                self.device_maps = one.expand(len(self.maps), -1, -1)
            else:
                self.device_maps = torch.from_numpy(self.maps).to(device)
        return self.device_maps

    def batch_maps(self, index: slice | torch.Tensor, device: torch.device, stream: bool = False) -> torch.Tensor | None:
        """The region maps of the images `index` as an int64 tensor on `device` (None for
        pixels), from `source` (read from host memory now when `stream`)."""
        maps = self.source(device, stream)
        return None if maps is None else maps[index].to(device, torch.int64)

    def refresh(self, model: torch.nn.Module, images: torch.Tensor, revealed: torch.Tensor, batch_size: int) -> None:
        """Called before each query after cycle 0 with the current model: regions that follow
        the model (region=adaptive) rebuild here; fixed regions stay as they are."""

    def save(self, state: Path, cycle: int) -> None:
        """Write what `restore` needs to rebuild this cycle's regions (nothing for fixed ones)."""

    def restore(self, state: Path, cycle: int) -> None:
        """Rebuild the regions as they were after `cycle` (resume)."""


def _pixel(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    n, h, w = images.shape[:3]
    return Regions("pixel", None, np.full(n, h * w, dtype=np.int64), key=f"pixel-{cache_key(data=key)}",
                   cache_dir=cache_dir)


def _seeds(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    from alseg.regions.seeds import seeds_regions

    return seeds_regions(cfg, images, cache_dir, key)


def _slic(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    from alseg.regions.slic import slic_regions

    return slic_regions(cfg, images, cache_dir, key)


def _box(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    from alseg.regions.grid import box_regions

    return box_regions(cfg, images, cache_dir, key)


def _image(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    from alseg.regions.grid import image_regions

    return image_regions(cfg, images, cache_dir, key)


def _adaptive(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    from alseg.regions.adaptive import adaptive_regions

    return adaptive_regions(cfg, images, cache_dir, key)


REGIONS: dict[str, Callable[..., Regions]] = {
    "pixel": _pixel, "seeds": _seeds, "slic": _slic, "box": _box, "image": _image, "adaptive": _adaptive,
}


def build_regions(cfg, images: np.ndarray, cache_dir: str, key: dict) -> Regions:
    """Region maps for `images`, computed once and cached under a key of `key` and `cfg`."""
    if cfg.name not in REGIONS:
        raise AlsegError(f"unknown region type {cfg.name!r}; available: {', '.join(sorted(REGIONS))}")
    return REGIONS[cfg.name](cfg, images, cache_dir, key)
