"""Scores that cannot rank and diverged training stop a run with a message; NaN never ranks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from alseg import query
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.regions import Regions
from alseg.strategies import STRATEGIES


@pytest.mark.parametrize("strategy", ["bald", "variation_ratio", "vote_entropy", "kl_consensus"])
def test_one_mc_pass_cannot_rank_and_is_refused_before_any_work(make_cfg, tmp_path, strategy):
    with pytest.raises(AlsegError, match="strategy.passes"):
        run(make_cfg(f"strategy={strategy}", "strategy.passes=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_diverged_training_fails_the_run_instead_of_exhausting_the_pool(make_cfg, tmp_path):
    with pytest.raises(AlsegError, match="training diverged in cycle 0"):
        run(make_cfg("strategy=margin", "train.lr=1e12", "train.epochs=3"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["message"]


class NaNModel(torch.nn.Module):
    def forward(self, x):
        return torch.full((len(x), 2, *x.shape[-2:]), float("nan"))


def test_nan_scores_are_an_error_not_unaskable_regions():
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
    revealed = torch.full((2, 4, 4), 255, dtype=torch.uint8)
    strategy = STRATEGIES["margin"](OmegaConf.create({"name": "margin"}))
    with pytest.raises(AlsegError, match="diverged"):
        query.score_pool(strategy, [NaNModel()], images, labels, revealed, Regions("pixel", None, np.array([16, 16])),
                         torch.Generator().manual_seed(0), 2, 2)
