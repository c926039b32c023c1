"""A run's directory: owned by one run at a time, written only once the run may go on there.

`RunFiles` holds an exclusive lock on `run.lock` for the run's life (a second run into the
same directory is Refused, naming the holder), decides from what is on disk whether the run
starts, resumes or is Refused (reading only), and writes metrics.csv, summary.json,
curve.png, the model copies and state/. Until its first write nothing in the directory
changes, so a refused run leaves it as it was.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from alseg.errors import AlsegError, Interrupted, Refused
from alseg.pool import Pool, atomic_write
from alseg.state import (SavedState, config_differences, data_differences, data_fingerprint,
                         load_state, newest_complete, restore, save_state)

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# What the file system answers when it will not take a run's files: the user can fix it.
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def unusable(out: Path, exc: OSError) -> str:
    """The message for a run directory that cannot be made or written."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
    return f"cannot use {out} as a run directory: {exc.strerror or exc}{where}; choose another hydra.run.dir"


class DirLock:
    """An exclusive, non-blocking flock on `out/run.lock`, which names its holder (pid, host,
    start time). Released when the holder ends, however it ends."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Refused(unusable(out, exc)) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 512, 0).decode(errors="replace").strip() or "starting up"
            os.close(self.fd)
            raise Refused(f"{out} is in use by another run ({holder}): wait until it ends, "
                          "or choose another hydra.run.dir") from None
        self.previous = os.pread(self.fd, 4096, 0)
        try:
            self._write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        except OSError as exc:
            os.close(self.fd)
            raise Refused(unusable(out, exc)) from None

    def release(self, restore: bool) -> None:
        """Unlock; with `restore`, put back what the lock file said before (a refused run)."""
        if restore:
            self._write(self.previous)
        os.close(self.fd)

    def _write(self, text: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text, 0)


class RunFiles:
    """metrics.csv, summary.json, curve.png, model copies and state/ of one run directory,
    held (locked) from `with RunFiles(...)` to its end. `record(out)` is called once, before
    the run's first write (the CLI saves Hydra's record of the config there)."""

    def __init__(self, out: Path, cfg: DictConfig, info: dict, record: Callable[[Path], None] | None = None):
        self.out, self.cfg, self.info, self.record = out, cfg, info, record
        self.state = out / "state"
        self.saved: SavedState | None = None
        self.data: dict | None = None
        self.owned = False

    def __enter__(self) -> "RunFiles":
        self.lock = DirLock(self.out)
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release(restore=not self.owned)

    def own(self) -> None:
        """Make the directory this run's: called before each write, acts once."""
        if not self.owned:
            self.owned = True
            if self.record is not None:
                self.record(self.out)

    def prepare(self, rows: list[dict]) -> int | None:
        """The cycle to start from (0 for a new run), or None when a resumed run is complete;
        reads only, and raises Refused when the run may not go on here."""
        resume = self.cfg.resume
        if not isinstance(resume, (bool, int)) and resume is not None:
            raise Refused(f"resume must be true, false or the number of a saved cycle, got {resume!r}")
        if resume is False or resume is None:
            if (self.out / "metrics.csv").exists() or self.state.exists():
                raise Refused(f"{self.out} already holds a run; add resume=true to continue it, or choose another hydra.run.dir")
            return 0
        if resume is True and not (self.state / "latest.json").exists():  # stopped before its first pointer
            resume = newest_complete(self.out)
            if resume is None:
                log.info("resume=true but %s has no saved state: starting from cycle 0", self.out)
                return 0
        saved = load_state(self.out, None if resume is True else int(resume))
        diff = config_differences(saved.config, OmegaConf.to_container(self.cfg, resolve=True))
        if diff:
            raise Refused("cannot resume: the config differs from the saved run:\n  " + "\n  ".join(diff))
        rows.extend(saved.rows)
        if resume is True and self._summary().get("status") == "completed":
            log.info("%s is already complete (%d cycles); nothing to do", self.out, len(rows))
            return None
        log.info("resuming %s after cycle %d", self.out, saved.cycle)
        self.saved = saved
        return saved.cycle + 1

    def check_data(self, data) -> None:
        """Fingerprint the decoded data; a resumed run must find the data it was built on."""
        self.data = data_fingerprint(data)
        if self.saved is not None and self.saved.data is not None:
            diff = data_differences(self.saved.data, self.data)
            if diff:
                root = self.saved.config.get("dataset", {}).get("root")
                raise Refused(f"cannot resume {self.out}: the data differ from those it was built on "
                              f"(dataset.root was {root}): {', '.join(diff)}; point dataset.root at that data")

    def restore(self, pool: Pool, models: list, generators: dict[str, torch.Generator], rng: np.random.Generator) -> None:
        """Load the state `prepare` read into a fresh pool, models and generators."""
        restore(self.saved, pool, models, generators, rng)

    def write_metrics(self, rows: list[dict]) -> None:
        self.own()
        atomic_write(self.out / "metrics.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False), "w")

    def write_summary(self, status: str, rows: list[dict], message: str | None = None, **extra) -> None:
        """summary.json, strict JSON: a non-finite number (a NaN mIoU) is written as null."""
        from alseg.results import auc

        self.own()
        x = [r["clicks"] for r in rows]
        y = [r["miou"] for r in rows]
        summary = {
            "status": status,
            "message": message,
            **self.info,
            "cycles_done": len(rows),
            "final_miou": y[-1] if y else None,
            "auc": auc(x, y) if len(rows) > 1 else None,
            **extra,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_write(self.out / "summary.json", lambda f: json.dump(_finite(summary), f, indent=1, allow_nan=False), "w")

    def write_curve(self, rows: list[dict]) -> None:
        from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

        self.own()
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        ax.plot([r["clicks"] for r in rows], [r["miou"] for r in rows], "o-")
        ax.set(xlabel="clicks", ylabel="mIoU (%)", title=f"{self.info['strategy']}, {self.info['region']}, seed {self.info['seed']}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(self.out / "curve.png", lambda f: fig.savefig(f, format="png", dpi=100))

    def save_state(self, cycle: int, pool: Pool, models: list, generators: dict[str, torch.Generator],
                   rng: np.random.Generator) -> None:
        self.own()
        config = OmegaConf.to_container(self.cfg, resolve=True)
        save_state(self.state, cycle, pool, models, generators, rng, config, self.data)

    def copy_model(self, cycle: int, target: Path) -> None:
        """Keep the weights trained in `cycle` as `target` (for save_model=last|every); the other
        members of an ensemble or committee beside it, as `<target stem>.member_k.pt`."""
        self.own()
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = self.state / f"cycle_{cycle:02d}"
        for name in sorted(p.name for p in folder.glob("member_*.pt")) + ["model.pt"]:
            with open(folder / name, "rb") as source:
                copy = target if name == "model.pt" else target.with_name(f"{target.stem}.{name}")
                atomic_write(copy, lambda f, source=source: shutil.copyfileobj(source, f))

    def end(self, exc: BaseException, rows: list[dict]) -> BaseException:
        """Record how the run ended early ("interrupted" or "failed" and why) as far as the disk
        allows; returns the error to raise (an AlsegError for a disk that refuses writes)."""
        if isinstance(exc, KeyboardInterrupt):
            status, error = "interrupted", exc
            message = (f"interrupted by {exc.args[0] if isinstance(exc, Interrupted) else 'SIGINT'} "
                       f"after {len(rows)} complete cycle(s); continue with resume=true")
        elif isinstance(exc, OSError) and exc.errno in REFUSED_WRITES:
            status, message = "failed", (f"cannot write {exc.filename or self.out}: {exc.strerror}; make room (or "
                                         "allow writing) there, then continue with resume=true")
            error = AlsegError(message)
        else:
            status, error = "failed", exc
            message = str(exc) if isinstance(exc, AlsegError) else f"{type(exc).__name__}: {exc}"
        try:
            self.write_summary(status, rows, message)
        except OSError as again:  # the disk still refuses: the message reaches the console anyway
            log.debug("summary.json not updated: %s", again)
        return error

    def _summary(self) -> dict[str, Any]:
        try:
            return json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            return {}


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
