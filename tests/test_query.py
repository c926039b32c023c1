import math
from dataclasses import astuple

import numpy as np
import torch
from omegaconf import OmegaConf

from alseg import query, selection
from alseg.regions import Regions
from alseg.strategies import STRATEGIES

INF = math.inf


def test_select_per_image_takes_the_k_best_askable_regions():
    scores = torch.tensor([[0.1, 0.9, -INF, 0.5], [-INF, -INF, 0.2, -INF]])
    images, regions = astuple(selection.select_per_image(scores, 2))
    assert sorted(zip(images.tolist(), regions.tolist())) == [(0, 1), (0, 3), (1, 2)]


def test_select_by_clicks_stops_once_the_budget_is_reached():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, -INF]])
    costs = torch.tensor([[3.0, 4.0, 5.0, 1.0, 1.0]])
    images, regions = astuple(selection.select_by_clicks(scores, costs, budget=8))
    # 3 -> 7 (< 8, so one more) -> 12: overshoots by less than one region's cost, then stops
    assert regions.tolist() == [0, 1, 2]
    spent = costs[0, regions].sum().item()
    assert 8 <= spent < 8 + costs.max().item()


def test_select_by_clicks_with_unit_costs_is_exact():
    scores = torch.rand(3, 50)
    images, regions = astuple(selection.select_by_clicks(scores, None, budget=20))
    assert len(images) == 20
    chosen = set(zip(images.tolist(), regions.tolist()))
    order = scores.flatten().argsort(descending=True)[:20]
    assert chosen == {(int(i) // 50, int(i) % 50) for i in order}


def test_balance_classes_weights_by_exp_of_class_share():
    scores = torch.tensor([[1.0, 3.0, 5.0, -INF]])
    classes = torch.tensor([[0, 0, 1, 1]])
    out = selection.balance_classes(scores, classes, 2)
    # normalised 0, 0.5, 1; class 0 predicted for 2 of 3 askable regions, class 1 for 1 of 3
    expected = torch.tensor([0.0, 0.5 * math.exp(-2 / 3), 1.0 * math.exp(-1 / 3)])
    assert torch.allclose(out[0, :3], expected)
    assert out[0, 3] == -INF


def test_top_percent_samples_only_among_each_images_most_informative():
    g = torch.Generator().manual_seed(0)
    scores = torch.arange(200, dtype=torch.float32).view(2, 100)
    scores[1, 50:] = -INF  # image 1 has 50 askable regions: its top 10% is 5 regions
    out = selection.sample_top_percent(scores, 0.1, g)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == list(range(90, 100))
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == list(range(45, 50))


class FixedModel(torch.nn.Module):
    """Returns the same logits for every image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(len(x), -1, -1, -1)


def test_score_pool_averages_over_regions_and_blocks_asked_ones():
    # 1 image of 2x3, 2 classes; left column region 0, the rest region 1
    p1 = torch.tensor([[0.5, 0.9, 0.9], [0.7, 0.9, 0.6]])
    logits = torch.stack([torch.log(p1), torch.log(1 - p1)]).unsqueeze(0)
    maps = np.array([[[0, 1, 1], [0, 1, 1]]])
    regions = Regions("test", maps, np.array([2]))
    images = torch.zeros(1, 2, 3, 3, dtype=torch.uint8)
    labels = np.zeros((1, 2, 3), np.uint8)
    revealed = np.full((1, 2, 3), 255, np.uint8)
    strategy = STRATEGIES["least_confidence"](OmegaConf.create({"name": "least_confidence"}))
    g = torch.Generator().manual_seed(0)
    scores = query.score_pool(strategy, [FixedModel(logits)], images, torch.from_numpy(labels), torch.from_numpy(revealed), regions, g, 4, 2).scores
    assert torch.allclose(scores, torch.tensor([[(0.5 + 0.3) / 2, (0.1 + 0.1 + 0.1 + 0.4) / 4]]))
    revealed[0, 1, 2] = 3  # one pixel of region 1 already revealed -> region 1 not askable
    scores = query.score_pool(strategy, [FixedModel(logits)], images, torch.from_numpy(labels), torch.from_numpy(revealed), regions, g, 4, 2).scores
    assert scores[0, 1] == -INF and torch.isfinite(scores[0, 0])


def test_score_pool_pixels_skip_void_and_asked_pixels():
    regions = Regions("pixel", None, np.array([4, 4]))
    images = torch.zeros(2, 2, 2, 3, dtype=torch.uint8)
    labels = np.array([[[0, 255], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    revealed = np.full((2, 2, 2), 255, np.uint8)
    revealed[1, 0, 0] = 0
    g = torch.Generator().manual_seed(0)
    scores = query.score_pool(STRATEGIES["random"](OmegaConf.create({"name": "random"})), [], images, torch.from_numpy(labels), torch.from_numpy(revealed), regions, g, 1, 2).scores
    assert torch.isfinite(scores).tolist() == [[True, False, True, True], [False, True, True, True]]


def test_k_center_picks_the_point_farthest_from_the_labelled_set_then_from_the_picks():
    emb = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [9.0, 0.0], [5.0, 5.0]]])
    valid = torch.tensor([[False, True, True, True, True]])  # point 0 is already labelled
    labelled = torch.tensor([[[0.0, 0.0]]])
    picks = selection.k_center(emb, valid, labelled, torch.tensor([[True]]), 3)
    # farthest from 0: point 2 (10); then farthest from {0, 2}: point 4 (5,5: 7.07 vs 5.83...)
    assert picks.tolist() == [[2, 4, 1]]


def test_mc_scoring_varies_only_through_dropout():
    from alseg.model import Segmenter, enable_dropout
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.create_model("FPN", encoder_name="tu-test_resnet", encoder_weights=None, classes=3,
                           decoder_pyramid_channels=32, decoder_segmentation_channels=32)
    model = Segmenter(net, 32, dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))  # eval: deterministic
        assert enable_dropout(model) >= 1
        assert not torch.equal(model(x), model(x))  # only dropout is stochastic ...
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn and not any(m.training for m in bn)  # ... batch norm stays in eval mode


def test_a_users_modifier_runs_after_the_built_in_ones(tmp_path, monkeypatch):
    (tmp_path / "flip_modifier.py").write_text(
        "class Flip:\n"
        "    @classmethod\n"
        "    def build(cls, cfg, strategy):\n"
        "        return cls()\n"
        "    def __call__(self, scores, ctx):\n"
        "        return -scores\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"name": "margin", "modifiers": ["flip_modifier.Flip"]})
    strategy = STRATEGIES["margin"](cfg)
    assert [type(m).__name__ for m in selection.modifiers_for(strategy)] == ["Flip"]
    scores = torch.tensor([[0.1, 0.9, 0.5]])
    chosen = selection.choose(strategy, query.PoolScores(scores), selection.Budget(1, True), torch.Generator(), 2)
    assert chosen.regions.tolist() == [0]  # the lowest score wins once flipped
