"""Per-image region maps computed in parallel, with progress, and cached once on disk.

A cache entry is `<cache_dir>/regions/<name>-maps.npy` ([N, H, W] in the smallest unsigned
type that holds the largest id) and `<name>-counts.npy` (regions per image), stored through
`alseg.cache.cached_memmaps` like the image cache: written under temporary names unique to
the writer and renamed when complete, so jobs of a sweep that build the same entry at once
all succeed and a reader never sees a partial entry; an entry damaged on disk (cut short) is
built again. Maps come back memory-mapped copy-on-write.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import as_completed
from pathlib import Path
from typing import Callable

import numpy as np

from alseg.cache import cached_memmaps, open_entries, scratch_memmap
from alseg.cpus import thread_pool, usable_cpus
from alseg.errors import AlsegError
from alseg.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 64  # images per step when narrowing the stored type


def smallest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..max_value (int32 beyond uint16:
    torch and the scatter code want signed ids, and 2**31 regions per image never occur)."""
    for dtype in (np.uint8, np.uint16):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def dense_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel a label map so that its ids are 0..n-1 without gaps, keeping their order."""
    labels = labels.astype(np.int64, copy=False)
    present = np.bincount(labels.ravel()) > 0
    lut = np.cumsum(present) - 1
    return lut[labels].astype(np.int32)


def cached_maps(
    cache_dir: str | os.PathLike, name: str, images: np.ndarray, compute: Callable[[np.ndarray], np.ndarray],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, H, W] and counts [N] of `compute(image)` over `images`, built once and cached.

    `compute` returns int ids 0..n-1 without gaps for one RGB image; it runs on a thread pool
    (OpenCV releases the GIL), and progress goes to the log every few seconds. The maps are
    first written as int32 to a private temporary memmap (the largest id is known only at
    the end), then narrowed chunk by chunk into the cache entry; nothing is held in memory.
    """
    folder = Path(cache_dir) / "regions"
    n, h, w = images.shape[:3]
    specs = {"maps": ((n, h, w), None), "counts": ((n,), np.int64)}  # the maps' type depends on the ids
    found = open_entries(folder, name, specs, mmap_mode="c")  # copy-on-write: torch can view them without copying
    if found is not None:
        log.info("%s: %d region maps found in the cache (%s)", what, n, folder / f"{name}-maps.npy")
        return found["maps"], np.array(found["counts"])

    # an anonymous scratch file (unlinked from the start), so a killed build leaves nothing behind
    with scratch_memmap(folder, (n, h, w), np.int32) as wide:
        counts = np.zeros(n, np.int64)
        log.info("%s: building region maps for %d images of %dx%d on %d threads ...", what, n, h, w, usable_cpus())
        with Progress(what, n) as progress, thread_pool() as pool:
            futures = {pool.submit(compute, np.asarray(images[i])): i for i in range(n)}
            for future in as_completed(futures):
                i = futures.pop(future)
                labels = future.result()
                wide[i] = labels
                counts[i] = int(labels.max()) + 1
                progress.tick()
        dtype = smallest_uint(int(counts.max()) - 1)

        def fill(arrays: dict[str, np.ndarray]) -> None:
            for s in range(0, n, CHUNK):
                arrays["maps"][s:s + CHUNK] = wide[s:s + CHUNK]
            arrays["counts"][:] = counts

        built = cached_memmaps(folder, name, {**specs, "maps": ((n, h, w), dtype)}, fill, mmap_mode="c")
    log.info("%s: %d region maps (%s, %.1f regions per image) built in %.1fs and cached in %s",
             what, n, dtype.name, counts.mean(), progress.elapsed, folder / f"{name}-maps.npy")
    return built["maps"], np.array(built["counts"])


def require_ximgproc(region: str) -> None:
    """SEEDS and SLIC live in cv2.ximgproc, which only the opencv-contrib packages have."""
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise AlsegError(
            f"region={region} needs cv2.ximgproc, which this OpenCV lacks: install the contrib build, "
            "pip uninstall -y opencv-python opencv-python-headless && pip install opencv-contrib-python-headless"
        )
