"""What every tracker shares: the loop's events turned into a few calls (`Tracker`), a guard
that keeps a failing tracker from breaking the run (`Guarded`), and the tracker run ids that
`resume=true` continues (state/trackers.json)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from alseg.callbacks import Callback, Forwarding, RunInfo
from alseg.pool import atomic_write
from alseg.results import flatten_config

log = logging.getLogger(__name__)
IDS_FILE = "trackers.json"  # in the run's state/: {tracker: its run id}
FINAL_KEYS = ("final_miou", "auc")


class Tracker(Callback):
    """One experiment tracker. Subclasses implement `open` ... `close`; this class decides what
    is logged when: the flattened config once per tracker run, each training report (per
    epoch) on the axis `train/step` (training steps since the run began), each cycle's
    metrics row on the axis `clicks`, the query overlays and curve.png as images, the final
    status, mIoU and AUC, and model.pt when the run saved one."""

    name = ""  # as in logger=NAME
    opened = False  # a run that fails before its first cycle starts has nothing to close

    def open(self, run: RunInfo, run_id: str | None, group: str | None) -> str | None:
        """Start the tracker's run, or continue the one `run_id` names; returns the id to keep."""
        raise NotImplementedError

    def log_params(self, params: dict) -> None:
        raise NotImplementedError

    def log_metrics(self, values: dict[str, float], step: int, axis: str) -> None:
        """`values` at `step` of the axis `axis` (clicks, or train/step)."""
        raise NotImplementedError

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files by name (queries, curve), at cycle `step`."""
        raise NotImplementedError

    def log_files(self, paths: list[Path]) -> None:
        """Files kept as they are (the model)."""
        raise NotImplementedError

    def close(self, status: str, message: str | None, final: dict[str, float]) -> None:
        """End the tracker's run as completed, failed or interrupted (with the message)."""
        raise NotImplementedError

    def on_run_start(self, run: RunInfo, start_cycle: int) -> None:
        ids = saved_ids(run.out)
        run_id = self.open(run, ids.get(self.name), sweep_group())
        self.opened = True
        if run_id is None or ids.get(self.name) != run_id:
            self.log_params(params(run.cfg))
        if run_id is not None and ids.get(self.name) != run_id:
            save_id(run.out, self.name, run_id)
        self.steps = steps_before(run.out, start_cycle)
        self.next_overlay = start_cycle

    def on_train_report(self, run: RunInfo, cycle: int, step: int, steps: int, loss: float, lr: float) -> None:
        self.log_metrics({"train/loss": loss, "train/lr": lr}, self.steps + step, "train/step")

    def on_cycle_end(self, run: RunInfo, cycle: int, row: dict, rows: list[dict]) -> None:
        self.steps += int(row.get("train_steps", 0))
        values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "clicks"}
        self.log_metrics(values, int(row["clicks"]), "clicks")
        self._overlays(run, cycle)  # this cycle's is written after this event: the ones before

    def on_run_end(self, run: RunInfo, status: str, summary: dict) -> None:
        if not self.opened:
            return
        self._overlays(run, int(summary.get("cycles_done") or 0))
        if (run.out / "curve.png").exists():
            self.log_images({"curve": run.out / "curve.png"}, int(summary.get("cycles_done") or 0))
        if status == "completed" and (run.out / "model.pt").exists():
            self.log_files([run.out / "model.pt"])
        final = {k: float(summary[k]) for k in FINAL_KEYS if isinstance(summary.get(k), (int, float))}
        self.close(status, summary.get("message"), final)

    def _overlays(self, run: RunInfo, upto: int) -> None:
        """Log queries/cycle_NN.png of the cycles from the last logged one to `upto` (excluded)."""
        for cycle in range(self.next_overlay, upto):
            path = run.out / "queries" / f"cycle_{cycle:02d}.png"
            if path.exists():
                self.log_images({"queries": path}, cycle)
        self.next_overlay = max(self.next_overlay, upto)


class Guarded(Forwarding):
    """A tracker whose first error (a server down, a bad URI, a full store) costs one warning
    and ends its tracking for this run; the run goes on writing its files."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker, self.failed = tracker, False

    def _forward(self, event: str, *args) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, event)(*args)
        except Exception as exc:  # noqa: BLE001 - tracking never breaks an experiment
            self.failed = True
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("warning: logger=%s stopped tracking this run (%s: %s); the run goes on",
                        self.tracker.name, type(exc).__name__, text[:300])


def params(cfg) -> dict:
    """The resolved config with flattened keys (train.lr, dataset.size, ...), values as text
    where they are not numbers, flags or text."""
    flat = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def run_name(run: RunInfo) -> str:
    """What a tracker calls the run: strategy, region, budget and seed, then its folder."""
    cfg = run.cfg
    return f"{cfg.strategy.name} {cfg.region.name} {cfg.budget.name} seed={cfg.seed} ({run.out.name})"


def sweep_group() -> str | None:
    """The sweep's folder when Hydra runs this job as part of a sweep (its jobs share it as a
    group or tag); None for a single run or without Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return str(Path(hydra_cfg.sweep.dir).resolve()) if hydra_cfg.mode == RunMode.MULTIRUN else None


def saved_ids(out: Path) -> dict[str, str]:
    """state/trackers.json: the tracker run ids of this run folder ({} when none or unreadable)."""
    try:
        ids = json.loads((out / "state" / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def save_id(out: Path, name: str, run_id: str) -> None:
    (out / "state").mkdir(parents=True, exist_ok=True)
    ids = {**saved_ids(out), name: run_id}
    atomic_write(out / "state" / IDS_FILE, lambda f: json.dump(ids, f, indent=1), "w")


def steps_before(out: Path, start_cycle: int) -> int:
    """Training steps of the cycles before `start_cycle` (a resumed run's train/step goes on)."""
    if start_cycle == 0:
        return 0
    metrics = pd.read_csv(out / "metrics.csv")
    return int(metrics["train_steps"].iloc[:start_cycle].sum()) if "train_steps" in metrics else 0
