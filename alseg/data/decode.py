"""Datasets on disk: layout checks, decoding to the working size, and the uint8 cache.

Each dataset on disk (CamVid, Cityscapes, VOC) is a `DiskDataset`: it lists the
(image, label) files of a split, reads a label file into raw values, and maps raw values to
class indices through a 256-entry table (255 = ignore, -1 = a value that must not occur).
Files are read through `alseg.data.read` (checked to be complete; any file name). This module
does the rest, the same for all of them:

- `decode_split` decodes every image of a split in parallel threads (cv2 releases the GIL),
  checks its labels, and resizes to `dataset.size`: images with area interpolation, labels
  with nearest neighbour. No cache; this is what `make bench` times against the cache.
- `load_split` does the same once per (dataset, split, size, root, options) into a uint8
  .npy cache under `dataset.cache_dir`, and afterwards only memory-maps it.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from alseg.cache import cache_key, cached_memmaps
from alseg.cpus import thread_pool, usable_cpus
from alseg.data.base import IGNORE, NativeLabels, SegDataset, Split
from alseg.data.read import image_size, read_image, read_index_png
from alseg.errors import AlsegError
from alseg.progress import Progress

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when decoding changes, so old caches are not reused (3: truncated files are errors)
INVALID = -1  # label_table value of a raw label value that must not occur
_warned: set[tuple] = set()
_warn_lock = threading.Lock()


@dataclass(frozen=True)
class Item:
    """One image and its label file."""

    image: Path
    label: Path


def label_table(mapping: dict[int, int]) -> np.ndarray:
    """int16 [256]: raw value -> class index (or 255 = ignore); every other value INVALID."""
    table = np.full(256, INVALID, np.int16)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def path_problem(path: Path, folder: bool = True) -> str | None:
    """What is wrong with `path` as an input folder (or file), said in a few words; None if nothing."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return "is a symbolic link loop" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
    if not folder:
        return None if stat.S_ISREG(mode) else "is not a file"
    if not stat.S_ISDIR(mode):
        return "is not a folder"
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


class DiskDataset:
    """A dataset read from files. Subclasses set the class attributes and `items`."""

    name: str = ""
    title: str = ""  # for messages
    class_names: tuple[str, ...] = ()
    palette: np.ndarray = np.zeros((0, 3), np.uint8)
    table: np.ndarray = label_table({})
    splits: tuple[str, ...] = ("train", "val")  # every split the layout may hold
    eval_splits: tuple[str, ...] = ("val",)  # allowed values of dataset.eval_split
    layout: str = ""  # the expected layout, shown when something is missing

    # ---- to override -------------------------------------------------------------------
    def items(self, cfg, split: str) -> list[Item]:
        """The files of `split`, in a stable order; AlsegError when the layout is incomplete."""
        raise NotImplementedError

    def split_present(self, cfg, split: str) -> bool:
        """Whether the layout holds `split` at all (it may still be incomplete)."""
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        return read_index_png(path)

    def key_options(self, cfg, split: str) -> dict:
        """Options besides root and size that change the decoded arrays of `split`."""
        return {}

    # ---- shared ------------------------------------------------------------------------
    def root(self, cfg) -> Path:
        """`dataset.root`, checked to be a folder that can be read."""
        if cfg.get("root") in (None, ""):
            raise AlsegError(f"dataset.root is not set: pass dataset.root=PATH, the folder of {self.title} laid out as\n"
                             f"{self.layout}")
        root = Path(str(cfg.root)).expanduser()
        problem = path_problem(root)
        if problem == "does not exist":
            raise self.missing(root.absolute())
        if problem is not None:
            raise AlsegError(f"{self.title}: dataset.root {root} {problem}; set dataset.root to the dataset's folder")
        return root.resolve()

    def missing(self, path: Path, what: str = "does not exist") -> AlsegError:
        """The error for an incomplete layout: the missing path and the expected layout."""
        return AlsegError(f"{self.title}: {path} {what}.\nExpected layout under dataset.root:\n{self.layout}")

    def require(self, path: Path, is_dir: bool = True) -> Path:
        """`path`, checked to be a readable folder (or a file); an error naming what is wrong."""
        problem = path_problem(path, is_dir)
        if problem is not None:
            raise self.missing(path, problem)
        return path

    def list_items(self, cfg, split: str) -> list[Item]:
        """`items`, with an OSError while listing the layout (an unreadable folder or list) as one line."""
        try:
            return self.items(cfg, split)
        except OSError as exc:
            where = exc.filename or "dataset.root"
            raise AlsegError(f"{self.title}: cannot read {where}: {exc.strerror or exc}") from None

    def require_labels(self, items: list[Item]) -> list[Item]:
        """Check that every image has its label file."""
        absent = [it.label for it in items if not it.label.is_file()]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise self.missing(absent[0], f"does not exist{more}; every image needs its label file")
        return items

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Class indices (255 = ignore) of raw label values; AlsegError naming a value outside the classes."""
        present = np.bincount(raw.ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & (self.table < 0))
        if len(bad):
            allowed = ", ".join(str(v) for v in np.flatnonzero(self.table >= 0))
            raise AlsegError(f"label {path} holds value {bad[0]}"
                             + (f" (and {', '.join(map(str, bad[1:6]))})" if len(bad) > 1 else "")
                             + f", which is not a {self.title} label value (allowed: {allowed})")
        lut = np.where(self.table < 0, IGNORE, self.table).astype(np.uint8)
        return cv2.LUT(raw, lut) if raw.flags.c_contiguous else lut[raw]

    def eval_split(self, cfg) -> str:
        split = cfg.get("eval_split") or "val"
        if split not in self.eval_splits:
            raise AlsegError(f"dataset.eval_split={split!r} is not available for {self.name}; "
                             f"choose one of: {', '.join(self.eval_splits)}")
        return split

    def present_splits(self, cfg) -> list[str]:
        """train, the evaluation split, and every other split the layout holds."""
        needed = {"train", self.eval_split(cfg)}
        return [s for s in self.splits if s in needed or self.split_present(cfg, s)]

    def load(self, cfg) -> SegDataset:
        """The training pool and the evaluation split (`dataset.eval_split`), from the cache."""
        splits = ("train", self.eval_split(cfg))
        items = {split: self.list_items(cfg, split) for split in splits}  # the whole layout first, then decode
        train = load_split(self, cfg, "train", items["train"])
        native = cfg.get("eval_size") == "native" and working_size(cfg) is not None  # else the labels are native
        val = load_split(self, cfg, splits[1], items[splits[1]], native=native)
        return SegDataset(self.name, self.class_names, self.palette, train, val)


def working_size(cfg) -> tuple[int, int] | None:
    """`dataset.size` as (height, width), or None for the native size."""
    size = cfg.get("size")
    if size is None:
        return None
    size = list(size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise AlsegError(f"dataset.size must be [height, width] in pixels (or null for the native size), got {size}")
    return int(size[0]), int(size[1])


def _target_size(ds: DiskDataset, items: Sequence[Item], size: tuple[int, int] | None, split: str) -> tuple[int, int]:
    """The size every image of the split is brought to; warns once when images are stretched."""
    native = image_size(items[0].image)
    if size is None:
        return native
    ratio_native, ratio_size = native[1] / native[0], size[1] / size[0]
    if abs(ratio_size / ratio_native - 1) > 0.01:
        key = (ds.name, native, size)
        with _warn_lock:
            if key not in _warned:
                _warned.add(key)
                log.warning("warning: %s %s images of %dx%d (aspect %.3f) are resized to dataset.size %dx%d "
                            "(aspect %.3f): they are stretched", ds.name, split, *native, ratio_native, *size, ratio_size)
    return size


def _decode_one(ds: DiskDataset, item: Item, size: tuple[int, int], resize: bool) -> tuple[np.ndarray, ...]:
    """The image and label at `size`, and the label at its original size."""
    image = read_image(item.image)
    label = ds.map_labels(ds.read_label(item.label), item.label)
    if image.shape[:2] != label.shape:
        raise AlsegError(f"image {item.image} is {image.shape[0]}x{image.shape[1]} but its label {item.label} is "
                         f"{label.shape[0]}x{label.shape[1]}")
    native = label
    if image.shape[:2] != size:
        if not resize:
            raise AlsegError(f"image {item.image} is {image.shape[0]}x{image.shape[1]}, unlike the first image of its "
                             f"split ({size[0]}x{size[1]}); set dataset.size=[H,W] to bring all to one size")
        h, w = size
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        # NEAREST_EXACT samples at pixel centres, so labels stay aligned with the area-resized
        # image (INTER_NEAREST takes each block's top-left pixel: a shift of half a block)
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label, native


def _decode_into(ds: DiskDataset, items: Sequence[Item], size: tuple[int, int], resize: bool,
                 images: np.ndarray, labels: np.ndarray, what: str, native: NativeLabels | None = None) -> None:
    """Decode `items` into images[i], labels[i] (and, given `native`, the original-size labels
    into its flat array) with one thread per usable core, logging progress."""
    n, start, done = len(items), time.perf_counter(), 0
    step = max(1, n // 10)
    log.info("decoding %s: %d images to %dx%d with %d threads ...", what, n, *size, usable_cpus())

    def work(i: int) -> None:
        images[i], labels[i], label = _decode_one(ds, items[i], size, resize)
        if native is not None:
            if label.shape != tuple(native.shapes[i]):
                raise AlsegError(f"label {items[i].label} is {label.shape[0]}x{label.shape[1]} but its image "
                                 f"{items[i].image} is {native.shapes[i][0]}x{native.shapes[i][1]}")
            native.flat[native.starts[i] : native.starts[i + 1]] = label.ravel()

    with Progress(f"decoding {what}", n, every=None) as progress, thread_pool() as pool:
        for future in as_completed([pool.submit(work, i) for i in range(n)]):
            future.result()
            done += 1
            progress.tick()
            if not progress.drawn and (done % step == 0 or done == n):
                log.info("  %s: %d/%d images (%.0f%%, %.1fs)", what, done, n, 100 * done / n,
                         time.perf_counter() - start)


def decode_split(ds: DiskDataset, cfg, split: str) -> Split:
    """Decode every image of `split` at the working size into memory; no cache involved."""
    items = ds.list_items(cfg, split)
    size = working_size(cfg)
    target = _target_size(ds, items, size, split)
    images = np.empty((len(items), *target, 3), np.uint8)
    labels = np.empty((len(items), *target), np.uint8)
    _decode_into(ds, items, target, size is not None, images, labels, f"{ds.name} {split}")
    return Split(images, labels)


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def split_cache_name(ds: DiskDataset, cfg, split: str, items: Sequence[Item], target: tuple[int, int],
                     native: bool = False) -> str:
    """File name stem of a split's cache entry: a readable prefix plus a hash of all it depends on
    (dataset, split, size, root, options, and every file's name, size and modification time, so
    an edited or replaced file is decoded anew). An entry that also holds the labels at their
    original size (`native`) has a key of its own; the others keep theirs."""
    root = ds.root(cfg)
    files = [(str(it.image.relative_to(root)), _file_stamp(it.image), str(it.label.relative_to(root)),
              _file_stamp(it.label)) for it in items]
    key = cache_key(version=CACHE_VERSION, dataset=ds.name, split=split, size=list(target),
                    native=cfg.get("size") is None, root=str(root), options=ds.key_options(cfg, split),
                    files=cache_key(files=files), **({"native_labels": True} if native else {}))
    return f"data/{ds.name}-{split}-{target[0]}x{target[1]}{'-native' if native else ''}-{key}"


def load_split(ds: DiskDataset, cfg, split: str, items: Sequence[Item] | None = None, native: bool = False) -> Split:
    """`split` at the working size, decoded once into the cache and memory-mapped afterwards;
    with `native`, also its labels at their original size (`Split.native`)."""
    items = ds.list_items(cfg, split) if items is None else items
    size = working_size(cfg)
    target = _target_size(ds, items, size, split)
    n = len(items)
    specs = {"images": ((n, *target, 3), np.uint8), "labels": ((n, *target), np.uint8)}
    if native:
        shapes = np.array([image_size(it.image) for it in items], np.int64).reshape(n, 2)
        specs.update(native=((int(shapes.prod(axis=1).sum()),), np.uint8), shapes=((n, 2), np.int64))

    def fill(arrays: dict[str, np.ndarray]) -> None:
        into = None
        if native:
            arrays["shapes"][:] = shapes
            into = NativeLabels(arrays["native"], shapes)
        _decode_into(ds, items, target, size is not None, arrays["images"], arrays["labels"], f"{ds.name} {split}", into)

    cache_dir = Path(str(cfg.cache_dir)).expanduser()
    arrays = cached_memmaps(cache_dir, split_cache_name(ds, cfg, split, items, target, native), specs, fill, mmap_mode="c")
    return Split(arrays["images"], arrays["labels"],
                 NativeLabels(arrays["native"], np.array(arrays["shapes"])) if native else None)
