"""`alseg data`: load a dataset as an experiment would, and report counts and class shares."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from alseg.data import load_dataset
from alseg.data.base import IGNORE

log = logging.getLogger(__name__)


def split_stats(labels: np.ndarray, num_classes: int) -> dict:
    """Image count, pixels per class and ignored pixels of one split."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=256)
    return {
        "images": int(len(labels)),
        "pixels_per_class": [int(v) for v in counts[:num_classes]],
        "ignored_pixels": int(counts[IGNORE]),
    }


def check_dataset(cfg, out_dir: str) -> dict:
    """Load every split of `cfg`, print the class shares and write dataset_stats.json."""
    data = load_dataset(cfg)
    stats = {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "size": list(data.train.size),
        "splits": {name: split_stats(split.labels, data.num_classes) for name, split in (("train", data.train), ("val", data.val))},
    }
    width = max(len(n) for n in data.class_names)
    for name, s in stats["splits"].items():
        total = sum(s["pixels_per_class"]) + s["ignored_pixels"]
        log.info("%s: %d images at %dx%d", name, s["images"], *data.train.size)
        for cls, count in zip(data.class_names, s["pixels_per_class"]):
            log.info("  %-*s %6.2f%%", width, cls, 100 * count / total)
        log.info("  %-*s %6.2f%%", width, "(ignored)", 100 * s["ignored_pixels"] / total)
    path = Path(out_dir) / "dataset_stats.json"
    path.write_text(json.dumps(stats, indent=1))
    log.info("wrote %s", path)
    return stats
