"""Stopped after a cycle and resumed, runs whose strategies draw random numbers (core-set's
candidates, MC dropout's masks) or that train several networks (train.ensemble) give the
uninterrupted run's metrics: every RNG and every member is saved."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from alseg.callbacks import Callback
from alseg.experiment import run


class StopAfterCycle(Callback):
    """Interrupts the run after the cycle that ALSEG_TEST_STOP_AFTER names (as Ctrl-C would)."""

    def on_cycle_end(self, run, cycle, row, rows):
        if os.environ.get("ALSEG_TEST_STOP_AFTER") == str(cycle):
            raise KeyboardInterrupt


@pytest.mark.parametrize("strategy", [["strategy=coreset"], ["strategy=bald", "strategy.passes=3"],
                                      ["strategy=margin", "train.ensemble=2"], ["strategy=random", "train.seed=7"]])
def test_stop_and_resume_gives_the_uninterrupted_metrics(make_cfg, tmp_path, monkeypatch, strategy):
    overrides = [*strategy, "callbacks=[test_resume_strategies.StopAfterCycle]", "budget.cycles=2", "train.epochs=1"]
    run(make_cfg(*overrides), tmp_path / "whole")
    monkeypatch.setenv("ALSEG_TEST_STOP_AFTER", "1")
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides), tmp_path / "stopped")
    monkeypatch.delenv("ALSEG_TEST_STOP_AFTER")
    # stopped after cycle 1 trained, before it was written: the resume redoes cycle 1 from cycle 0's state
    assert len(pd.read_csv(tmp_path / "stopped" / "metrics.csv")) == 1
    run(make_cfg(*overrides, "resume=true"), tmp_path / "stopped")
    whole, resumed = (pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["train_s", "query_s"])
                      for name in ("whole", "stopped"))
    pd.testing.assert_frame_equal(whole, resumed)
