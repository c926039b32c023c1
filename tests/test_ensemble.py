"""train.ensemble=K: K networks from different initial weights, evaluated and scored as the
mean of their softmax."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg import query
from alseg.data import load_dataset
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.metrics import miou
from alseg.model import Ensemble, SplitEnsemble, build_model, ensemble
from alseg.regions import Regions
from alseg.strategies import STRATEGIES
from alseg.train import evaluate
from test_query import FixedModel  # the same logits for every image


def _small(seed, classes=3):
    torch.manual_seed(seed)
    cfg = OmegaConf.create({"arch": "FPN", "encoder": "tu-test_resnet", "encoder_weights": None, "dropout": 0.2,
                            "kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}})
    return build_model(cfg, classes).eval()


def test_the_ensemble_predicts_the_mean_of_its_members_softmax():
    members = [_small(0), _small(1)]
    model = ensemble(members)
    assert isinstance(model, SplitEnsemble) and ensemble(members[:1]) is members[0]
    x = torch.rand(2, 3, 40, 56)
    with torch.inference_mode():
        mean = torch.stack([m(x).softmax(dim=1) for m in members]).mean(dim=0)
        torch.testing.assert_close(model(x).softmax(dim=1), mean)
        torch.testing.assert_close(model.head(model.features(x), (40, 56)), model(x))
        assert not torch.allclose(members[0](x).softmax(dim=1), mean, atol=1e-3)  # the members differ


def test_members_without_features_make_a_plain_ensemble():
    a, b = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    model = ensemble([FixedModel(a), FixedModel(b)])
    assert type(model) is Ensemble and not hasattr(model, "features")
    torch.testing.assert_close(model(torch.zeros(1, 3, 2, 2)).softmax(dim=1), (a.softmax(1) + b.softmax(1)) / 2)


def test_margin_ranks_by_the_ensembles_mean_not_by_its_members_mean_margin():
    # pixel 0: both members sure, of different classes (the mean is a tie); pixel 1: both unsure alike
    a = torch.tensor([[0.98, 0.02], [0.6, 0.4]]).log().T.reshape(1, 2, 1, 2)
    b = torch.tensor([[0.02, 0.98], [0.6, 0.4]]).log().T.reshape(1, 2, 1, 2)
    strategy = STRATEGIES["margin"](OmegaConf.create({"name": "margin", "aggregate": "mean", "exclude_void": True}))
    images, labels = torch.zeros(1, 1, 2, 3, dtype=torch.uint8), torch.zeros(1, 1, 2, dtype=torch.uint8)
    revealed = torch.full((1, 1, 2), 255, dtype=torch.uint8)
    scores = query.score_pool(strategy, [ensemble([FixedModel(a), FixedModel(b)])], images, labels, revealed,
                              Regions("pixel", None, np.array([2])), torch.Generator().manual_seed(0), 1, 2).scores
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.8]]))  # 1 - |p1 - p2| of the mean


def test_a_run_trains_every_member_and_evaluates_their_mean(make_cfg, tmp_path):
    cfg = make_cfg("strategy=margin", "train.ensemble=2", "budget.cycles=1", "save_model=last")
    run(cfg, tmp_path / "run")
    data = load_dataset(cfg.dataset)
    members = [_small(0, data.num_classes), _small(0, data.num_classes)]
    for member, name in zip(members, ("model.pt", "model.member_1.pt")):
        member.load_state_dict(torch.load(tmp_path / "run" / name))
    assert not torch.equal(*(m.net.segmentation_head[0].weight for m in members))  # different initial weights
    val = [torch.from_numpy(a) for a in (data.val.images, data.val.labels)]
    row = pd.read_csv(tmp_path / "run" / "metrics.csv").iloc[-1]
    assert miou(evaluate(ensemble(members), *val, data.num_classes, 8)) == pytest.approx(row["miou"])
    assert miou(evaluate(members[0], *val, data.num_classes, 8)) != pytest.approx(row["miou"])


def test_a_committee_of_models_with_an_ensemble_is_its_members(make_cfg, tmp_path):
    overrides = ["strategy=vote_entropy", "strategy.committee=models", "budget.cycles=1"]
    with pytest.raises(AlsegError, match="set strategy.members=2"):
        run(make_cfg(*overrides, "strategy.members=3", "train.ensemble=2"), tmp_path / "mismatch")
    run(make_cfg(*overrides, "strategy.members=2", "train.ensemble=2"), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "state" / "cycle_01").glob("*.pt")) == [
        "member_1.pt", "model.pt", "torch_rng.pt"]
