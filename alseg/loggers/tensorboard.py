"""logger=tensorboard: event files from torch's SummaryWriter, in <run dir>/tensorboard or
below `logger.dir`. Scalars are tagged by their metrics.csv column (miou, iou_<class>, ...)
with clicks as the step, train/loss and train/lr by training step; the config and the final
numbers go to the HParams tab; queries and curve are images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from alseg.callbacks import RunInfo
from alseg.loggers.base import Tracker


def log_dir(run: RunInfo) -> Path:
    """<run dir>/tensorboard, or <logger.dir>/<parent folder>/<run folder> (one tree for many runs)."""
    root = run.cfg.logger.get("dir")
    return run.out / "tensorboard" if root is None else Path(root).expanduser() / run.out.parent.name / run.out.name


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self, run: RunInfo, run_id: str | None, group: str | None) -> str | None:
        self.folder = log_dir(run)
        self.writer = SummaryWriter(log_dir=str(self.folder))  # a resumed run adds an event file to the same folder
        return None

    def log_params(self, params: dict) -> None:
        self.params = params

    def log_metrics(self, values: dict[str, float], step: int, axis: str) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for tag, path in images.items():
            self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.writer.add_text("files", str(path))

    def close(self, status: str, message: str | None, final: dict[str, float]) -> None:
        self.writer.add_text("status", status if message is None else f"{status}: {message}")
        numbers = {f"final/{k}": final.get(k, math.nan) for k in ("final_miou", "auc")}
        self.writer.add_hparams(getattr(self, "params", {}), numbers, run_name=".")
        self.writer.close()
