"""Sweeps through Hydra's launchers: parallel local jobs (joblib) and Slurm's local stand-in."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

TINIER = [o for o in TINY if not o.startswith("budget.cycles")] + ["budget.cycles=1", "train.epochs=1"]


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]])
def test_sweep_through_a_launcher(tmp_path, launcher):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "alseg.cli", "run", "-m", *launcher, *TINIER,
                             "strategy=random,margin", "hydra.sweep.dir=sweep"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.parent.name for p in Path(tmp_path, "sweep").glob("*/metrics.csv"))
    assert len(runs) == 2 and "strategy=margin" in runs[0] and "strategy=random" in runs[1]


def test_a_sweep_with_a_failed_job_finishes_the_others_and_exits_2(tmp_path):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    overrides = [o for o in TINIER if not o.startswith("budget.per_cycle")]
    result = subprocess.run([sys.executable, "-m", "alseg.cli", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             *overrides, "budget.per_cycle=10,0", "hydra.sweep.dir=sweep"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "1 run(s) of this sweep failed" in result.stderr and "budget.per_cycle must be an integer >= 1" in result.stderr
    (good,), (bad,) = (list(Path(tmp_path, "sweep").glob(f"*budget.per_cycle={v}*")) for v in (10, 0))
    assert (good / "metrics.csv").exists() and not (good / "error.txt").exists()
    assert "budget.per_cycle must be an integer >= 1" in (bad / "error.txt").read_text()
