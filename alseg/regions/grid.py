"""Regions that do not depend on the image: a grid of boxes, or the whole image.

The map is the same for every image, so it is built once at [H, W] and broadcast (a
read-only view, no memory per image, nothing to cache: building it takes microseconds).
"""
from __future__ import annotations

import numpy as np

from alseg.cache import cache_key
from alseg.errors import AlsegError
from alseg.regions.build import smallest_uint


def box_map(height: int, width: int, size: int) -> np.ndarray:
    """Ids of `size` x `size` boxes in row-major order from the top-left corner; boxes at
    the right and bottom borders are clipped to what is left of the image."""
    cols = -(-width // size)
    ids = (np.arange(height)[:, None] // size) * cols + np.arange(width)[None, :] // size
    return ids.astype(smallest_uint(int(ids.max())))


def box_regions(cfg, images: np.ndarray, cache_dir: str, key: dict):
    from alseg.regions import Regions

    n, h, w = images.shape[:3]
    if cfg.size is None or int(cfg.size) < 1:
        raise AlsegError(f"region.size must be a box side >= 1 pixel, got {cfg.size}")
    size = int(cfg.size)
    one = box_map(h, w, size)
    counts = np.full(n, int(one.max()) + 1, dtype=np.int64)
    digest = cache_key(data=key, size=size)
    return Regions("box", np.broadcast_to(one, (n, h, w)), counts, key=f"box-{digest}", cache_dir=cache_dir)


def image_regions(cfg, images: np.ndarray, cache_dir: str, key: dict):
    from alseg.regions import Regions

    n, h, w = images.shape[:3]
    maps = np.broadcast_to(np.zeros((h, w), np.uint8), (n, h, w))
    digest = cache_key(data=key)
    return Regions("image", maps, np.ones(n, dtype=np.int64), key=f"image-{digest}", cache_dir=cache_dir)
