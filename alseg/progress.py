"""Live progress: tqdm bars when the output is a terminal, plain log lines when it is not
(log files and Slurm outputs stay readable), and a per-cycle line with the time left.

`ALSEG_PROGRESS=bar` forces the bars, `ALSEG_PROGRESS=plain` the plain lines; otherwise bars
are drawn when stderr is a terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from alseg.callbacks import Callback, RunInfo

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    """Whether to draw bars: ALSEG_PROGRESS=bar|plain, else whether stderr is a terminal."""
    mode = os.environ.get("ALSEG_PROGRESS", "")
    if mode in ("bar", "plain"):
        return mode == "bar"
    return sys.stderr.isatty()


@contextlib.contextmanager
def console() -> Iterator[None]:
    """While bars may be drawn, log lines go through tqdm so that they do not cut a bar."""
    with logging_redirect_tqdm() if on_terminal() else contextlib.nullcontext():
        yield


class Progress:
    """Progress over `total` items: a bar on a terminal; otherwise, with `every` (seconds), a
    log line `what: done/total unit (elapsed, about ... left)` at most that often (nothing for
    quick jobs), and with `every=None` nothing."""

    def __init__(self, what: str, total: int, unit: str = "images", every: float | None = 5.0):
        self.what, self.total, self.unit, self.every, self.done = what, total, unit, every, 0
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=what, unit=unit[:-1] if unit.endswith("s") else unit, leave=False,
                        dynamic_ncols=True, file=sys.stderr) if on_terminal() else None

    def tick(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if self.every is not None and now - self.last >= self.every and self.done < self.total:
            left = (now - self.start) / self.done * (self.total - self.done)
            log.info("%s: %d/%d %s (%.0fs, about %.0fs left)", self.what, self.done, self.total, self.unit,
                     now - self.start, left)
            self.last = now

    def show(self, **values) -> None:
        """Values shown after the bar (the loss); nothing without a bar."""
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def drawn(self) -> bool:
        """Whether a bar shows the progress (else the caller's own lines may)."""
        return self.bar is not None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class RunProgress(Callback):
    """After each cycle, one plain line: cycles done of the run's, time so far and an estimate
    of the time left (the mean time of this session's cycles times the cycles to go)."""

    def on_run_start(self, run: RunInfo, start_cycle: int) -> None:
        self.start, self.first = time.perf_counter(), start_cycle
        cfg = run.cfg
        self.cycles = 1 if cfg.budget.name == "full" else int(cfg.budget.cycles) + 1

    def on_cycle_end(self, run: RunInfo, cycle: int, row: dict, rows: list[dict]) -> None:
        elapsed = time.perf_counter() - self.start
        left = elapsed / (cycle + 1 - self.first) * (self.cycles - cycle - 1)
        log.info("progress: %d/%d cycles done, %s elapsed, about %s left", cycle + 1, self.cycles,
                 duration(elapsed), duration(left))


def duration(seconds: float) -> str:
    """2h05m, 3m20s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
