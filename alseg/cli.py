"""The `alseg` command: `run` and `data` are Hydra apps over the packaged configs; `plot` is argparse."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from alseg.errors import AlsegError

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
ERROR_FILE = "error.txt"  # written into a run's folder when its job fails


def _report(exc: AlsegError) -> None:
    """One clear message instead of a traceback (HYDRA_FULL_ERROR=1 or ALSEG_DEBUG=1 show it)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ALSEG_DEBUG") == "1":
        raise exc
    log.error("error: %s", exc)
    _failures.append(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _run_app(cfg: DictConfig) -> None:
    from alseg.experiment import run

    hydra_cfg = HydraConfig.get()
    out_dir = hydra_cfg.runtime.output_dir
    error_file = Path(out_dir, ERROR_FILE)
    error_file.unlink(missing_ok=True)
    _spread_over_gpus(cfg, hydra_cfg)
    try:
        summary = run(cfg, out_dir)
        log.info("run finished: final mIoU %.2f; results in %s", summary["final_miou"] or float("nan"), out_dir)
    except AlsegError as exc:  # also in summary.json; a sweep goes on with its other jobs
        _write_error(error_file, str(exc))
        _report(exc)
    except Exception as exc:
        _write_error(error_file, f"{type(exc).__name__}: {exc}")
        raise


def _write_error(path: Path, message: str) -> None:
    try:
        path.write_text(message + "\n")
    except OSError:  # the run's folder may be what failed; the message is in the log anyway
        pass


class SweepFailures(Callback):
    """After a sweep, on the machine that launched it: names the jobs that failed (they left
    an error.txt in their folder, also when they ran in other processes or on other nodes),
    so that the sweep ends with exit code 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        errors = sorted(p for p in Path(config.hydra.sweep.dir).glob(f"**/{ERROR_FILE}")
                        if p.stat().st_mtime >= self.start - 1)
        if errors:
            lines = [f"  {p.parent}: {p.read_text().strip().partition(chr(10))[0]}" for p in errors]
            print(f"error: {len(errors)} run(s) of this sweep failed:", *lines, sep="\n", file=sys.stderr)
            _failures.extend(lines)


def _spread_over_gpus(cfg: DictConfig, hydra_cfg) -> None:
    """In a sweep on a machine with several GPUs, job k runs on GPU k mod count (device=auto|cuda)."""
    import torch
    from hydra.types import RunMode

    count = torch.cuda.device_count()
    if hydra_cfg.mode == RunMode.MULTIRUN and count > 1 and cfg.device in ("auto", "cuda"):
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
    if _failures:
        sys.exit(2)


if __name__ == "__main__":
    # through the importable module, whose state Hydra's callbacks (imported by name) share
    from alseg.cli import main as cli_main

    cli_main()
