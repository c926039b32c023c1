"""A disk cache of numpy arrays, safe when several jobs of a sweep build the same entry at once.

Every entry is written under a temporary name unique to its writer (host, process, random
suffix) and renamed into place only when complete, so a reader never sees a half-written
entry; two jobs that build the same entry at once both succeed, and the last rename wins
with identical content.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def cache_key(**parts) -> str:
    """A short stable hash of the parameters an array depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _tmp_path(path: Path) -> Path:
    """A temporary name next to `path`, unique to this writer even across hosts and threads."""
    host = socket.gethostname().split(".")[0] or "host"
    return path.with_name(f"{path.stem}.{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")


def cached_array(cache_dir: str | os.PathLike, name: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the array cached as `name`, building and storing it first if missing.

    The file is written under a temporary name and renamed when complete, so a reader never
    sees a half-written entry; the array comes back memory-mapped read-only.
    """
    path = Path(cache_dir) / f"{name}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    array = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("cached %s", path)
    return np.load(path, mmap_mode="r")


def cached_memmaps(
    cache_dir: str | os.PathLike,
    name: str,
    specs: dict[str, tuple[tuple[int, ...], np.dtype | type]],
    fill: Callable[[dict[str, np.ndarray]], None],
    mmap_mode: str = "r",
) -> dict[str, np.ndarray]:
    """Arrays cached as `<name>-<part>.npy`, one per entry of `specs` (part -> (shape, dtype)).

    On a miss, every part is created as a .npy memmap under a temporary name, `fill` writes
    into them (so an entry larger than memory can be built), and each is renamed into place
    once all are complete; the entry counts as present only when every part is. If `fill`
    raises, the temporary files are removed and nothing is left behind. The arrays come back
    memory-mapped (`mmap_mode` "r", or "c": copy-on-write, writable without touching the file).
    """
    folder = Path(cache_dir)
    paths = {part: folder / f"{name}-{part}.npy" for part in specs}
    if not all(p.exists() for p in paths.values()):
        paths[next(iter(paths))].parent.mkdir(parents=True, exist_ok=True)
        tmps = {part: _tmp_path(p) for part, p in paths.items()}
        try:
            arrays = {part: np.lib.format.open_memmap(tmps[part], mode="w+", dtype=dtype, shape=tuple(shape))
                      for part, (shape, dtype) in specs.items()}
            fill(arrays)
            for array in arrays.values():
                array.flush()
            del arrays
            for part, tmp in tmps.items():
                os.replace(tmp, paths[part])
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
        log.info("cached %s-{%s}.npy", folder / name, ",".join(specs))
    return {part: np.load(p, mmap_mode=mmap_mode) for part, p in paths.items()}
