"""The `alseg` command: `run` and `data` are Hydra apps over the packaged configs; `plot` is argparse."""
from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alseg.errors import AlsegError, Refused, clear_interrupted, interrupt

log = logging.getLogger("alseg")
CONFIG_PATH = "pkg://alseg.conf"

USAGE = """usage: alseg COMMAND [ARGS]

Active-learning experiments for semantic segmentation.

commands:
  run [overrides]          run one experiment (Hydra overrides, e.g. strategy=margin seed=1)
  run -m [sweep overrides] run a sweep, e.g. alseg run -m strategy=random,margin seed=0,1
  plot PATH [PATH ...]     curves and tables from every run found under PATHs
  data [overrides]         check a dataset: layout, counts, class shares
  download camvid --root PATH   fetch CamVid (SegNet layout) into PATH, resuming partial downloads

`alseg run --help` lists the config groups and the composed config;
`alseg plot --help` lists the plot options.
"""

_failures: list[str] = []
_exit_code = 0  # 128 + signal number for a single run stopped by a signal
_interrupted: int | None = None  # the signal that stopped a job of this process
ERROR_FILE = "error.txt"  # written into a run's folder when its job fails
NOTE_GLOB = ".failed-job*.txt"  # a sweep job that may not write into its folder leaves its message here
OmegaConf.register_new_resolver("alseg.pid", os.getpid, use_cache=True, replace=True)  # unique default run folders
NAME_MAX = 255  # bytes in one file name on Linux's file systems


def sweep_folder_name(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides: one path component whatever the values.

    "/" in a value (a local `model.encoder_weights` path) would nest the job's folder, and a
    name over NAME_MAX bytes would stop the sweep with OSError. So "%" and "/" are escaped as
    %25 and %2F (two jobs' names stay apart), and a longer name keeps its first bytes and ends
    with a hash of the whole. Any other name is Hydra's override_dirname unchanged.
    """
    from alseg.cache import cache_key

    name = override_dirname.replace("%", "%25").replace("/", "%2F")
    encoded = name.encode()
    if len(encoded) <= NAME_MAX:
        return name
    digest = cache_key(folder=name)
    return encoded[:NAME_MAX - len(digest) - 1].decode(errors="ignore") + "-" + digest


OmegaConf.register_new_resolver("alseg.sweep_folder", sweep_folder_name, replace=True)


def _report(exc: BaseException, message: str | None = None) -> None:
    """One clear message instead of a traceback (HYDRA_FULL_ERROR=1 or ALSEG_DEBUG=1 show it)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ALSEG_DEBUG") == "1":
        raise exc
    message = message or str(exc)
    log.error("error: %s", message)
    _failures.append(message)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _run_app(cfg: DictConfig) -> None:
    from alseg.experiment import run

    global _exit_code, _interrupted
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    held_log = HeldLog(out)
    if sweep and _interrupted is not None:
        held_log.drop()
        return _refused(out, hydra_cfg, f"not run: this process was stopped by {signal.Signals(_interrupted).name}")
    config_yaml = OmegaConf.to_yaml(cfg)
    _spread_over_gpus(cfg, hydra_cfg)
    logging.raiseExceptions = False  # a log file on a full disk must not bury the one-line message

    def record(path: Path) -> None:  # the folder is now this run's
        held_log.release()
        _save_hydra_record(path, config_yaml)

    with _signals_interrupt(), held_log:
        try:
            summary = run(cfg, out, record=record)
            if summary:  # {} in the other processes of a run under torchrun: rank 0 reports
                log.info("run finished: final mIoU %.2f; results in %s", summary["final_miou"] or float("nan"), out)
        except Refused as exc:  # the folder is not this run's: leave it as it was
            held_log.drop()
            _refused(out, hydra_cfg, str(exc), exc)
        except AlsegError as exc:  # also in summary.json; a sweep goes on with its other jobs
            _write_error(out, str(exc))
            _report(exc)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through _signals_interrupt
            clear_interrupted()
            _interrupted = getattr(exc, "signum", signal.SIGINT)
            message = f"interrupted by {signal.Signals(_interrupted).name}: {out} keeps its complete cycles; continue with resume=true"
            if held_log.released:  # not when it came before the folder was the run's
                _write_error(out, message)
            _exit_code = 0 if sweep else 128 + _interrupted
            _report(exc, message)
        except Exception as exc:
            if held_log.released:
                _write_error(out, f"{type(exc).__name__}: {exc}")
            if not sweep:
                raise
            log.exception("error: %s failed", out)  # a bug: the traceback, and the sweep goes on
            _failures.append(str(exc))


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While a job runs (in the main thread), SIGTERM (what Slurm sends on pre-emption) and
    SIGINT raise Interrupted, so that the run records "interrupted"; further signals are
    ignored while it does. Signals the process was told to ignore stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]

    def stop(signum: int, frame) -> None:
        for s in watched:
            signal.signal(s, signal.SIG_IGN)
        interrupt(signum)

    previous = {s: signal.signal(s, stop) for s in watched}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _save_hydra_record(out: Path, config_yaml: str) -> None:
    """Hydra's record of the job (.hydra/config.yaml, hydra.yaml, overrides.yaml), written once the
    folder is this run's (hydra.output_subdir is null, so Hydra writes none before); a previous
    attempt's error.txt goes."""
    from alseg.pool import atomic_write

    hydra_cfg = HydraConfig.instance().cfg
    texts = {"config.yaml": config_yaml, "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
             "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}
    (out / ".hydra").mkdir(exist_ok=True)
    for name, text in texts.items():
        atomic_write(out / ".hydra" / name, lambda f, text=text: f.write(text), "w")
    (out / ERROR_FILE).unlink(missing_ok=True)


class HeldLog:
    """The job's log file (alseg.log in its folder) held back in memory until the folder is
    the run's: `release` (then `released`) writes it out and logs on into the file; `drop` (a
    refused run, or the end of the block without `release`) forgets it, leaving the folder's
    log as it was."""

    def __init__(self, out: Path):
        self.root = logging.getLogger()
        self.file = next((h for h in self.root.handlers if isinstance(h, logging.FileHandler)
                          and Path(h.baseFilename).parent == out), None)
        self.memory = logging.handlers.MemoryHandler(10**6, logging.CRITICAL + 1, self.file, flushOnClose=False)
        self.released = False
        if self.file is not None:
            self.root.removeHandler(self.file)
            self.root.addHandler(self.memory)

    def release(self) -> None:
        self.released = True
        if self.file is not None and self.memory in self.root.handlers:
            self.memory.flush()
            self.root.removeHandler(self.memory)
            self.root.addHandler(self.file)

    def drop(self) -> None:
        if self.file is not None and self.memory in self.root.handlers:
            self.root.removeHandler(self.memory)
            self.file.close()
        self.memory.setTarget(None)
        self.memory.close()

    def __enter__(self) -> "HeldLog":
        return self

    def __exit__(self, *exc) -> None:
        self.drop()


def _refused(out: Path, hydra_cfg, message: str, exc: BaseException | None = None) -> None:
    """Report a job that may not write into `out` (nor into its log); in a sweep, a note in
    the sweep's folder tells SweepFailures."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        note = Path(hydra_cfg.sweep.dir) / NOTE_GLOB.replace("*", f"{hydra_cfg.job.num}-{os.getpid()}")
        _write_error(note, f"{out}: {message}", folder=False)
    _report(exc or AlsegError(message), message)


def _write_error(path: Path, message: str, folder: bool = True) -> None:
    """error.txt in the run folder `path` (or the file `path`), whole or not at all."""
    from alseg.pool import atomic_write

    try:
        atomic_write(path / ERROR_FILE if folder else path, lambda f: f.write(message + "\n"), "w")
    except OSError:  # the run's folder may be what failed; the message is in the log anyway
        pass


class SweepFailures(Callback):
    """After a sweep, on the machine that launched it: names the jobs that failed (they left
    an error.txt in their folder, or a note in the sweep's folder when theirs was not theirs to
    write, also when they ran in other processes or on other nodes), so that the sweep ends
    with exit code 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        errors = sorted(p for p in sweep.glob(f"**/{ERROR_FILE}") if p.stat().st_mtime >= self.start - 1)
        notes = sorted(p for p in sweep.glob(NOTE_GLOB) if p.stat().st_mtime >= self.start - 1)
        lines = [f"  {p.parent}: {_first_line(p)}" for p in errors] + [f"  {_first_line(p)}" for p in notes]
        for note in notes:
            note.unlink(missing_ok=True)
        if lines:
            print(f"error: {len(lines)} run(s) of this sweep failed:", *lines, sep="\n", file=sys.stderr)
            _failures.extend(lines)


class UsableOutputDir(Callback):
    """Before Hydra makes the run's (or sweep's) folder: a path under a file, a file in the way
    or a place that cannot be written ends in one line and exit code 2, not a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_usable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_usable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _check_usable(folder: Path, key: str) -> None:
    from alseg.rundir import unusable

    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # leaves nothing behind
    except OSError as exc:
        print(f"error: {unusable(folder, exc).replace('hydra.run.dir', key)}", file=sys.stderr)
        sys.exit(2)


def _first_line(path: Path) -> str:
    return path.read_text().strip().partition("\n")[0]


def _spread_over_gpus(cfg: DictConfig, hydra_cfg) -> None:
    """In a sweep on a machine with several GPUs, job k runs on GPU k mod count (device=auto|cuda),
    unless a job takes several GPUs itself (devices > 1)."""
    import torch

    count = torch.cuda.device_count()
    if hydra_cfg.mode == RunMode.MULTIRUN and count > 1 and cfg.device in ("auto", "cuda") and cfg.get("devices", 1) == 1:
        cfg.device = f"cuda:{int(hydra_cfg.job.num) % count}"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _data_app(cfg: DictConfig) -> None:
    from alseg.datacheck import check_dataset

    try:
        check_dataset(cfg.dataset, HydraConfig.get().runtime.output_dir)
    except AlsegError as exc:
        _report(exc)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `alseg` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "plot":
        from alseg.plot import main as plot_main

        sys.exit(plot_main(rest))
    if command == "download":
        from alseg.data.download import main as download_main

        sys.exit(download_main(rest))
    apps = {"run": _run_app, "data": _data_app}
    if command not in apps:
        print(f"alseg: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"alseg {command}", *rest]
    try:
        apps[command]()
    except SystemExit as exc:
        from hydra.errors import HydraException

        # Hydra prints its own errors (unknown option or key, malformed override) and exits 1;
        # they are the user's, like ours: exit 2. A crash inside a job keeps exit 1.
        if exc.code == 1 and isinstance(exc.__context__, HydraException):
            sys.exit(2)
        raise
    except KeyboardInterrupt:  # outside a job: nothing to record
        print("alseg: interrupted", file=sys.stderr)
        sys.exit(130)
    if _exit_code or _failures:
        sys.exit(_exit_code or 2)


if __name__ == "__main__":
    # through the importable module, whose state Hydra's callbacks (imported by name) share
    from alseg.cli import main as cli_main

    cli_main()
