"""The labelled state of the pool: revealed labels, what was asked each cycle, clicks spent."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alseg.oracle import NO_LABEL


def atomic_write(path: Path, write, mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file, then rename it onto `path`, so that a reader
    never sees a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, mode) as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class Pool:
    """Revealed labels uint8 [N, H, W] (255 not asked, 254 asked without label) + history."""

    revealed: np.ndarray
    clicks: float = 0.0
    regions: int = 0
    selections: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int, height: int, width: int) -> "Pool":
        return cls(np.full((n, height, width), 255, dtype=np.uint8))

    def labelled_mask(self) -> np.ndarray:
        return self.revealed < NO_LABEL

    def label_noise(self, truth: np.ndarray) -> float:
        """Share of revealed pixels whose label differs from the ground truth."""
        mask = self.labelled_mask()
        total = int(mask.sum())
        return float((self.revealed[mask] != truth[mask]).sum() / total) if total else 0.0

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Revealed pixels per class."""
        return np.bincount(self.revealed[self.labelled_mask()], minlength=num_classes)[:num_classes]

    def save(self, folder: Path, extra: dict) -> None:
        """Write the state atomically: revealed labels, selections per cycle, and `extra` (JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "revealed.npy", lambda f: np.save(f, self.revealed))
        arrays = {f"cycle_{k:02d}_{part}": a for k, sel in enumerate(self.selections) for part, a in zip(("images", "regions"), sel)}
        atomic_write(folder / "selections.npz", lambda f: np.savez(f, **arrays))
        meta = {"clicks": self.clicks, "regions": self.regions, **extra}
        atomic_write(folder / "meta.json", lambda f: json.dump(meta, f, indent=1), "w")
