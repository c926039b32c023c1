"""The `alseg` command as a user types it, in subprocesses started from outside the checkout."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

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
    assert result.returncode == 2
    assert "Could not find 'strategy/nonexistent'" in result.stderr
    assert "margin" in result.stderr and "entropy" in result.stderr


def test_hydra_errors_exit_2_with_hydras_message(tmp_path):
    for override, message in [("train.nonexistent_key=1", "Could not override 'train.nonexistent_key'"),
                              ("budget.per_cycle=[", "no viable alternative at input '['")]:
        result = alseg(tmp_path, "run", override)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_value_exits_2_with_one_message_before_any_cache_write(tmp_path):
    result = alseg(tmp_path, "run", *TINY, "region=seeds", "annotation=precise", "train.optimizer=rmsprop", "hydra.run.dir=bad")
    assert result.returncode == 2
    assert 'error: train.optimizer must be adam or sgd, got "rmsprop"' in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / "cache").exists()  # no decoded data, superpixels nor click costs


def test_a_sweep_job_with_a_wrong_typed_value_fails_alone(tmp_path):
    tiny = [o for o in TINY if not o.startswith(("budget.per_cycle", "budget.cycles", "train.epochs"))]
    result = alseg(tmp_path, "run", "-m", *tiny, "budget.cycles=0", "train.epochs=1", "save_model=never",
                   "budget.per_cycle=3,abc", "hydra.sweep.dir=sweep")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "1 run(s) of this sweep failed" in result.stderr and "Traceback" not in result.stderr
    assert 'budget.per_cycle must be an integer >= 1, got "abc"' in result.stderr
    (good,), (bad,) = (list(Path(tmp_path, "sweep").glob(f"*budget.per_cycle={v}*")) for v in (3, "abc"))
    assert (good / "metrics.csv").exists() and (bad / "error.txt").exists()
    for name in (good.name, bad.name):  # folders are not named by result-neutral keys
        assert not any(key in name for key in ("device", "overlay_images", "save_model"))


def test_sweep_folder_names_are_one_component_apart_and_short_enough():
    from alseg.cli import NAME_MAX, sweep_folder_name

    assert sweep_folder_name("seed=0,strategy=margin") == "seed=0,strategy=margin"  # as Hydra names it
    slashed, escaped = sweep_folder_name("w=/a/b"), sweep_folder_name("w=/a%2Fb")
    assert slashed == "w=%2Fa%2Fb" and "/" not in escaped and slashed != escaped
    for long in ("w=" + "x" * 300 + ",seed=0", "w=" + "é" * 200 + ",seed=0"):  # é: two bytes
        names = {sweep_folder_name(long), sweep_folder_name(long.replace("seed=0", "seed=1"))}
        assert len(names) == 2 and all(len(n.encode()) <= NAME_MAX and n.startswith("w=") for n in names)


def test_a_sweep_over_a_long_local_path_gives_each_job_its_own_folder(tmp_path, make_cfg):
    from alseg.model import build_model

    model_cfg = make_cfg().model
    weights = tmp_path / ("w" * 120) / ("v" * 120) / "encoder.pth"  # over 255 bytes with the rest
    weights.parent.mkdir(parents=True)
    torch.save(build_model(model_cfg, 9).net.encoder.state_dict(), weights)
    tiny = [o for o in TINY if not o.startswith(("budget.cycles", "train.epochs"))]
    sweep = alseg(tmp_path, "run", "-m", *tiny, "budget.cycles=0", "train.epochs=1", "save_model=never",
                  f"model.encoder_weights={weights}", "seed=0,1", "hydra.sweep.dir=sweep")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    jobs = [p for p in Path(tmp_path, "sweep").iterdir() if p.is_dir()]
    assert len(jobs) == 2 and all((job / "metrics.csv").exists() for job in jobs)  # one level down
    assert all("%2F" in job.name for job in jobs)
    plot = alseg(tmp_path, "plot", "sweep")
    assert plot.returncode == 0, plot.stderr
    assert set(pd.read_csv(tmp_path / "sweep" / "table.csv")["n"]) == {2}


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
