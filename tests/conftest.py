"""Shared fixtures: configs composed from the packaged YAML, shrunk to run in seconds on a CPU."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

TINY = [
    "dataset.num_train=12",
    "dataset.num_val=6",
    "dataset.size=[32,48]",
    "train.epochs=2",
    "train.batch_size=6",
    "budget.initial=3",
    "budget.per_cycle=3",
    "budget.cycles=2",
    "device=cpu",
    "overlay_images=2",
]


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    """compose(overrides) -> a tiny config whose caches live in tmp_path."""
    monkeypatch.setenv("ALSEG_CACHE", str(tmp_path / "cache"))

    def make(*overrides: str):
        with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*TINY, *overrides])

    return make
