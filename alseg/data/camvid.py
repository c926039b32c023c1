"""CamVid in the SegNet tutorial's layout: 11 classes, index 11 (void) ignored."""
from __future__ import annotations

import numpy as np

from alseg.data.base import IGNORE
from alseg.data.decode import DiskDataset, Item, label_table

CLASS_NAMES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
VOID = 11  # stored as 255 (ignored)
PALETTE = np.array(  # the SegNet tutorial's colours
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]], dtype=np.uint8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

LAYOUT = """\
  ROOT/train/        RGB images (360x480 PNG in the SegNet copy)
  ROOT/trainannot/   one label PNG per image, same file name: uint8 class index 0-10, 11 = void
  ROOT/val/, ROOT/valannot/      the same for the validation split
  ROOT/test/, ROOT/testannot/    the same for the test split (needed for dataset.eval_split=test)
Download it with: python -m alseg.data.download camvid --root ROOT"""


class CamVid(DiskDataset):
    name = "camvid"
    title = "CamVid"
    class_names = CLASS_NAMES
    palette = PALETTE
    table = label_table({**{c: c for c in range(len(CLASS_NAMES))}, VOID: IGNORE})
    splits = ("train", "val", "test")
    eval_splits = ("val", "test")
    layout = LAYOUT

    def split_present(self, cfg, split: str) -> bool:
        return (self.root(cfg) / split).is_dir()

    def items(self, cfg, split: str) -> list[Item]:
        root = self.root(cfg)
        images = self.require(root / split)
        labels = self.require(root / f"{split}annot")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise self.missing(images, "holds no images")
        return self.require_labels([Item(p, labels / f"{p.stem}.png") for p in files])


DATASET = CamVid()


def load(cfg):
    """The `dataset=camvid` loader for the DATASETS registry."""
    return DATASET.load(cfg)
