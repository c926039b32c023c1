"""`alseg data`: check a dataset's layout, load it as an experiment would, report class shares.

For a dataset read from files every split its layout holds is checked and counted (CamVid:
train, val and test when present), at the working size (`dataset.size`), through the same
cache an experiment uses; `dataset_stats.json` in the output directory holds the counts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from alseg.data import DISK_DATASETS, Split, load_dataset
from alseg.data.base import IGNORE

log = logging.getLogger(__name__)


def split_stats(labels: np.ndarray, num_classes: int) -> dict:
    """Image count, pixels per class and ignored pixels of one split."""
    counts = np.zeros(256, np.int64)
    for start in range(0, len(labels), 64):  # in chunks: a memory-mapped split may not fit in memory
        counts += np.bincount(np.asarray(labels[start:start + 64]).ravel(), minlength=256)
    return {
        "images": int(len(labels)),
        "pixels_per_class": [int(v) for v in counts[:num_classes]],
        "ignored_pixels": int(counts[IGNORE]),
    }


def load_splits(cfg) -> tuple[str, tuple[str, ...], dict[str, Split]]:
    """(name, class names, {split: Split}) of every split the dataset has."""
    if cfg.name in DISK_DATASETS:
        from alseg.data.decode import load_split

        ds = DISK_DATASETS[cfg.name]
        items = {split: ds.list_items(cfg, split) for split in ds.present_splits(cfg)}  # the whole layout first
        log.info("%s at %s: layout complete (%s)", ds.name, ds.root(cfg),
                 ", ".join(f"{split} {len(found)} images" for split, found in items.items()))
        return ds.name, ds.class_names, {split: load_split(ds, cfg, split, found) for split, found in items.items()}
    data = load_dataset(cfg)
    return data.name, data.class_names, {"train": data.train, "val": data.val}


def check_dataset(cfg, out_dir: str) -> dict:
    """Load every split of `cfg`, print the class shares and write dataset_stats.json."""
    name, class_names, splits = load_splits(cfg)
    num_classes = len(class_names)
    size = next(iter(splits.values())).size
    stats = {
        "dataset": name,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "size": list(size),
        "splits": {split: split_stats(data.labels, num_classes) for split, data in splits.items()},
    }
    width = max(len(n) for n in class_names)
    for split, s in stats["splits"].items():
        total = sum(s["pixels_per_class"]) + s["ignored_pixels"]
        log.info("%s: %d images at %dx%d; pixel share of each class:", split, s["images"], *splits[split].size)
        for cls, count in zip(class_names, s["pixels_per_class"]):
            log.info("  %-*s %6.2f%%", width, cls, 100 * count / total)
        log.info("  %-*s %6.2f%%", width, "(ignored)", 100 * s["ignored_pixels"] / total)
    path = Path(out_dir) / "dataset_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=1))
    log.info("wrote %s", path)
    return stats
