"""PASCAL VOC 2012 segmentation: 21 classes from palette PNGs, 255 (boundaries) ignored.

The label PNGs are palette images whose palette *indices* are the classes, so they are read
as indices, never as RGB. With `dataset.augmented=true` the training split is SBD's
`train_aug` list (10582 images) with labels from `SegmentationClassAug`; evaluation always
uses the official `SegmentationClass` labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from alseg.data.base import IGNORE
from alseg.data.decode import DiskDataset, Item, label_table
from alseg.data.read import read_palette_png

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC devkit's colormap (bit-interleaved class index), uint8 [n, 3]."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


PALETTE = voc_colormap(len(CLASS_NAMES))
AUG_LIST, AUG_LABELS = "train_aug.txt", "SegmentationClassAug"

LAYOUT = """\
  ROOT = VOCdevkit/ (holding VOC2012/) or VOCdevkit/VOC2012/ itself, with
  VOC2012/JPEGImages/ID.jpg                        RGB images
  VOC2012/SegmentationClass/ID.png                 palette PNGs: index 0-20 = class, 255 = ignore
  VOC2012/ImageSets/Segmentation/{train,val}.txt   one image ID per line
  with dataset.augmented=true also (SBD, as DeepLab prepares it):
  VOC2012/SegmentationClassAug/ID.png              labels of the train_aug images
  VOC2012/ImageSets/Segmentation/train_aug.txt     the 10582 train_aug IDs (or 'image label' path pairs)"""


class VOC(DiskDataset):
    name = "voc"
    title = "PASCAL VOC 2012"
    class_names = CLASS_NAMES
    palette = PALETTE
    table = label_table({**{c: c for c in range(len(CLASS_NAMES))}, IGNORE: IGNORE})
    splits = ("train", "val")
    eval_splits = ("val",)
    layout = LAYOUT

    def base(self, cfg) -> Path:
        """The VOC2012 folder, whether dataset.root names it or the VOCdevkit above it."""
        root = self.root(cfg)
        if (root / "VOC2012").is_dir():
            return root / "VOC2012"
        if (root / "JPEGImages").is_dir() or (root / "ImageSets").is_dir():
            return root
        raise self.missing(root / "VOC2012", "does not exist (nor does dataset.root hold JPEGImages/ itself)")

    def augmented(self, cfg, split: str) -> bool:
        return split == "train" and bool(cfg.get("augmented", False))

    def list_file(self, cfg, split: str) -> Path:
        return self.base(cfg) / "ImageSets" / "Segmentation" / (AUG_LIST if self.augmented(cfg, split) else f"{split}.txt")

    def split_present(self, cfg, split: str) -> bool:
        return self.list_file(cfg, split).is_file()

    def read_label(self, path: Path) -> np.ndarray:
        return read_palette_png(path)

    def key_options(self, cfg, split: str) -> dict:
        return {"augmented": self.augmented(cfg, split)}

    def items(self, cfg, split: str) -> list[Item]:
        base = self.base(cfg)
        images = self.require(base / "JPEGImages")
        labels = self.require(base / (AUG_LABELS if self.augmented(cfg, split) else "SegmentationClass"))
        listing = self.require(self.list_file(cfg, split), is_dir=False)
        # a line is an ID, or "/JPEGImages/ID.jpg /SegmentationClassAug/ID.png" (DeepLab's lists)
        lines = listing.read_text(errors="surrogateescape").splitlines()  # names as os.listdir gives them
        ids = [Path(line.split()[0]).stem for line in lines if line.strip()]
        if not ids:
            raise self.missing(listing, "lists no images")
        missing = [images / f"{i}.jpg" for i in ids if not (images / f"{i}.jpg").is_file()]
        if missing:
            raise self.missing(missing[0], f"does not exist ({len(missing)} images of {listing.name} are missing)")
        return self.require_labels([Item(images / f"{i}.jpg", labels / f"{i}.png") for i in ids])


DATASET = VOC()


def load(cfg):
    """The `dataset=voc` loader for the DATASETS registry."""
    return DATASET.load(cfg)
