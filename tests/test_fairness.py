"""Comparisons a reviewer accepts: independent MC passes, one network and one training length
for every strategy, k-center and hybrid sized right, and stochastic batch acquisition."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from alseg import experiment, selection
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.model import Segmenter, mc_passes
from alseg.pool import load_selections
from alseg.query import PoolScores
from alseg.strategies import STRATEGIES
from alseg.train import train_cycle

INF = math.inf


def _segmenter(dropout):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.create_model("FPN", encoder_name="tu-test_resnet", encoder_weights=None, classes=3,
                           decoder_pyramid_channels=32, decoder_segmentation_channels=32)
    return Segmenter(net, 32, dropout)


def _decoder_outputs(model, scope, x, passes=3):
    seen = []
    hook = model.net.decoder.register_forward_hook(lambda m, i, out: seen.append(out.clone()))
    with torch.inference_mode():
        features, logits = mc_passes(model, x, passes, scope)
        logits = [l.clone() for l in logits]
    hook.remove()
    return features, seen, logits


def test_head_scope_shares_deterministic_decoder_features_and_samples_only_the_head():
    model = _segmenter(0.5)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.net.decoder.modules())  # FPN's own dropout
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.inference_mode():
        deterministic = model.features(x)
    features, seen, logits = _decoder_outputs(model, "head", x)
    assert len(seen) == 1 and torch.equal(features, deterministic)  # one decoder pass, its dropout off
    assert not torch.equal(logits[0], logits[1])  # the head's dropout is sampled per pass


def test_full_scope_reruns_the_whole_network_with_every_dropout_sampled():
    _, seen, logits = _decoder_outputs(_segmenter(None), "full", torch.randn(2, 3, 32, 32))
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1]) and not torch.equal(logits[0], logits[1])


def test_head_scope_without_model_dropout_is_an_error_not_a_zero_score():
    with pytest.raises(AlsegError, match="model.dropout"):
        _decoder_outputs(_segmenter(None), "head", torch.randn(2, 3, 32, 32))


def test_bald_of_identical_passes_is_zero_and_kl_consensus_equals_bald():
    torch.manual_seed(0)
    probs = [torch.softmax(torch.randn(2, 4, 3, 5), dim=1) for _ in range(6)]
    bald = STRATEGIES["bald"](OmegaConf.create({"name": "bald"}))
    kl = STRATEGIES["kl_consensus"](OmegaConf.create({"name": "kl_consensus"}))
    assert torch.allclose(bald.score_passes(iter([probs[0]] * 6)), torch.zeros(2, 3, 5), atol=1e-6)
    assert torch.allclose(bald.score_passes(iter(probs)), kl.score_passes(iter(probs)), atol=1e-6)


def test_cycle_zero_of_random_and_bald_trains_the_same_network(make_cfg, tmp_path):
    common = ["budget.cycles=0", "train.epochs=1"]
    run(make_cfg("strategy=random", *common), tmp_path / "random")
    run(make_cfg("strategy=bald", "strategy.passes=2", *common), tmp_path / "bald")
    rows = [pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["train_s", "query_s"]) for name in ("random", "bald")]
    pd.testing.assert_frame_equal(*rows)
    weights = [torch.load(tmp_path / name / "model.pt") for name in ("random", "bald")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _first_training(make_cfg, out, monkeypatch, *overrides) -> tuple[list, dict, torch.Tensor, pd.Series]:
    """A random run's selections, its weights and training generator as cycle 0's training
    starts, and its mIoU per cycle."""
    seen = []

    def train_cycle_(model, images, targets, cfg, generator, *args, **kwargs):
        seen.append(({k: v.clone() for k, v in model.state_dict().items()}, generator.get_state()))
        return train_cycle(model, images, targets, cfg, generator, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_cycle", train_cycle_)
    run(make_cfg("strategy=random", "budget.cycles=2", "train.epochs=1", *overrides), out)
    return load_selections(out), *seen[0], pd.read_csv(out / "metrics.csv")["miou"]


def test_train_seed_varies_the_training_apart_from_the_selection(make_cfg, tmp_path, monkeypatch):
    base = _first_training(make_cfg, tmp_path / "base", monkeypatch, "seed=0", "train.seed=5")
    other_training = _first_training(make_cfg, tmp_path / "training", monkeypatch, "seed=0", "train.seed=6")
    other_labels = _first_training(make_cfg, tmp_path / "labels", monkeypatch, "seed=1", "train.seed=5")
    asks = lambda a, b: all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))  # noqa: E731
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    # another training seed: the same pixels asked in every cycle, other weights, batches and results
    assert asks(base[0], other_training[0])
    assert not same(base[1], other_training[1]) and not torch.equal(base[2], other_training[2])
    assert not base[3].equals(other_training[3])
    # another selection seed: other pixels, the same initial weights and training stream
    assert not asks(base[0][:1], other_labels[0][:1])
    assert same(base[1], other_labels[1]) and torch.equal(base[2], other_labels[2])


def test_iterations_train_the_same_number_of_steps_however_the_labels_are_spread():
    torch.manual_seed(0)
    model = _segmenter(0.2)
    images = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8)
    few, many = np.full((8, 32, 32), 255, np.uint8), np.full((8, 32, 32), 255, np.uint8)
    few[:2, :4, :4] = 1      # two images hold labels
    many[:, :2, :2] = 1      # every image holds labels
    cfg = OmegaConf.create({"epochs": None, "iterations": 5, "batch_size": 4, "optimizer": "adam", "lr": 1e-3,
                            "weight_decay": 0.0, "schedule": "constant", "augment": {"hflip": False}})
    g = torch.Generator().manual_seed(0)
    assert train_cycle(model, images, few, cfg, g) == 5 == train_cycle(model, images, many, cfg, g)
    epochs = OmegaConf.merge(cfg, {"epochs": 1, "iterations": None})
    assert train_cycle(model, images, few, epochs, g) == 1 and train_cycle(model, images, many, epochs, g) == 2


def test_metrics_record_train_steps_and_exactly_one_training_length_is_set(make_cfg, tmp_path):
    run(make_cfg("train.epochs=null", "train.iterations=3", "budget.cycles=1"), tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["train_steps"].tolist() == [3, 3]
    with pytest.raises(AlsegError, match="train.iterations"):
        run(make_cfg("train.iterations=3"), tmp_path / "both")


def _pool(scores, embeddings):
    n, r = scores.shape
    return PoolScores(scores, candidates=torch.arange(r).expand(n, r).clone(), embeddings=embeddings,
                      labelled=torch.zeros(n, 1, embeddings.shape[2]), labelled_valid=torch.zeros(n, 1, dtype=torch.bool))


def test_hybrid_candidates_are_counted_in_regions_the_click_budget_buys():
    torch.manual_seed(0)
    scores = torch.linspace(1, 0, 100).view(1, 100)          # region i is the (i+1)-th most uncertain
    pool = _pool(scores, torch.randn(1, 100, 8))
    costs = torch.full((1, 100), 4.0)                        # precise costs: 4 clicks per region
    budget = selection.Budget(20.0, per_image=False, costs=costs)  # 20 clicks buy 5 regions
    ctx = selection.Context(pool, budget, torch.Generator().manual_seed(0), 3)
    picked = torch.isfinite(selection.KCenter(4)(scores, ctx)).nonzero()[:, 1]
    assert len(picked) > 0 and picked.max() < 4 * 5          # only among the 20 best candidates


@pytest.mark.parametrize("strategy", ["coreset", "hybrid"])
@pytest.mark.parametrize("budget", [["budget.initial=3", "budget.per_cycle=4"],
                                    ["budget=clicks", "budget.initial=30", "budget.per_cycle=50"]])
def test_k_center_never_asks_a_region_twice_when_the_pool_runs_out(make_cfg, tmp_path, strategy, budget):
    # 6 boxes of 16x16 per 32x48 image, 12 images: cycle 1 wants more than is left
    cfg = make_cfg(f"strategy={strategy}", "region=box", "region.size=16", "budget.cycles=3", "train.epochs=1", *budget)
    summary = run(cfg, tmp_path / "run")
    pairs = [p for images, regions in load_selections(tmp_path / "run") for p in zip(images.tolist(), regions.tolist())]
    assert len(pairs) == len(set(pairs)) == 72
    assert summary["budget_exhausted"] is True and summary["status"] == "completed"


def _draws(scores, sampling, beta, count, k=1, per_image=True):
    strategy = STRATEGIES["margin"](OmegaConf.create({"name": "margin", "sampling": sampling, "beta": beta}))
    pool = PoolScores(scores)
    g = torch.Generator().manual_seed(0)
    return [selection.choose(strategy, pool, selection.Budget(k, per_image), g, 2) for _ in range(count)]


@pytest.mark.parametrize("sampling, weight", [
    ("power", lambda s, rank: s ** 2.0),
    ("softmax", lambda s, rank: np.exp(2.0 * s)),
    ("softrank", lambda s, rank: rank ** -2.0),
])
def test_sampling_frequencies_follow_the_formula(sampling, weight):
    s = np.array([0.1, 0.4, 0.2, 0.8, 0.5])
    rank = np.array([5, 3, 4, 1, 2], dtype=float)
    picks = [int(sel.regions[0]) for sel in _draws(torch.tensor(s[None], dtype=torch.float32), sampling, 2.0, 4000)]
    observed = np.bincount(picks, minlength=5)
    expected = weight(s, rank) / weight(s, rank).sum() * len(picks)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_a_large_beta_gives_topks_order_and_asked_regions_are_never_drawn():
    scores = torch.tensor([[0.3, 0.9, -INF, 0.5, 0.7, 0.1]])
    for sampling in ("power", "softmax", "softrank"):
        for sel in _draws(scores, sampling, 1e4, 20, k=3):
            assert sel.regions.tolist() == [1, 4, 3]
        for sel in _draws(scores, sampling, 1.0, 50, k=5):
            assert 2 not in sel.regions.tolist() and len(set(sel.regions.tolist())) == 5


def test_equal_scores_are_tied_at_random_not_by_row_order():
    scores = torch.zeros(1, 50)
    firsts = {int(sel.regions[0]) for sel in _draws(scores, "topk", 1.0, 30)}
    assert len(firsts) > 5


@pytest.mark.parametrize("sampling", ["power", "softrank"])
def test_sampling_runs_with_every_budget_and_region_type(make_cfg, tmp_path, sampling):
    for name, extra in {"pixel": [], "box": ["region=box", "region.size=8", "budget=clicks", "budget.initial=20",
                                             "budget.per_cycle=15", "annotation=precise"]}.items():
        run(make_cfg("strategy=entropy", f"strategy.sampling={sampling}", "strategy.beta=2", "budget.cycles=1",
                     "train.epochs=1", *extra), tmp_path / name)
        pairs = [p for images, regions in load_selections(tmp_path / name) for p in zip(images.tolist(), regions.tolist())]
        assert len(pairs) == len(set(pairs))
