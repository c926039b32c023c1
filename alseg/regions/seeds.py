"""SEEDS superpixels (cv2.ximgproc), as Cai et al. (2021) use them, built in parallel and cached."""
from __future__ import annotations

import cv2
import numpy as np

from alseg.cache import cache_key
from alseg.errors import AlsegError
from alseg.regions.build import cached_maps, dense_ids, require_ximgproc

# Cai et al.: about 2048 superpixels on a full-resolution 1024x2048 Cityscapes image.
REFERENCE_COUNT, REFERENCE_PIXELS = 2048, 1024 * 2048
PARAMS = ("num_levels", "prior", "histogram_bins", "double_step", "iterations")
VERSION = 2  # bump when the maps an unchanged config gives change


def superpixel_count(cfg, height: int, width: int) -> int:
    """`region.num_superpixels`, or Cai's density scaled to the working size (at least 16)."""
    if cfg.num_superpixels is not None:
        if int(cfg.num_superpixels) < 1:
            raise AlsegError(f"region.num_superpixels must be >= 1, got {cfg.num_superpixels}")
        return int(cfg.num_superpixels)
    return max(16, round(REFERENCE_COUNT * height * width / REFERENCE_PIXELS))


def equalised_hsv(image: np.ndarray) -> np.ndarray:
    """HSV form of the image after histogram equalisation of each RGB channel (Cai et al.)."""
    equalised = cv2.merge([cv2.equalizeHist(np.ascontiguousarray(image[..., c])) for c in range(3)])
    return cv2.cvtColor(equalised, cv2.COLOR_RGB2HSV)


def seeds_map(image: np.ndarray, cfg, count: int) -> np.ndarray:
    """SEEDS labels (int32 [H, W], ids 0..n-1 without gaps) of one RGB image.

    SEEDS works on a grid of blocks, so the count it reaches is a quantised form of `count`
    (e.g. 70 for 169 asked at 360x480); the ids are renumbered without gaps.
    """
    require_ximgproc("seeds")
    h, w = image.shape[:2]
    seeds = cv2.ximgproc.createSuperpixelSEEDS(
        w, h, 3, count, int(cfg.num_levels), int(cfg.prior), int(cfg.histogram_bins), bool(cfg.double_step)
    )
    seeds.iterate(equalised_hsv(image), int(cfg.iterations))
    return dense_ids(seeds.getLabels())


def seeds_regions(cfg, images: np.ndarray, cache_dir: str, key: dict):
    """Region maps of every image, computed once per (data, size, parameters) and cached."""
    from alseg.regions import Regions

    n, h, w = images.shape[:3]
    count = superpixel_count(cfg, h, w)
    params = {k: cfg[k] for k in PARAMS}
    if int(cfg.num_levels) < 1 or int(cfg.iterations) < 1 or int(cfg.histogram_bins) < 1:
        raise AlsegError("region.num_levels, region.iterations and region.histogram_bins must be >= 1")
    digest = cache_key(data=key, count=count, version=VERSION, **params)
    maps, counts = cached_maps(cache_dir, f"seeds-{digest}", images, lambda im: seeds_map(im, cfg, count),
                               f"SEEDS ({count} asked per image)")
    return Regions("seeds", maps, counts, key=f"seeds-{digest}", cache_dir=cache_dir)
