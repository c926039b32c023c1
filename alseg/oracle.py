"""The simulated annotator: reveals labels of the chosen regions and counts the clicks.

Revealed maps use 255 for 'not asked' and 254 for 'asked, but no label given' (void pixels,
or a region whose majority is void under dominant labelling); both are ignored in training.
"""
from __future__ import annotations

import numpy as np

from alseg.data.base import IGNORE
from alseg.errors import AlsegError
from alseg.regions import Regions

NO_LABEL = 254


def _with_noise(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each label becomes a uniformly random other class with probability `rate`."""
    if rate <= 0:
        return labels
    wrong = (rng.random(labels.shape) < rate) & (labels < num_classes)
    shift = rng.integers(1, num_classes, size=labels.shape)
    return np.where(wrong, (labels.astype(np.int64) + shift) % num_classes, labels).astype(labels.dtype)


class Oracle:
    """Reveals ground truth for `annotation=dominant|precise`; 1 click per region for both
    (precise is supported for pixel regions, where it equals dominant)."""

    def __init__(self, cfg, regions: Regions, truth: np.ndarray, num_classes: int, rng: np.random.Generator):
        if cfg.name not in ("dominant", "precise"):
            raise AlsegError(f"unknown annotation {cfg.name!r}; available: dominant, precise")
        if cfg.name == "precise" and regions.name != "pixel":
            raise AlsegError(
                f"annotation=precise is not available for region={regions.name} yet; "
                "use annotation=dominant, or region=pixel"
            )
        if not 0 <= cfg.noise < 1:
            raise AlsegError(f"annotation.noise must be in [0, 1), got {cfg.noise}")
        self.cfg, self.regions, self.truth, self.num_classes, self.rng = cfg, regions, truth, num_classes, rng

    def costs(self) -> None:
        """Clicks per region as an [N, R] array, or None when every region costs one click."""
        return None

    def reveal(self, revealed: np.ndarray, images: np.ndarray, regions: np.ndarray) -> int:
        """Write the labels of the chosen (image, region) pairs into `revealed`; return clicks."""
        if self.regions.maps is None:
            self._reveal_pixels(revealed, images, regions)
        else:
            self._reveal_dominant(revealed, images, regions)
        return len(images)

    def _reveal_pixels(self, revealed, images, regions):
        w = self.truth.shape[2]
        ys, xs = np.divmod(regions, w)
        labels = _with_noise(self.truth[images, ys, xs], self.cfg.noise, self.num_classes, self.rng)
        revealed[images, ys, xs] = np.where(labels == IGNORE, NO_LABEL, labels)

    def _reveal_dominant(self, revealed, images, regions):
        c = self.num_classes
        for i in np.unique(images):
            chosen = regions[images == i]
            rmap = np.asarray(self.regions.maps[i]).astype(np.int64)
            truth = np.where(self.truth[i] == IGNORE, c, self.truth[i]).astype(np.int64)
            votes = np.bincount((rmap * (c + 1) + truth).ravel(), minlength=(rmap.max() + 1) * (c + 1))
            majority = votes.reshape(-1, c + 1).argmax(axis=1)[chosen]
            majority = _with_noise(majority, self.cfg.noise, c, self.rng)
            value = np.full(rmap.max() + 1, 255, dtype=np.int64)
            value[chosen] = np.where(majority == c, NO_LABEL, majority)
            mask = np.isin(rmap, chosen)
            revealed[i][mask] = value[rmap[mask]]
