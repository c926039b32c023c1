"""Dataset registry: `dataset.name` -> a loader returning a SegDataset."""
from __future__ import annotations

from typing import Callable

from alseg.data.base import IGNORE, SegDataset, Split
from alseg.errors import AlsegError


def _synthetic(cfg) -> SegDataset:
    from alseg.data import synthetic

    height, width = cfg.size
    seed = int(cfg.data_seed)
    train = Split(*synthetic.generate(int(cfg.num_train), height, width, seed))
    val = Split(*synthetic.generate(int(cfg.num_val), height, width, seed + 1))
    return SegDataset("synthetic", synthetic.CLASS_NAMES, synthetic.PALETTE, train, val)


DATASETS: dict[str, Callable[..., SegDataset]] = {"synthetic": _synthetic}


def load_dataset(cfg) -> SegDataset:
    """Load the dataset that `cfg` (the `dataset` config group) names."""
    if cfg.name not in DATASETS:
        raise AlsegError(f"unknown dataset {cfg.name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.name](cfg)


__all__ = ["DATASETS", "IGNORE", "SegDataset", "Split", "load_dataset"]
