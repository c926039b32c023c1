"""A run owns its directory, and nothing half-written is trusted, grouped by mechanism:
the lock and unique names; a refused run changes nothing; unusable output paths; the saved
state read back as a whole (damage, other data); writes the disk refuses; strict JSON; sweeps
that end with their failure summary."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from alseg import pool as pool_module
from alseg.config import ADDED_KEYS
from alseg.errors import AlsegError, Refused
from alseg.experiment import run
from alseg.pool import atomic_write
from alseg.results import flatten_config
from alseg.rundir import DirLock, RunFiles
from alseg.state import RESUME_FREE_KEYS
from conftest import TINY
from test_folder import NAMES, make_folder

TIMING = ["train_s", "query_s"]
SMALL = [o for o in TINY if not o.startswith(("budget.cycles", "train.epochs"))] + ["budget.cycles=2", "train.epochs=1"]


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def alseg(cwd: Path, *args: str, wait: bool = True):
    """The CLI in a subprocess, with its caches in cwd."""
    env = {**os.environ, "ALSEG_CACHE": str(cwd / "cache")}
    command = [sys.executable, "-m", "alseg.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` and a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv").drop(columns=TIMING)


def interrupted_run(cfg, out: Path, after_cycle: int) -> None:
    """`run` stopped by a KeyboardInterrupt right after the state of `after_cycle` is saved."""
    save_state = RunFiles.save_state

    def save_then_stop(self, cycle, *args):
        save_state(self, cycle, *args)
        if cycle == after_cycle:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunFiles, "save_state", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A whole run of SMALL, and the same run interrupted after cycle 1 (cycles 0-2)."""
    root = tmp_path_factory.mktemp("runs")
    overrides = [*SMALL, f"dataset.cache_dir={root / 'cache'}"]
    run(compose_cfg(*overrides), root / "whole")
    interrupted_run(compose_cfg(*overrides), root / "stopped", after_cycle=1)
    return root, overrides


# ---- a run owns its directory: the lock, names no two processes share ----------------------
def test_a_second_run_into_a_held_directory_exits_2_naming_the_first(tmp_path):
    first = alseg(tmp_path, "run", *SMALL, "hydra.run.dir=x", wait=False)
    lock = tmp_path / "x" / "run.lock"
    deadline = time.time() + 300
    while time.time() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGSTOP)  # hold it there, lock taken, while the second one tries
    try:
        second = alseg(tmp_path, "run", *SMALL, "seed=1", "hydra.run.dir=x")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stdout + second.stderr
    out = second.stdout + second.stderr
    assert f"in use by another run (pid {first.pid} on" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    assert first.wait(timeout=600) == 0, first.stdout.read()
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["config"]["seed"] == 0
    assert "seed=1" not in (tmp_path / "x" / ".hydra" / "overrides.yaml").read_text()


def test_default_run_folders_carry_the_microseconds_and_the_pid():
    import alseg.cli  # noqa: F401  (registers the alseg.pid resolver)
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    for key in ("run.dir", "sweep.dir"):
        folder = OmegaConf.select(cfg.hydra, key)
        assert folder.endswith(f"-{os.getpid()}") and len(folder.rsplit("/", 1)[1]) == len(f"00-00-00-000000-{os.getpid()}")


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "summary.json"

    def outer(f):
        f.write("outer ")
        atomic_write(target, lambda g: g.write("inner"), "w")  # another writer, meanwhile
        f.write("complete")

    atomic_write(target, outer, "w")
    assert target.read_text() == "outer complete"
    with pytest.raises(ZeroDivisionError):
        atomic_write(target, lambda f: f.write("half") and 1 / 0, "w")
    assert target.read_text() == "outer complete" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# ---- a refused run changes nothing in the folder -----------------------------------------------
def folder_data(root: Path, *, other: bool = False) -> list[str]:
    """Images and masks in root/data (and, with `other`, a copy with one mask changed in
    root/other); the overrides of a tiny experiment on them."""
    make_folder(root / "data", n=10, size=(32, 48))
    if other:
        shutil.copytree(root / "data", root / "other")
        mask = root / "other" / "masks" / "img_004.png"
        labels = np.array(Image.open(mask))
        labels[5:, :] = (labels[5:, :] + 1) % 3
        Image.fromarray(labels).save(mask)
    return ["dataset=folder", f"dataset.class_names=[{','.join(NAMES)}]", "budget.cycles=1", "train.epochs=1",
            "budget.initial=3", "budget.per_cycle=3", "device=cpu", "overlay_images=1", f"dataset.cache_dir={root / 'cache'}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run through the CLI on folder data, then marked as interrupted, so that resuming it
    gets as far as comparing the data."""
    root = tmp_path_factory.mktemp("finished")
    overrides = [*folder_data(root, other=True), "dataset.root=data", "hydra.run.dir=done"]
    result = alseg(root, "run", *overrides)
    assert result.returncode == 0, result.stderr
    summary = root / "done" / "summary.json"
    summary.write_text(summary.read_text().replace('"status": "completed"', '"status": "interrupted"'))
    return root, overrides


@pytest.mark.parametrize("overrides,holder,message", [
    ([], False, "already holds a run; add resume=true"),
    (["resume=true", "seed=5"], False, "seed: 0 -> 5"),
    (["resume=true"], True, "in use by another run"),
    (["resume=true", "dataset.root=other"], False, "the data differ from those it was built on"),
])
def test_a_refused_run_changes_nothing_in_the_folder(finished, overrides, holder, message):
    root, done_overrides = finished
    done = root / "done"
    before = snapshot(done)
    lock = DirLock(done) if holder else None
    try:
        result = alseg(root, "run", *done_overrides, *overrides)
    finally:
        if lock:
            lock.release(restore=True)
    assert result.returncode == 2 and message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(done) == before  # .hydra/, alseg.log, summary.json ... byte for byte, no error.txt


# ---- output paths that cannot be a run's folder ------------------------------------------------
@pytest.fixture
def blocked(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    return {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "run",
            "not writable": Path("/sys/kernel"), "cannot be made": Path("/sys/alseg-run")}


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable", "cannot be made"])
def test_an_unusable_output_path_is_one_line_and_exit_2(blocked, tmp_path, case):
    with pytest.raises(AlsegError, match="as a run directory") as caught:
        run(compose_cfg(*SMALL), blocked[case])
    assert "\n" not in str(caught.value)
    for mode in ([], ["-m"]):
        key = "hydra.sweep.dir" if mode else "hydra.run.dir"
        result = alseg(tmp_path, "run", *mode, *SMALL, f"{key}={blocked[case]}")
        out = result.stdout + result.stderr
        assert result.returncode == 2 and f"cannot use {blocked[case]}" in out and key in out, out
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1


# ---- saved state read back as a whole: damage --------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage,named,fallback", [
    (lambda s: (s / "state" / "latest.json").write_text("{\"cycle\": 1, \"con"), "state/latest.json", 1),
    (lambda s: truncate(s / "state" / "cycle_01" / "model.pt"), "state/cycle_01/model.pt", 0),
    (lambda s: (s / "state" / "cycle_01" / "meta.json").write_text("[]"), "state/cycle_01/meta.json", 0),
    (lambda s: truncate(s / "state" / "cycle_01" / "revealed.npy"), "state/cycle_01/revealed.npy", 0),
    (lambda s: (s / "state" / "cycle_01" / "torch_rng.pt").unlink(), "state/cycle_01/torch_rng.pt is missing", 0),
    (lambda s: truncate(s / "state" / "selections" / "cycle_01.npz"), "state/selections/cycle_01.npz", 0),
    (lambda s: (s / "metrics.csv").unlink(), "metrics.csv is missing", None),
])
def test_damaged_state_names_the_file_and_the_way_back(runs, tmp_path, damage, named, fallback):
    root, overrides = runs
    stopped = tmp_path / "stopped"
    shutil.copytree(root / "stopped", stopped)
    damage(stopped)
    before = snapshot(stopped)
    with pytest.raises(Refused, match=named) as caught:
        run(compose_cfg(*overrides, "resume=true"), stopped)
    assert snapshot(stopped) == before and "\n" not in str(caught.value)
    if fallback is None:
        assert "start again in another hydra.run.dir" in str(caught.value)
        return
    assert f"continue from it with resume={fallback}" in str(caught.value)
    assert run(compose_cfg(*overrides, f"resume={fallback}"), stopped)["status"] == "completed"
    pd.testing.assert_frame_equal(metrics(stopped), metrics(root / "whole"))


# ---- saved state read back as a whole: the data it was built on ------------------------------
def test_resuming_on_other_data_is_refused_and_the_same_data_moved_is_not(tmp_path):
    folder = folder_data(tmp_path, other=True)
    interrupted_run(compose_cfg(*folder, f"dataset.root={tmp_path / 'data'}"), tmp_path / "run", after_cycle=0)
    before = snapshot(tmp_path / "run")
    with pytest.raises(Refused, match=r"the data differ from those it was built on .*labels \(other content\)"):
        run(compose_cfg(*folder, f"dataset.root={tmp_path / 'other'}", "resume=true"), tmp_path / "run")
    assert snapshot(tmp_path / "run") == before

    shutil.copytree(tmp_path / "data", tmp_path / "moved")  # the same bytes, new times: a new decode
    shutil.rmtree(tmp_path / "data")
    summary = run(compose_cfg(*folder, f"dataset.root={tmp_path / 'moved'}", "resume=true"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["cycles_done"] == 2


# ---- saved state from an older alseg: keys added since -----------------------------------------
def saved_before(stopped: Path, *keys: str) -> None:
    """Rewrite the configs saved in `stopped` as an alseg that had none of `keys` wrote them."""
    for path in [stopped / "state" / "latest.json", *stopped.glob("state/cycle_*/meta.json")]:
        data = json.loads(path.read_text())
        for key in keys:
            *parents, name = key.split(".")
            config = data["config"]
            for parent in parents:
                config = config[parent]
            del config[name]
        path.write_text(json.dumps(data))


def test_a_run_saved_before_a_key_existed_resumes_while_the_key_keeps_the_old_behaviour(runs, tmp_path):
    root, overrides = runs
    stopped = tmp_path / "stopped"
    shutil.copytree(root / "stopped", stopped)
    saved_before(stopped, "train.ensemble", "train.ema", "callbacks", "dataset.eval_size")
    before = snapshot(stopped)
    with pytest.raises(Refused, match=r"train\.ensemble: not in the saved run, which ran as 1 -> 2"):
        run(compose_cfg(*overrides, "resume=true", "train.ensemble=2"), stopped)
    assert snapshot(stopped) == before
    assert run(compose_cfg(*overrides, "resume=true"), stopped)["status"] == "completed"
    pd.testing.assert_frame_equal(metrics(stopped), metrics(root / "whole"))


def test_every_key_added_since_the_state_format_says_how_older_runs_ran():
    """Each group option's keys at 6436b09, the first alseg that saved state as today (made by
    composing its conf/ option by option): every key conf/ has added since is in ADDED_KEYS."""
    reference = json.loads((Path(__file__).parent / "data" / "config_keys_6436b09.json").read_text())
    groups = {option.split("/")[0] for option in reference if option != "top"}
    unsaid = {}
    for option, keys in reference.items():  # "top": the keys outside every group
        group = option.split("/")[0]
        cfg = compose_cfg(*([] if option == "top" else [option.replace("/", "=")]))
        flat = flatten_config(OmegaConf.to_container(cfg, resolve=False))
        ours = {k for k in flat if k.split(".")[0] == group or option == "top" and k.split(".")[0] not in groups}
        added = ours - set(keys) - RESUME_FREE_KEYS - set(ADDED_KEYS)
        if added:
            unsaid[option] = sorted(added)
    assert not unsaid, f"add these to alseg.config.ADDED_KEYS: {unsaid}"


# ---- writes the disk refuses --------------------------------------------------------------------
class FullDisk:
    """A file whose writes stop with ENOSPC after a few bytes, like a disk that just filled."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_at(monkeypatch, name: str, nth: int, stays_full: bool) -> None:
    """The `nth` write of a file called `name` finds the disk full (and every write after it,
    with `stays_full`)."""
    seen = {"count": 0, "full": False}

    def open_(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        hit = Path(path).name.startswith(f".{name}.")
        seen["count"] += hit
        if hit and seen["count"] == nth or seen["full"] and stays_full:
            seen["full"] = True
            return FullDisk(f)
        return f

    monkeypatch.setattr(pool_module, "open", open_, raising=False)


@pytest.mark.parametrize("name,nth,stays_full", [
    ("summary.json", 1, False), ("metrics.csv", 2, True), ("model.pt", 1, False), ("latest.json", 2, True),
    ("revealed.npy", 3, False), ("cycle_01.png", 1, True), ("curve.png", 1, False), ("summary.json", 3, True),
])
def test_a_full_disk_is_one_message_and_leaves_no_partial_file(runs, tmp_path, monkeypatch, name, nth, stays_full):
    root, overrides = runs
    fill_disk_at(monkeypatch, name, nth, stays_full)
    with pytest.raises(AlsegError, match=rf"cannot write .*{name.replace('.', '[.]')}: No space left on device") as caught:
        run(compose_cfg(*overrides), tmp_path / "run")
    assert "\n" not in str(caught.value)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp") or p.stat().st_size == 0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == ("running" if stays_full else "failed")  # "failed" wherever it can be written

    monkeypatch.undo()  # room again: the run goes on where it stopped, to the same results
    assert run(compose_cfg(*overrides, "resume=true"), tmp_path / "run")["status"] == "completed"
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), metrics(root / "whole"))


def test_a_full_disk_through_the_cli_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "alseg.log").symlink_to("/dev/full")  # the log cannot be written either
    script = ("import sys, pytest; sys.path.insert(0, sys.argv[1]); import test_rundir, alseg.cli; "
              "mp = pytest.MonkeyPatch(); test_rundir.fill_disk_at(mp, 'metrics.csv', 1, True); "
              "alseg.cli.main(sys.argv[2:])")
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), "run", *SMALL, "hydra.run.dir=run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert result.returncode == 2, result.stderr
    assert errors == [f"error: cannot write {tmp_path / 'run' / 'metrics.csv'}: No space left on device; "
                      "make room (or allow writing) there, then continue with resume=true"]
    assert "Traceback" not in result.stdout + result.stderr


# ---- strict JSON ----------------------------------------------------------------------------
def test_a_nan_miou_is_written_as_null(make_cfg, tmp_path, monkeypatch):
    import alseg.experiment

    monkeypatch.setattr(alseg.experiment, "miou", lambda cm: float("nan"))
    run(make_cfg("budget.cycles=1", "train.epochs=1"), tmp_path)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_miou"] is None and summary["auc"] is None


# ---- sweeps end with their failure summary ----------------------------------------------------
def test_a_refused_sweep_names_every_job_and_changes_nothing(tmp_path):
    sweep = ["run", "-m", *SMALL, "budget.cycles=0", "seed=0,1", "hydra.sweep.dir=sweep"]
    assert alseg(tmp_path, *sweep).returncode == 0
    before = snapshot(tmp_path / "sweep")
    del before["multirun.yaml"]  # Hydra's own, rewritten by every launch
    again = alseg(tmp_path, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")  # jobs in other processes
    assert again.returncode == 2, again.stderr
    assert "2 run(s) of this sweep failed" in again.stderr and again.stderr.count("already holds a run") >= 2
    after = snapshot(tmp_path / "sweep")
    del after["multirun.yaml"]
    assert after == before


def test_an_interrupted_sweep_ends_with_its_failure_summary(tmp_path):
    job = alseg(tmp_path, "run", "-m", *SMALL, "train.epochs=3", "seed=0,1", "hydra.sweep.dir=sweep", wait=False)
    deadline = time.time() + 300
    first = lambda: list((tmp_path / "sweep").glob("*seed=0*/metrics.csv"))  # noqa: E731
    while time.time() < deadline and not (first() and len(first()[0].read_text().splitlines()) >= 2):
        time.sleep(0.1)
    assert job.poll() is None, "the sweep ended before it could be interrupted"
    job.send_signal(signal.SIGTERM)
    out = job.communicate(timeout=300)[0]
    assert job.returncode == 2, out
    assert "2 run(s) of this sweep failed" in out and "interrupted by SIGTERM" in out and "not run" in out
    assert "Traceback" not in out
    assert json.loads((first()[0].parent / "summary.json").read_text())["status"] == "interrupted"


def test_a_sweep_whose_job_hits_a_bug_finishes_the_others_and_exits_2(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from alseg.strategies import Strategy\n\n"
        "class Fine(Strategy):\n    def pixel_scores(self, probs):\n        return 1 - probs.max(dim=1).values\n\n"
        "class Broken(Fine):\n    def pixel_scores(self, probs):\n        raise RuntimeError('a bug in a strategy')\n")
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "alseg.cli", "run", "-m", *SMALL, "strategy=custom",
                             "strategy._target_=mine.Broken,mine.Fine", "hydra.sweep.dir=sweep"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "1 run(s) of this sweep failed" in result.stderr and "RuntimeError: a bug in a strategy" in result.stderr
    (fine,) = (tmp_path / "sweep").glob("*mine.Fine*")
    assert json.loads((fine / "summary.json").read_text())["status"] == "completed"
