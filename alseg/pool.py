"""The labelled state of the pool: revealed labels, what was asked each cycle, clicks spent.

This module owns the revealed map's encoding: class ids 0..MAX_CLASSES-1, NO_LABEL for
'asked, but no label given' (void pixels, or a region whose majority is void under dominant
labelling) and NOT_ASKED; both markers are ignored in training (`training_targets`)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alseg.data.base import IGNORE
from alseg.errors import AlsegError

NOT_ASKED = 255
NO_LABEL = 254
MAX_CLASSES = NO_LABEL  # class ids 0..253 fit in a byte beside the two markers


def atomic_write(path: Path, write, mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file named for this writer alone (pid and a random
    tag, so that two writers never share one), flush it to disk, then rename it onto `path`:
    a reader never sees a partial file. On any error the temporary file is removed, and an
    OSError names `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@dataclass
class Pool:
    """Revealed labels uint8 [N, H, W] (NOT_ASKED, NO_LABEL or a class id), clicks and
    regions spent. This is all that is held in memory (1 byte per pool pixel): which regions
    were asked in each cycle goes to disk (`record_selection`)."""

    revealed: np.ndarray
    clicks: float = 0.0
    regions: int = 0

    @classmethod
    def empty(cls, n: int, height: int, width: int, num_classes: int = 0) -> "Pool":
        if num_classes > MAX_CLASSES:
            raise AlsegError(f"{num_classes} classes do not fit the pool's 1-byte labels: at most {MAX_CLASSES} "
                             "classes (ids 0..253) are supported")
        return cls(np.full((n, height, width), NOT_ASKED, dtype=np.uint8))

    def asked_mask(self) -> np.ndarray:
        return self.revealed != NOT_ASKED

    def labelled_mask(self) -> np.ndarray:
        return self.revealed < NO_LABEL

    def reveal(self, where, labels: np.ndarray) -> None:
        """Write ground-truth-coded `labels` (IGNORE = void) at `where` (any numpy index into
        the revealed map): void becomes NO_LABEL, asked but never trained on."""
        self.revealed[where] = np.where(labels == IGNORE, NO_LABEL, labels)

    def label_noise(self, truth: np.ndarray) -> float:
        """Share of revealed pixels whose label differs from the ground truth."""
        mask = self.labelled_mask()
        total = int(mask.sum())
        return float((self.revealed[mask] != truth[mask]).sum() / total) if total else 0.0

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Revealed pixels per class."""
        return np.bincount(self.revealed[self.labelled_mask()], minlength=num_classes)[:num_classes]

    def save(self, folder: Path, extra: dict) -> None:
        """Write the state atomically: revealed labels, and `extra` (JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "revealed.npy", lambda f: np.save(f, self.revealed))
        meta = {"clicks": self.clicks, "regions": self.regions, **extra}
        atomic_write(folder / "meta.json", lambda f: json.dump(meta, f, indent=1), "w")


def training_targets(revealed: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The revealed map (or a batch of it) on `device` as training targets: both markers become IGNORE."""
    targets = torch.as_tensor(revealed, device=device)
    return torch.where(targets >= NO_LABEL, IGNORE, targets)


def record_selection(state: Path, cycle: int, images: np.ndarray, regions: np.ndarray) -> None:
    """Append one cycle's chosen (image, region) pairs to `state/selections/cycle_NN.npz`."""
    folder = state / "selections"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = {"images": images.astype(np.int32), "regions": regions.astype(np.int64)}
    atomic_write(folder / f"cycle_{cycle:02d}.npz", lambda f: np.savez(f, **pairs))


def load_selections(run_dir: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (images, regions) chosen in every completed cycle of a run, in cycle order."""
    state = Path(run_dir) / "state"
    last = json.loads((state / "latest.json").read_text())["cycle"]
    out = []
    for cycle in range(last + 1):
        with np.load(state / "selections" / f"cycle_{cycle:02d}.npz") as sel:
            out.append((sel["images"], sel["regions"]))
    return out
