"""The in-memory form every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255  # label value never trained on nor scored


@dataclass
class Split:
    """Images uint8 [N, H, W, 3] and labels uint8 [N, H, W] (255 = ignore) at the working size."""

    images: np.ndarray
    labels: np.ndarray

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
