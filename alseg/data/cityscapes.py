"""Cityscapes (gtFine): label ids mapped to the 19 official train ids, everything else ignored."""
from __future__ import annotations

import numpy as np

from alseg.data.base import IGNORE
from alseg.data.decode import DiskDataset, Item, label_table

# The official table (cityscapesScripts, helpers/labels.py): label id -> (name, train id).
# Train id 255 is ignored. License plate (id -1) never appears in *_labelIds.png; a stray
# 255 is accepted as ignore too.
LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", IGNORE), (1, "ego vehicle", IGNORE), (2, "rectification border", IGNORE),
    (3, "out of roi", IGNORE), (4, "static", IGNORE), (5, "dynamic", IGNORE), (6, "ground", IGNORE),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", IGNORE), (10, "rail track", IGNORE),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", IGNORE),
    (15, "bridge", IGNORE), (16, "tunnel", IGNORE), (17, "pole", 5), (18, "polegroup", IGNORE),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9),
    (23, "sky", 10), (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14),
    (28, "bus", 15), (29, "caravan", IGNORE), (30, "trailer", IGNORE), (31, "train", 16),
    (32, "motorcycle", 17), (33, "bicycle", 18),
)
ID_TO_TRAIN_ID: dict[int, int] = {label_id: train_id for label_id, _, train_id in LABELS}
CLASS_NAMES: tuple[str, ...] = tuple(name for _, name, train_id in LABELS if train_id != IGNORE)
PALETTE = np.array(  # the official colours of the 19 train classes
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
     [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
     [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]],
    dtype=np.uint8)
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"

LAYOUT = """\
  ROOT/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png     RGB images
  ROOT/gtFine/{train,val}/CITY/*_gtFine_labelIds.png      label ids 0-33 (mapped to the 19 train ids)
(from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip of cityscapes-dataset.com)"""


class Cityscapes(DiskDataset):
    name = "cityscapes"
    title = "Cityscapes"
    class_names = CLASS_NAMES
    palette = PALETTE
    table = label_table({**ID_TO_TRAIN_ID, 255: IGNORE})
    splits = ("train", "val", "test")
    eval_splits = ("val", "test")
    layout = LAYOUT

    def split_present(self, cfg, split: str) -> bool:
        return (self.root(cfg) / "leftImg8bit" / split).is_dir()

    def items(self, cfg, split: str) -> list[Item]:
        root = self.root(cfg)
        images = self.require(self.require(root / "leftImg8bit") / split)
        labels = self.require(self.require(root / "gtFine") / split)
        files = sorted(images.glob(f"*/*{IMAGE_SUFFIX}"))
        if not files:
            raise self.missing(images, f"holds no CITY/*{IMAGE_SUFFIX} images")
        return self.require_labels(
            [Item(p, labels / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)) for p in files])


DATASET = Cityscapes()


def load(cfg):
    """The `dataset=cityscapes` loader for the DATASETS registry."""
    return DATASET.load(cfg)
