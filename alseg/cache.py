"""A disk cache of numpy arrays, safe when several jobs of a sweep build the same entry at once.

Every entry is written under a temporary name unique to its writer (host, process, random
suffix) and renamed into place only when complete, so a reader never sees a half-written
entry; two jobs that build the same entry at once both succeed, and the last rename wins
with identical content. If writing fails, or the build raises, the temporary files are
removed. A full disk is one AlsegError line (the disk blocks of a memory-mapped entry are
reserved before it is filled, so it is never a SIGBUS halfway). Every read goes through
`open_entry`, which checks the file against its header (and the expected shape) before
mapping it: an entry cut short by a crash or a copy is removed with a warning and built anew.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from alseg.errors import AlsegError

log = logging.getLogger(__name__)

Spec = tuple[tuple[int, ...] | None, np.dtype | type | None]  # expected (shape, dtype); None: any


def cache_key(**parts) -> str:
    """A short stable hash of the parameters an array depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _tmp_path(path: Path) -> Path:
    """A temporary name next to `path`, unique to this writer even across hosts and threads."""
    host = socket.gethostname().split(".")[0] or "host"
    return path.with_name(f"{path.stem}.{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turns an OSError while writing the cache entry `path` into one AlsegError line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise AlsegError(f"no space left on device while writing {path}: free space or set "
                             "dataset.cache_dir") from None
        raise AlsegError(f"cannot write {path}: {exc.strerror or exc}; set dataset.cache_dir to a writable "
                         "folder") from None


def _allocate(fd: int) -> None:
    """Reserve the disk blocks of the (sparse) file `fd` now, so a full disk is an OSError here
    and not a SIGBUS when a memory-mapped page is written later."""
    size = os.fstat(fd).st_size
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a filesystem that cannot reserve
            raise


def _problem(path: Path, shape: tuple[int, ...] | None, dtype) -> str | None:
    """What is wrong with the .npy file at `path`, or None when it is whole (FileNotFoundError when absent)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found, _, found_dtype = read(f)
        except Exception as exc:  # numpy raises several types for a broken header
            return f"its header is unreadable: {exc}"
        expected = f.tell() + math.prod(found) * found_dtype.itemsize
        size = os.fstat(f.fileno()).st_size
    if size != expected:
        return f"{size} bytes where its header says {expected}"
    if found_dtype.hasobject:
        return "it holds Python objects"
    if shape is not None and tuple(found) != tuple(shape):
        return f"shape {tuple(found)} where {tuple(shape)} is expected"
    if dtype is not None and found_dtype != np.dtype(dtype):
        return f"type {found_dtype} where {np.dtype(dtype)} is expected"
    return None


def open_entry(path: Path, mmap_mode: str | None = "r", shape: tuple[int, ...] | None = None,
               dtype=None) -> np.ndarray | None:
    """The array cached at `path` (memory-mapped with `mmap_mode`), or None when it is absent or
    damaged: a file whose size disagrees with its header, or whose shape or dtype is not the
    expected one, is removed with a warning so that the caller builds it again."""
    try:
        problem = _problem(path, shape, dtype)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AlsegError(f"cannot read {path}: {exc.strerror or exc}; set dataset.cache_dir to a folder you can "
                         "read and write") from None
    if problem is not None:
        log.warning("warning: cache entry %s is damaged (%s): it is built again", path, problem)
        path.unlink(missing_ok=True)
        return None
    return np.load(path, mmap_mode=mmap_mode)


def cached_array(cache_dir: str | os.PathLike, name: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the array cached as `name`, building and storing it first if missing or damaged.

    The file is written under a temporary name and renamed when complete, so a reader never
    sees a half-written entry; the array comes back memory-mapped read-only.
    """
    path = Path(cache_dir) / f"{name}.npy"
    found = open_entry(path)
    if found is not None:
        return found
    array = build()
    tmp = _tmp_path(path)
    try:
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp, array)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("cached %s", path)
    return np.load(path, mmap_mode="r")


def open_entries(folder: Path, name: str, specs: dict[str, Spec], mmap_mode: str = "r") -> dict[str, np.ndarray] | None:
    """Every part `<folder>/<name>-<part>.npy` of an entry (see `open_entry`), or None when one
    is absent or damaged."""
    arrays = {}
    for part, (shape, dtype) in specs.items():
        arrays[part] = open_entry(folder / f"{name}-{part}.npy", mmap_mode, shape, dtype)
        if arrays[part] is None:
            return None
    return arrays


def cached_memmaps(
    cache_dir: str | os.PathLike,
    name: str,
    specs: dict[str, Spec],
    fill: Callable[[dict[str, np.ndarray]], None],
    mmap_mode: str = "r",
) -> dict[str, np.ndarray]:
    """Arrays cached as `<name>-<part>.npy`, one per entry of `specs` (part -> (shape, dtype)).

    A hit needs every part present and whole (see `open_entries`). On a miss, every part is
    created as a .npy memmap under a temporary name with its disk blocks reserved, `fill`
    writes into them (so an entry larger than memory can be built), and each is renamed into
    place once all are complete. If anything raises, the temporary files are removed and
    nothing is left behind. The arrays come back memory-mapped (`mmap_mode` "r", or "c":
    copy-on-write, writable without touching the file).
    """
    folder = Path(cache_dir)
    paths = {part: folder / f"{name}-{part}.npy" for part in specs}
    found = open_entries(folder, name, specs, mmap_mode)
    if found is not None:
        return found
    first = next(iter(paths.values()))
    tmps = {part: _tmp_path(p) for part, p in paths.items()}
    try:
        with _writing(first):
            first.parent.mkdir(parents=True, exist_ok=True)
            arrays = {part: _new_memmap(tmps[part], *specs[part]) for part in specs}
        fill(arrays)
        with _writing(first):
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


def _new_memmap(path: Path, shape: tuple[int, ...], dtype) -> np.memmap:
    """A new .npy memmap at `path`, its disk blocks reserved."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    fd = os.open(path, os.O_RDWR)
    try:
        _allocate(fd)
    finally:
        os.close(fd)
    return array


@contextmanager
def scratch_memmap(folder: Path, shape: tuple[int, ...], dtype) -> Iterator[np.memmap]:
    """A writable memmap on an anonymous file in `folder`: unlinked from the start, so even a
    killed job leaves nothing behind, and its disk blocks reserved up front."""
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryFile(dir=folder)
    with scratch:
        with _writing(folder):
            array = np.memmap(scratch, dtype=dtype, mode="w+", shape=tuple(shape))
            _allocate(scratch.fileno())
        yield array
