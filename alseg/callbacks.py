"""Hooks into the active-learning loop: run start, each training report, cycle end, run end.

A tracker, a progress display, a metrics column of one's own or any other hook is one class
with some of these methods; `callbacks: [my_pkg.MyHook]` (top level,
import paths) adds a user's. A hook gets the `RunInfo` of the run, which says what is running
and where.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import get_class

from alseg.errors import AlsegError


@dataclass
class RunInfo:
    """What a hook may read about the run: its config, its folder and its summary fields."""

    cfg: object
    out: Path
    info: dict = field(default_factory=dict)


class Callback:
    """Base class: override the events you need; each does nothing by default."""

    def on_run_start(self, run: RunInfo, start_cycle: int) -> None:
        """Before cycle `start_cycle` (0, or the cycle a resumed run continues with)."""

    def on_train_report(self, run: RunInfo, cycle: int, step: int, steps: int, loss: float, lr: float) -> None:
        """A few times per cycle's training: the mean loss since the last report, the learning rate."""

    def on_cycle_end(self, run: RunInfo, cycle: int, row: dict, rows: list[dict]) -> None:
        """After a cycle is trained and evaluated, before its metrics row is written: `row` may
        gain columns (they land in metrics.csv; `alseg plot` reads them as metrics, never as
        config), `rows` holds every row so far."""

    def on_run_end(self, run: RunInfo, status: str, summary: dict) -> None:
        """Once, when the run completes, fails or is interrupted."""


class Forwarding(Callback):
    """A callback that hands every event to `_forward(event, *args)` (fan-out, guards)."""

    def _forward(self, event: str, *args) -> None:
        raise NotImplementedError

    def on_run_start(self, *args) -> None:
        self._forward("on_run_start", *args)

    def on_train_report(self, *args) -> None:
        self._forward("on_train_report", *args)

    def on_cycle_end(self, *args) -> None:
        self._forward("on_cycle_end", *args)

    def on_run_end(self, *args) -> None:
        self._forward("on_run_end", *args)


class Callbacks(Forwarding):
    """Several hooks called in order as one."""

    def __init__(self, hooks: list[Callback]) -> None:
        self.hooks = hooks

    def _forward(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)


def user_callbacks(paths) -> list[Callback]:
    """The hooks that `callbacks: [...]` names, each built without arguments."""
    hooks = []
    for path in paths or []:
        try:
            cls = get_class(str(path))
        except Exception as exc:
            raise AlsegError(f"cannot import callback {path}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise AlsegError(f"callback {path} must be a subclass of alseg.callbacks.Callback")
        hooks.append(cls())
    return hooks
