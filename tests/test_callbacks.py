"""A user's hook sees every event of the loop, in order, with the run's numbers."""
from __future__ import annotations

import signal

import pandas as pd
import pytest

from alseg.callbacks import Callback
from alseg.errors import Interrupted, clear_interrupted, interrupt
from alseg.experiment import run

EVENTS: list[tuple] = []


class Recorder(Callback):
    def on_run_start(self, run, start_cycle):
        EVENTS.append(("start", start_cycle))

    def on_train_report(self, run, cycle, step, steps, loss, lr):
        EVENTS.append(("report", cycle, step, steps))

    def on_cycle_end(self, run, cycle, row, rows):
        EVENTS.append(("cycle", cycle, row["miou"], len(rows)))

    def on_run_end(self, run, status, summary):
        EVENTS.append(("end", status, summary["cycles_done"]))


def test_a_user_callback_hears_start_reports_cycles_and_end(make_cfg, tmp_path):
    EVENTS.clear()
    run(make_cfg("callbacks=[test_callbacks.Recorder]", "budget.cycles=1", "train.epochs=null", "train.iterations=5"),
        tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert EVENTS[0] == ("start", 0) and EVENTS[-1] == ("end", "completed", 2)
    cycles = [e for e in EVENTS if e[0] == "cycle"]
    assert cycles == [("cycle", c, m, c + 1) for c, m in zip(metrics["cycle"], metrics["miou"])]
    reports = [e for e in EVENTS if e[0] == "report"]
    assert {e[1] for e in reports} == {0, 1} and all(e[3] == 5 for e in reports) and reports[-1][2] == 5


class SignalledInCycle0(Recorder):
    """Takes a SIGTERM after cycle 0 as the CLI's handler does (`interrupt`)."""

    def on_cycle_end(self, run, cycle, row, rows):
        super().on_cycle_end(run, cycle, row, rows)
        if cycle == 0:
            interrupt(signal.SIGTERM)


def test_a_signal_reaches_every_hook_as_the_end_of_an_interrupted_run(make_cfg, tmp_path):
    EVENTS.clear()
    try:  # summary.json is written first (shielded from signals): the signal must not come again there
        with pytest.raises(Interrupted):
            run(make_cfg("callbacks=[test_callbacks.SignalledInCycle0]", "budget.cycles=1"), tmp_path / "run")
    finally:
        clear_interrupted()
    assert EVENTS[-1][:2] == ("end", "interrupted")


class GainColumn(Callback):
    def on_cycle_end(self, run, cycle, row, rows):
        row["miou_gain"] = row["miou"] - rows[-2]["miou"] if len(rows) > 1 else 0.0


def test_a_callback_adds_a_metrics_column_that_plot_reads_as_a_metric(make_cfg, tmp_path):
    from alseg.results import differing_keys, load_runs

    for seed in (0, 1):
        run(make_cfg("callbacks=[test_callbacks.GainColumn]", "budget.cycles=1", f"seed={seed}"), tmp_path / f"run{seed}")
    metrics = pd.read_csv(tmp_path / "run0" / "metrics.csv")
    assert metrics["miou_gain"].tolist() == [0.0, metrics["miou"][1] - metrics["miou"][0]]
    assert "miou_gain" not in differing_keys(load_runs(tmp_path))  # a metric, never a grouping key
