"""SEEDS superpixels (cv2.ximgproc), as Cai et al. (2021) use them, built in parallel and cached."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from alseg.cache import cache_key, cached_array

log = logging.getLogger(__name__)

# Cai et al.: about 2048 superpixels on a full-resolution 1024x2048 Cityscapes image.
REFERENCE_COUNT, REFERENCE_PIXELS = 2048, 1024 * 2048


def superpixel_count(cfg, height: int, width: int) -> int:
    """`region.num_superpixels`, or Cai's density scaled to the working size (at least 16)."""
    if cfg.num_superpixels is not None:
        return int(cfg.num_superpixels)
    return max(16, round(REFERENCE_COUNT * height * width / REFERENCE_PIXELS))


def seeds_map(image: np.ndarray, cfg, count: int) -> np.ndarray:
    """SEEDS labels (int32 [H, W], ids 0..n-1 without gaps) of one RGB image.

    As in Cai et al., SEEDS runs on the HSV form of the histogram-equalised image
    (each RGB channel equalised).
    """
    h, w = image.shape[:2]
    equalised = np.dstack([cv2.equalizeHist(np.ascontiguousarray(image[..., c])) for c in range(3)])
    hsv = cv2.cvtColor(equalised, cv2.COLOR_RGB2HSV)
    seeds = cv2.ximgproc.createSuperpixelSEEDS(
        w, h, 3, count, int(cfg.num_levels), int(cfg.prior), int(cfg.histogram_bins), bool(cfg.double_step)
    )
    seeds.iterate(hsv, int(cfg.iterations))
    labels = seeds.getLabels()
    _, dense = np.unique(labels, return_inverse=True)  # SEEDS may leave gaps in its ids
    return dense.reshape(h, w).astype(np.int32)


def seeds_regions(cfg, images: np.ndarray, cache_dir: str, key: dict):
    """Region maps of every image, computed once per (data, size, parameters) and cached."""
    from alseg.regions import Regions

    n, h, w = images.shape[:3]
    count = superpixel_count(cfg, h, w)
    params = {k: cfg[k] for k in ("num_levels", "prior", "histogram_bins", "double_step", "iterations")}
    name = f"regions/seeds-{cache_key(data=key, count=count, **params)}"

    def build() -> np.ndarray:
        log.info("building SEEDS superpixels (%d per image) for %d images ...", count, n)
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            maps = list(pool.map(lambda i: seeds_map(np.asarray(images[i]), cfg, count), range(n)))
        stacked = np.stack(maps)
        dtype = np.uint16 if stacked.max() < 2**16 else np.int32
        return stacked.astype(dtype)

    maps = cached_array(cache_dir, name, build)
    counts = maps.reshape(n, -1).max(axis=1).astype(np.int64) + 1
    return Regions("seeds", maps, counts)
