"""Experiment trackers against the real libraries: MLflow (a local SQLite store and a real
`mlflow server`), TensorBoard event files read back by tensorboard's reader, wandb offline
files parsed; resume continues the tracker run; a tracker that cannot be reached costs one
warning; a missing package is one error before any work."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

import alseg.experiment
from alseg.errors import AlsegError
from alseg.experiment import run
from conftest import TINY

QUICK = [o for o in TINY if not o.startswith("budget.cycles")] + ["budget.cycles=1", "train.epochs=null",
                                                                   "train.iterations=2"]


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*QUICK, *overrides])


def client_of(uri: str):
    """An MLflow client of the store at `uri`; the test is skipped where mlflow is not installed."""
    return pytest.importorskip("mlflow").MlflowClient(uri)


def runs_of(uri: str, experiment: str = "alseg-synthetic") -> list:
    client = client_of(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def assert_curve(points: list[tuple], metrics: pd.DataFrame) -> None:
    """(clicks, mIoU) points as a tracker holds them equal metrics.csv's (float32 in TensorBoard)."""
    assert [int(x) for x, _ in points] == list(metrics["clicks"])
    assert [y for _, y in points] == pytest.approx(list(metrics["miou"]), rel=1e-6)


def check_mlflow_run(uri: str, found, out: Path) -> None:
    """A finished MLflow run holding the run's config, its mIoU history with clicks as the
    steps, training losses, and the files a run writes."""
    client = client_of(uri)
    metrics = pd.read_csv(out / "metrics.csv")
    assert found.info.status == "FINISHED" and found.data.tags["alseg.status"] == "completed"
    assert found.data.params["strategy.name"] == "random" and found.data.params["train.iterations"] == "2"
    history = client.get_metric_history(found.info.run_id, "miou")
    assert_curve([(m.step, m.value) for m in history], metrics)
    iou = [c for c in metrics if c.startswith("iou_")][0]
    assert [m.step for m in client.get_metric_history(found.info.run_id, iou)] == list(metrics["clicks"])
    losses = client.get_metric_history(found.info.run_id, "train/loss")
    steps = [m.step for m in losses]  # per epoch, counted on across cycles and sessions
    assert steps == sorted(set(steps)) and steps[-1] == metrics["train_steps"].sum() and len(steps) >= len(metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert found.data.metrics["final_miou"] == pytest.approx(summary["final_miou"])
    assert found.data.metrics.get("auc") == (None if summary["auc"] is None else pytest.approx(summary["auc"]))
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    queries = {a.path for a in client.list_artifacts(found.info.run_id, "queries")}
    assert {"curve.png", "model.pt", "queries"} <= files
    assert queries == {f"queries/cycle_{c:02d}.png" for c in metrics["cycle"]}


class StopAt:
    """Interrupts `_learn` in one cycle, as Ctrl-C would."""

    def __init__(self, cycle: int):
        self.cycle, self.learn = cycle, alseg.experiment._learn

    def __call__(self, loop, cycle, query_s):
        if cycle == self.cycle:
            raise KeyboardInterrupt
        return self.learn(loop, cycle, query_s)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run with all three trackers, interrupted in cycle 1 and resumed to its end; the MLflow
    status seen in between."""
    for package in ("mlflow", "tensorboard", "wandb"):
        pytest.importorskip(package)
    tmp = tmp_path_factory.mktemp("tracked")
    env = {"ALSEG_CACHE": str(tmp / "cache"), "WANDB_SILENT": "true", "WANDB_DIR": str(tmp),
           "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    cfg = compose_cfg("logger=[tensorboard,mlflow,wandb]", f"logger.tracking_uri={uri}")
    out = tmp / "run"
    learn = alseg.experiment._learn
    try:
        alseg.experiment._learn = StopAt(1)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
        alseg.experiment._learn = learn
        (first,) = runs_of(uri)
        ids = json.loads((out / "state" / "trackers.json").read_text())
        cfg.resume = True
        run(cfg, out)
    finally:
        alseg.experiment._learn = learn
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {"uri": uri, "out": out, "interrupted": first, "ids": ids}


def test_mlflow_local_store_holds_config_history_and_artefacts_and_resume_continues_the_run(tracked):
    first = tracked["interrupted"]
    assert first.info.status == "KILLED" and "interrupted" in first.data.tags["alseg.message"]
    assert tracked["ids"]["mlflow"] == first.info.run_id
    (found,) = runs_of(tracked["uri"])  # still one run, finished, with both sessions' cycles
    check_mlflow_run(tracked["uri"], found, tracked["out"])


def test_tensorboard_events_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["out"] / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    metrics = pd.read_csv(tracked["out"] / "metrics.csv")
    miou = events.Scalars("miou")
    assert_curve([(e.step, e.value) for e in miou], metrics)
    assert {"train/loss", "train/lr", "pixel_acc"} <= set(events.Tags()["scalars"])
    assert sorted(e.step for e in events.Images("queries")) == list(metrics["cycle"])
    assert [e.step for e in events.Images("curve")] == [len(metrics)]
    assert "status" in " ".join(events.Tags()["tensors"])


def wandb_records(path: Path):
    """The records of a .wandb file (a LevelDB-style log of protobuf records: 7-byte file
    header, 32 KiB blocks, each record chunk with a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of a block is padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_offline_files_hold_config_history_and_exit(tracked):
    files = sorted((tracked["out"] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # the interrupted session and the resumed one, one wandb run
    deadline = time.monotonic() + 20  # wandb's service may still be flushing the last file
    while not any(r.HasField("exit") for r in wandb_records(files[-1])) and time.monotonic() < deadline:
        time.sleep(0.5)
    records = [r for f in files for r in wandb_records(f)]
    assert {r.run.run_id for r in records if r.HasField("run")} == {tracked["ids"]["wandb"]}
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    config.update({u.key: json.loads(u.value_json) for r in records if r.HasField("run") for u in r.run.config.update})
    assert config["strategy.name"] == "random" and config["budget.cycles"] == 1
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    metrics = pd.read_csv(tracked["out"] / "metrics.csv")
    assert_curve([(h["clicks"], h["miou"]) for h in history if "miou" in h], metrics)
    exits = [r.exit.exit_code for r in records if r.HasField("exit")]
    assert exits == [1, 0]  # interrupted, then completed


def test_a_failed_run_is_marked_failed_with_its_message(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("ALSEG_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def fail(loop, cycle, query_s):
        raise AlsegError("the oracle broke")

    monkeypatch.setattr(alseg.experiment, "_learn", fail)
    with pytest.raises(AlsegError):
        run(compose_cfg("logger=mlflow", f"logger.tracking_uri={uri}"), tmp_path / "run")
    (found,) = runs_of(uri)
    assert found.info.status == "FAILED" and found.data.tags["alseg.message"] == "the oracle broke"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracker_costs_one_warning_and_the_run_completes(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("ALSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = compose_cfg("logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{free_port()}", "budget.cycles=0")
    assert run(cfg, tmp_path / "run")["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "logger=mlflow stopped tracking this run" in warnings[0]
    assert (tmp_path / "run" / "metrics.csv").exists() and (tmp_path / "run" / "model.pt").exists()


def test_a_missing_tracker_package_is_one_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.delitem(sys.modules, "alseg.loggers.wandb", raising=False)
    with pytest.raises(AlsegError, match=r'logger=wandb needs the wandb package.*pip install "alseg\[tracking\]"'):
        run(compose_cfg("logger=[tensorboard,wandb]"), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]  # nothing else written


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port with a SQLite backend, stopped afterwards."""
    pytest.importorskip("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), cwd=tmp_path,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner: a quicker start
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # seconds on a busy machine; a few when idle
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_joblib_sweep_of_two_jobs_logs_two_runs_in_one_group_to_an_mlflow_server(mlflow_server, tmp_path):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "alseg.cli", "run", "-m", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", *QUICK, "budget.cycles=0", "seed=0,1", "logger=mlflow",
                             f"logger.tracking_uri={mlflow_server}", "hydra.sweep.dir=sweep"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" not in result.stdout + result.stderr
    found = runs_of(mlflow_server)
    assert sorted(r.data.params["seed"] for r in found) == ["0", "1"]
    assert {r.data.tags["alseg.sweep"] for r in found} == {str((tmp_path / "sweep").resolve())}
    for one in found:
        check_mlflow_run(mlflow_server, one, Path(one.data.tags["alseg.run_dir"]))
    assert not any("logger" in p.name for p in (tmp_path / "sweep").iterdir())  # folders not named by it


def test_logger_keys_are_checked_and_result_neutral(tmp_path):
    from alseg.config import check_config
    from alseg.results import differing_keys, load_runs
    from alseg.state import config_differences
    from omegaconf import OmegaConf

    for option in ("none", "tensorboard", "mlflow", "wandb", "[tensorboard,mlflow,wandb]"):
        check_config(compose_cfg(f"logger={option}"))
    with pytest.raises(AlsegError, match="logger.mode must be online or offline, got \"cloud\""):
        check_config(compose_cfg("logger=wandb", "logger.mode=cloud"))
    plain, tracked = (OmegaConf.to_container(compose_cfg(*o), resolve=True)
                      for o in ([], ["logger=[tensorboard,mlflow,wandb]", "logger.dir=x", "logger.project=p"]))
    assert config_differences(plain, tracked) == []  # a resumed run may add or change trackers
    for name, config in (("a", plain), ("b", tracked)):
        (tmp_path / name).mkdir()
        pd.DataFrame({"cycle": [0], "clicks": [10], "miou": [50.0]}).to_csv(tmp_path / name / "metrics.csv", index=False)
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": "completed", "config": config}))
    assert differing_keys(load_runs(tmp_path)) == []  # one group in `alseg plot`


def test_tensorboard_folder_is_the_run_folder_or_below_logger_dir(tmp_path):
    pytest.importorskip("tensorboard")
    from alseg.callbacks import RunInfo
    from alseg.loggers.tensorboard import log_dir

    out = tmp_path / "sweep" / "seed=1"
    assert log_dir(RunInfo(compose_cfg("logger=tensorboard"), out)) == out / "tensorboard"
    shared = compose_cfg("logger=tensorboard", f"logger.dir={tmp_path / 'tb'}")
    assert log_dir(RunInfo(shared, out)) == tmp_path / "tb" / "sweep" / "seed=1"
