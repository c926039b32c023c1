"""A disk cache of numpy arrays, safe when several jobs of a sweep build the same entry at once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def cache_key(**parts) -> str:
    """A short stable hash of the parameters an array depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


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
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
    log.info("cached %s", path)
    return np.load(path, mmap_mode="r")
