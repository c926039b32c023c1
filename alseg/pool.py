"""The labelled state of the pool: revealed labels, what was asked each cycle, clicks spent.

This module owns the revealed map's encoding: class ids 0..MAX_CLASSES-1, NO_LABEL for
'asked, but no label given' (void pixels, or a region whose majority is void under dominant
labelling) and NOT_ASKED; both markers are ignored in training (`training_targets`).

Multi-class labelling (annotation=multiclass) names a set of classes per asked region. A pixel
then holds a label-set code: a class id c < num_classes is the set {c} (so a one-class answer
is an ordinary label), and a code num_classes + k stands for row k of its image's table of
multi-class sets (`Pool.sets`, bool [N, S, C], rows of two or more classes; an all-False row
is free). One table per image keeps the map at one byte per pixel: an image rarely holds
more than a few dozen distinct sets, while a table for the whole pool would overflow the byte
(region=image alone gives one set per image)."""
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
from alseg.errors import AlsegError, uninterrupted

NOT_ASKED = 255
NO_LABEL = 254
MAX_CLASSES = NO_LABEL  # class ids 0..253 fit in a byte beside the two markers


def atomic_write(path: Path, write, mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file named for this writer alone (pid and a random
    tag, so that two writers never share one), flush it to disk, then rename it onto `path`:
    a reader never sees a partial file. On any error the temporary file is removed, and an
    OSError names `path`. A signal that comes meanwhile stops the run once the file is written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with uninterrupted():
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
    num_classes: int = 0
    sets: np.ndarray | None = None  # multi-class label sets per image (see the module doc), or None

    @classmethod
    def empty(cls, n: int, height: int, width: int, num_classes: int = 0) -> "Pool":
        if num_classes > MAX_CLASSES:
            raise AlsegError(f"{num_classes} classes do not fit the pool's 1-byte labels: at most {MAX_CLASSES} "
                             "classes (ids 0..253) are supported")
        return cls(np.full((n, height, width), NOT_ASKED, dtype=np.uint8), num_classes=num_classes)

    def asked_mask(self) -> np.ndarray:
        return self.revealed != NOT_ASKED

    def labelled_mask(self) -> np.ndarray:
        return self.revealed < NO_LABEL

    def reveal(self, where, labels: np.ndarray) -> None:
        """Write ground-truth-coded `labels` (IGNORE = void) at `where` (any numpy index into
        the revealed map): void becomes NO_LABEL, asked but never trained on."""
        self.revealed[where] = np.where(labels == IGNORE, NO_LABEL, labels)

    def reveal_sets(self, image: int, where, named: np.ndarray, which: np.ndarray) -> None:
        """Write multi-class answers into image `image`: `named` bool [K, C] holds K answers
        (sets of named classes), `which` [P] the answer of each pixel at `where` (an index into
        the image's map). An empty set becomes NO_LABEL, one class its class id, more classes
        a code into the image's table (rows added as new sets come)."""
        counts = named.sum(axis=1)
        codes = np.where(counts == 0, NO_LABEL, named.argmax(axis=1)).astype(np.uint8)
        multi = np.flatnonzero(counts > 1)
        if len(multi):
            rows, inverse = np.unique(named[multi], axis=0, return_inverse=True)
            codes[multi] = self.num_classes + np.array([self._set_row(image, row) for row in rows])[inverse.ravel()]
        self.revealed[image][where] = codes[which]

    def _set_row(self, image: int, row: np.ndarray) -> int:
        """The row of `row` in image `image`'s table of sets, added (and the table widened) if new."""
        if self.sets is None:
            self.sets = np.zeros((len(self.revealed), 4, self.num_classes), bool)
        table = self.sets[image]
        found = np.flatnonzero((table == row).all(axis=1))
        if len(found):
            return int(found[0])
        free = np.flatnonzero(~table.any(axis=1))
        if len(free) == 0:
            limit = NO_LABEL - self.num_classes
            if len(table) >= limit:
                raise AlsegError(f"image {image} was given more than {limit} different sets of classes, more than the "
                                 "pool's 1-byte labels can hold: use larger regions (fewer per image) or another annotation")
            wider = np.zeros((len(self.sets), min(limit, 2 * len(table)), self.num_classes), bool)
            wider[:, : len(table)] = self.sets
            self.sets, free = wider, [len(table)]
        self.sets[image, free[0]] = row
        return int(free[0])

    def label_table(self) -> np.ndarray | None:
        """For multi-class labels, bool [N, NO_LABEL, C]: row v of image i is the set of classes
        that code v names there (the identity for class ids; all False past the image's sets).
        None when every label is a single class (training is then plain cross-entropy)."""
        if self.sets is None:
            return None
        n, s, c = self.sets.shape
        table = np.zeros((n, NO_LABEL, c), bool)
        table[:, np.arange(c), np.arange(c)] = True
        table[:, c : c + s] = self.sets
        return table

    def label_noise(self, truth: np.ndarray) -> float:
        """Share of revealed pixels whose label differs from the ground truth; for multi-class
        labels, whose true class is not among the classes named for them (void is never named)."""
        mask = self.labelled_mask()
        total = int(mask.sum())
        if not total:
            return 0.0
        table = self.label_table()
        if table is None:
            return float((self.revealed[mask] != truth[mask]).sum() / total)
        image = np.nonzero(mask)[0]
        true = truth[mask].astype(np.int64)
        named = table[image, self.revealed[mask], np.minimum(true, table.shape[2] - 1)] & (true < table.shape[2])
        return float((~named).sum() / total)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Revealed pixels per class; a pixel with a multi-class label counts once for each class named."""
        mask = self.labelled_mask()
        table = self.label_table()
        if table is None:
            return np.bincount(self.revealed[mask], minlength=num_classes)[:num_classes]
        codes = np.nonzero(mask)[0] * NO_LABEL + self.revealed[mask]
        per_code = np.bincount(codes, minlength=table.shape[0] * NO_LABEL).reshape(table.shape[:2])
        used = np.nonzero(per_code)
        return (per_code[used][:, None] * table[used]).sum(axis=0)[:num_classes]

    def save(self, folder: Path, extra: dict) -> None:
        """Write the state atomically: revealed labels, the multi-class sets (label_sets.npy, when
        there are any), and `extra` (JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "revealed.npy", lambda f: np.save(f, self.revealed))
        if self.sets is not None:
            atomic_write(folder / "label_sets.npy", lambda f: np.save(f, self.sets))
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
