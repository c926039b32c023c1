"""The `alseg` command as a user types it, in subprocesses started from outside the checkout."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import TINY

ALSEG = [sys.executable, "-m", "alseg.cli"]


def alseg(tmp_path, *args):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    return subprocess.run([*ALSEG, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_config_is_found_from_any_directory(tmp_path):
    result = alseg(tmp_path, "run", "--info", "searchpath")
    assert result.returncode == 0
    assert "pkg://alseg.conf" in result.stdout


def test_run_help_lists_the_config_groups(tmp_path):
    out = alseg(tmp_path, "run", "--help").stdout
    for group in ("dataset:", "region:", "annotation:", "strategy:", "budget:", "model:", "train:"):
        assert group in out
    assert "least_confidence" in out and "per_image" in out


def test_unknown_strategy_lists_the_available_ones(tmp_path):
    result = alseg(tmp_path, "run", "strategy=nonexistent")
    assert result.returncode != 0
    assert "Could not find 'strategy/nonexistent'" in result.stderr
    assert "margin" in result.stderr and "entropy" in result.stderr


def test_bad_value_exits_2_with_one_message(tmp_path):
    result = alseg(tmp_path, "run", *TINY, "budget.per_cycle=0", "hydra.run.dir=bad")
    assert result.returncode == 2
    assert "budget.initial and budget.per_cycle must be > 0" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "failed"


def test_run_then_sweep_then_plot(tmp_path):
    single = alseg(tmp_path, "run", *TINY, "strategy=margin", "hydra.run.dir=single")
    assert single.returncode == 0, single.stderr
    assert "cycle 2/2" in single.stdout
    assert len(pd.read_csv(tmp_path / "single" / "metrics.csv")) == 3

    sweep = alseg(tmp_path, "run", "-m", *TINY, "strategy=random,margin", "seed=0,1", "hydra.sweep.dir=sweep")
    assert sweep.returncode == 0, sweep.stderr
    runs = sorted(p.parent.name for p in Path(tmp_path, "sweep").glob("*/metrics.csv"))
    assert len(runs) == 4  # sub-directories named by their overrides
    for swept in ("seed=0,strategy=margin", "seed=0,strategy=random", "seed=1,strategy=margin", "seed=1,strategy=random"):
        assert sum(swept in name for name in runs) == 1

    plot = alseg(tmp_path, "plot", "sweep")
    assert plot.returncode == 0, plot.stderr
    for name in ("curves.png", "table.md", "table.csv"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "sweep" / "table.csv")
    assert len(table) == 2 and set(table["n"]) == {2}
