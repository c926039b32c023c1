"""Experiment trackers as loop hooks: `logger=tensorboard|mlflow|wandb`, several at once with
`logger=[tensorboard,mlflow]` (README, "Tracking"). Each chosen option sets `logger.<name>:
true`; `build_loggers` makes one guarded hook per chosen tracker, or fails before any work
when its package is missing."""
from __future__ import annotations

from importlib import import_module

from alseg.callbacks import Callback
from alseg.errors import AlsegError
from alseg.loggers.base import Guarded

# logger option -> (module of alseg.loggers, its Tracker class, the package it needs)
LOGGERS = {
    "tensorboard": ("tensorboard", "TensorBoardTracker", "tensorboard"),
    "mlflow": ("mlflow", "MLflowTracker", "mlflow"),
    "wandb": ("wandb", "WandbTracker", "wandb"),
}


def build_loggers(cfg) -> list[Callback]:
    """One hook per tracker the config chooses (none without a `logger` group)."""
    chosen = [name for name in LOGGERS if cfg.get("logger") and cfg.logger.get(name) is True]
    hooks = []
    for name in chosen:
        module, cls, package = LOGGERS[name]
        try:
            tracker = getattr(import_module(f"alseg.loggers.{module}"), cls)()
        except ImportError as exc:
            raise AlsegError(f"logger={name} needs the {package} package, which cannot be imported ({exc}): "
                             'pip install "alseg[tracking]" (make install installs it)') from exc
        hooks.append(Guarded(tracker))
    return hooks
