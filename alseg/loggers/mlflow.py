"""logger=mlflow: one MLflow run per alseg run, in the experiment `logger.experiment`, at
`logger.tracking_uri` (default: the SQLite store outputs/mlflow.db under the working folder,
artefacts beside it in outputs/mlartifacts). A sweep's jobs share the tag `alseg.sweep` (the
sweep's folder). Metrics keep their metrics.csv names with clicks as the step."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from alseg.callbacks import RunInfo
from alseg.loggers.base import Tracker, run_name

# An unreachable server costs seconds, not the minutes of MLflow's default retries.
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
    os.environ.setdefault(_key, _value)
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
SQLITE = "sqlite:///"


def default_uri() -> str:
    return SQLITE + str(Path("outputs").resolve() / "mlflow.db")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, one process at a time creates its tables and experiments (the jobs
    of a parallel sweep start together)."""
    if not uri.startswith(SQLITE):
        yield
        return
    db = Path(uri.removeprefix(SQLITE))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment `name`, created if new (with a SQLite store, its artefacts beside the file)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith(SQLITE):
        location = (Path(uri.removeprefix(SQLITE)).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


class MLflowTracker(Tracker):
    name = "mlflow"

    def open(self, run: RunInfo, run_id: str | None, group: str | None) -> str | None:
        cfg = run.cfg.logger
        uri = cfg.get("tracking_uri") or default_uri()
        with store_lock(uri):
            self.client = MlflowClient(uri)
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
            else:
                tags = {"alseg.run_dir": str(run.out.resolve()), **({"alseg.sweep": group} if group else {})}
                run_id = self.client.create_run(experiment_id(self.client, cfg.experiment, uri), run_name=run_name(run),
                                                tags=tags).info.run_id
        self.run_id = run_id
        return run_id

    def log_params(self, params: dict) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, values: dict[str, float], step: int, axis: str) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for tag, path in images.items():
            self.client.log_artifact(self.run_id, str(path), "queries" if tag == "queries" else None)

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str, message: str | None, final: dict[str, float]) -> None:
        if final:
            self.log_metrics(final, 0, "final")
        self.client.set_tag(self.run_id, "alseg.status", status)
        if message:
            self.client.set_tag(self.run_id, "alseg.message", message)
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
