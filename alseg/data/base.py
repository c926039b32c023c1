"""The in-memory form every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255  # label value never trained on nor scored


@dataclass
class NativeLabels:
    """The labels of a split at each image's original size (dataset.eval_size=native): one flat
    uint8 array of every label map in turn, and each map's [height, width]."""

    flat: np.ndarray    # uint8 [sum of h * w]
    shapes: np.ndarray  # int64 [N, 2]

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(np.prod(self.shapes, axis=1))]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> np.ndarray:
        """Image i's label map, uint8 [h, w] (a copy: a memory-mapped file stays untouched)."""
        start = int(self.starts[i])
        h, w = (int(v) for v in self.shapes[i])
        return np.array(self.flat[start : start + h * w]).reshape(h, w)


@dataclass
class Split:
    """Images uint8 [N, H, W, 3] and labels uint8 [N, H, W] (255 = ignore) at the working size;
    `native`: the labels at their original size, when the evaluation asks for them."""

    images: np.ndarray
    labels: np.ndarray
    native: NativeLabels | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]


@dataclass
class SegDataset:
    """A dataset ready for an experiment: a training pool and an evaluation split."""

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # uint8 [C, 3] RGB, for overlays
    train: Split
    val: Split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
