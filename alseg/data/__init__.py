"""Dataset registry: `dataset.name` -> a loader returning a SegDataset."""
from __future__ import annotations

from typing import Callable

from alseg.data import camvid, cityscapes, folder, voc
from alseg.data.base import IGNORE, SegDataset, Split
from alseg.data.decode import DiskDataset
from alseg.errors import AlsegError


def _synthetic(cfg) -> SegDataset:
    from alseg.data import synthetic

    height, width = cfg.size
    seed = int(cfg.data_seed)
    for key in ("num_train", "num_val"):
        if int(cfg[key]) < 0:
            raise AlsegError(f"dataset.{key} must be a number of images (1 or more), got {cfg[key]}")
    train = Split(*synthetic.generate(int(cfg.num_train), height, width, seed))
    val = Split(*synthetic.generate(int(cfg.num_val), height, width, seed + 1))
    return SegDataset("synthetic", synthetic.CLASS_NAMES, synthetic.PALETTE, train, val)


DATASETS: dict[str, Callable[..., SegDataset]] = {
    "synthetic": _synthetic,
    "camvid": camvid.load,
    "cityscapes": cityscapes.load,
    "voc": voc.load,
    "folder": folder.load,  # your own images/ and masks/, configured by the dataset group
}
# The datasets read from files, for `alseg data` and the benchmark (decode vs cache).
DISK_DATASETS: dict[str, DiskDataset] = {
    "camvid": camvid.DATASET,
    "cityscapes": cityscapes.DATASET,
    "voc": voc.DATASET,
}


def load_dataset(cfg) -> SegDataset:
    """Load the dataset that `cfg` (the `dataset` config group) names; an AlsegError when its
    training or evaluation split holds no images (an mIoU over no images is NaN)."""
    if cfg.name not in DATASETS:
        raise AlsegError(f"unknown dataset {cfg.name!r}; available: {', '.join(sorted(DATASETS))}")
    data = DATASETS[cfg.name](cfg)
    for role, split, part, count in (("training", "train", data.train, "num_train"),
                                     ("evaluation", cfg.get("eval_split") or "val", data.val, "num_val")):
        if len(part) == 0:
            fix = (f"set dataset.{count} to 1 or more" if count in cfg else
                   "put images of that split under dataset.root"
                   + (" or choose another dataset.eval_split" if role == "evaluation" else ""))
            raise AlsegError(f"dataset {data.name}: the {role} split {split!r} holds no images; {fix}")
    return data


def _disk(cfg) -> DiskDataset:
    if cfg.name not in DISK_DATASETS:
        raise AlsegError(f"dataset {cfg.name!r} is not read from files; these are: {', '.join(sorted(DISK_DATASETS))}")
    return DISK_DATASETS[cfg.name]


def decode_split(cfg, split: str) -> Split:
    """Decode every file of `split` at the working size, in parallel, without the cache."""
    from alseg.data.decode import decode_split as decode

    return decode(_disk(cfg), cfg, split)


def load_split(cfg, split: str) -> Split:
    """`split` at the working size from the cache (decoded into it first if missing)."""
    from alseg.data.decode import load_split as load

    return load(_disk(cfg), cfg, split)


__all__ = ["DATASETS", "DISK_DATASETS", "IGNORE", "SegDataset", "Split", "decode_split", "load_dataset", "load_split"]
