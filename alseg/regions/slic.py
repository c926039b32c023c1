"""SLIC, SLICO and MSLIC superpixels (cv2.ximgproc), built in parallel and cached."""
from __future__ import annotations

import math

import cv2
import numpy as np

from alseg.cache import cache_key
from alseg.errors import AlsegError
from alseg.regions.build import cached_maps, dense_ids, require_ximgproc
from alseg.regions.seeds import superpixel_count

ALGORITHMS = ("slic", "slico", "mslic")  # cv2.ximgproc.SLIC, SLICO, MSLIC (looked up once ximgproc is known to exist)
COLOR_SPACES = {"lab": cv2.COLOR_RGB2Lab, "hsv": cv2.COLOR_RGB2HSV, "rgb": None}
VERSION = 1  # bump when the maps an unchanged config gives change


def region_size(cfg, height: int, width: int) -> int:
    """`region.region_size`, else the side that gives `region.num_superpixels` (or the SEEDS
    default density) squares on the image."""
    if cfg.region_size is not None:
        if int(cfg.region_size) < 2:
            raise AlsegError(f"region.region_size must be >= 2 pixels, got {cfg.region_size}")
        return int(cfg.region_size)
    return max(2, round(math.sqrt(height * width / superpixel_count(cfg, height, width))))


def slic_map(image: np.ndarray, cfg, size: int) -> np.ndarray:
    """SLIC labels (int32 [H, W], ids 0..n-1 without gaps) of one RGB image: a 3x3 Gaussian
    blur and the colour space conversion OpenCV recommends, `iterations` steps, then
    connectivity enforcement (segments under `min_element_size`% of a region merge)."""
    if cfg.blur:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    code = COLOR_SPACES[cfg.color_space]
    converted = image if code is None else cv2.cvtColor(image, code)
    slic = cv2.ximgproc.createSuperpixelSLIC(converted, getattr(cv2.ximgproc, cfg.algorithm.upper()), size, float(cfg.ruler))
    slic.iterate(int(cfg.iterations))
    if cfg.min_element_size is not None and cfg.min_element_size > 0:
        slic.enforceLabelConnectivity(int(cfg.min_element_size))
    return dense_ids(slic.getLabels())


def slic_regions(cfg, images: np.ndarray, cache_dir: str, key: dict):
    """Region maps of every image, computed once per (data, size, parameters) and cached."""
    from alseg.regions import Regions

    require_ximgproc("slic")
    if cfg.algorithm not in ALGORITHMS:
        raise AlsegError(f"region.algorithm must be one of {', '.join(ALGORITHMS)}, got {cfg.algorithm!r}")
    if cfg.color_space not in COLOR_SPACES:
        raise AlsegError(f"region.color_space must be one of {', '.join(COLOR_SPACES)}, got {cfg.color_space!r}")
    if int(cfg.iterations) < 1 or float(cfg.ruler) <= 0:
        raise AlsegError("region.iterations must be >= 1 and region.ruler > 0")
    n, h, w = images.shape[:3]
    size = region_size(cfg, h, w)
    params = {k: cfg[k] for k in ("algorithm", "ruler", "iterations", "min_element_size", "color_space", "blur")}
    digest = cache_key(data=key, region_size=size, version=VERSION, **params)
    maps, counts = cached_maps(cache_dir, f"slic-{digest}", images, lambda im: slic_map(im, cfg, size),
                               f"{cfg.algorithm.upper()} (region size {size})")
    return Regions("slic", maps, counts, key=f"slic-{digest}", cache_dir=cache_dir)
