"""logger=wandb: a Weights & Biases run in project `logger.project`, `logger.mode` offline (the
default: files under <run dir>/wandb, uploaded later by `wandb sync`) or online. A sweep's jobs
share a group (the sweep's folder). Cycle metrics are charted against clicks, training
metrics against train/step."""
from __future__ import annotations

from pathlib import Path

import wandb

from alseg.callbacks import RunInfo
from alseg.loggers.base import Tracker, run_name


class WandbTracker(Tracker):
    name = "wandb"

    def open(self, run: RunInfo, run_id: str | None, group: str | None) -> str | None:
        cfg = run.cfg.logger
        self.axes: dict[str, str] = {}
        self.run = wandb.init(project=cfg.project, mode=cfg.mode, dir=str(run.out), name=run_name(run), group=group,
                              id=run_id, resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        return self.run.id

    def log_params(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, values: dict[str, float], step: int, axis: str) -> None:
        for key in values:
            if key not in self.axes:
                self.axes[key] = axis
                self.run.define_metric(key, step_metric=axis)
        self.run.log({**values, axis: step})

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for key in images:
            if key not in self.axes:
                self.axes[key] = "cycle"
                self.run.define_metric(key, step_metric="cycle")
        self.run.log({**{k: wandb.Image(str(p)) for k, p in images.items()}, "cycle": step})

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, status: str, message: str | None, final: dict[str, float]) -> None:
        self.run.summary.update({**final, "status": status, "message": message})
        self.run.finish(exit_code=0 if status == "completed" else 1)
