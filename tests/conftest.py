"""Shared fixtures: configs composed from the packaged YAML, shrunk to run in seconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_module

if os.environ.get("PYTEST_XDIST_WORKER"):  # under `make test`'s workers: one thread each, also
    os.environ["OMP_NUM_THREADS"] = "1"   # for the CLI runs they start, so that the workers do
    torch.set_num_threads(1)              # not take each other's cores

# Keys only dataset=synthetic has; added unless the overrides choose another dataset.
SYNTHETIC = [
    "dataset.num_train=12",
    "dataset.num_val=6",
    "dataset.size=[32,48]",
]
# Keys every config has.
COMMON = [
    "train.epochs=2",
    "train.batch_size=6",
    "budget.initial=3",
    "budget.per_cycle=3",
    "budget.cycles=2",
    "device=cpu",
    "overlay_images=2",
]
TINY = [*SYNTHETIC, *COMMON]


def _other_dataset(overrides) -> bool:
    return any(o.startswith("dataset=") and o != "dataset=synthetic" for o in overrides)


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    """compose(overrides) -> a tiny config whose caches live in tmp_path.

    With `dataset=NAME` (not synthetic) among the overrides, only the COMMON keys are added.
    """
    monkeypatch.setenv("ALSEG_CACHE", str(tmp_path / "cache"))

    def make(*overrides: str):
        base = COMMON if _other_dataset(overrides) else TINY
        with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*base, *overrides])

    return make
