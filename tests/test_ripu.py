"""strategy=ripu (Xie et al., CVPR 2022): region impurity x prediction uncertainty, by hand."""
import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.strategies import STRATEGIES


def ripu(**cfg):
    return STRATEGIES["ripu"](OmegaConf.create({"name": "ripu", **cfg}))


def h(*p):
    """Entropy of a distribution given by hand."""
    return -sum(q * math.log(q) for q in p if q > 0)


def checkerboard() -> tuple[torch.Tensor, torch.Tensor]:
    """A 4x4 two-class map whose argmax alternates like a checkerboard; the winning class's
    probability differs per pixel (0.55 .. 0.925), so uncertainty differs too."""
    conf = 0.55 + 0.025 * torch.arange(16, dtype=torch.float64).view(4, 4)
    first = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 0
    p0 = torch.where(first, conf, 1 - conf)
    return torch.stack([p0, 1 - p0])[None], conf


def test_checkerboard_impurity_times_uncertainty_by_hand():
    probs, conf = checkerboard()
    # 3x3 windows: interior pixels see 5 of their own class and 4 of the other; at borders only
    # pixels inside the image count: corners 2 + 2 of 4, edges 3 + 3 of 6, i.e. log 2
    impurity = torch.full((4, 4), math.log(2), dtype=torch.float64)
    impurity[1:3, 1:3] = h(5 / 9, 4 / 9)
    uncertainty = torch.tensor([[h(c, 1 - c) for c in row] for row in conf.tolist()], dtype=torch.float64)
    scores = ripu(kernel=3).pixel_scores(probs)
    assert scores.shape == (1, 4, 4)
    torch.testing.assert_close(scores[0], impurity * uncertainty)


def test_kernel_sets_the_neighbourhood():
    probs, conf = checkerboard()
    uncertainty = torch.tensor([[h(c, 1 - c) for c in row] for row in conf.tolist()], dtype=torch.float64)
    # 5x5 around (1, 1): rows 0-3, cols 0-3 inside the image = the 16 pixels, 8 of each class
    torch.testing.assert_close(ripu(kernel=5).pixel_scores(probs)[0, 1, 1], math.log(2) * uncertainty[1, 1])
    # 1x1: a pixel's own prediction is always pure
    assert ripu(kernel=1).pixel_scores(probs).abs().max() == 0


def test_uniform_prediction_is_pure_however_uncertain():
    probs = torch.tensor([0.4, 0.35, 0.25]).view(1, 3, 1, 1).expand(2, 3, 5, 6).contiguous()
    assert ripu().pixel_scores(probs).abs().max() == 0
    assert STRATEGIES["entropy"](OmegaConf.create({"name": "entropy"})).pixel_scores(probs).min() > 1


def test_impurity_breaks_ties_between_equally_uncertain_pixels():
    probs = torch.tensor([0.7, 0.3]).view(1, 2, 1, 1).repeat(1, 1, 4, 4)
    probs[0, :, :, 1] = torch.tensor([0.3, 0.7]).view(2, 1)  # column 1 predicts the other class
    scores = ripu().pixel_scores(probs)[0]
    assert scores[:, 3].abs().max() == 0  # only one class in sight
    assert (scores[:, :3] > 0).all()  # beside the other class's column


@pytest.mark.parametrize("kernel", [2, 0, -3, 3.0, "3", True])
def test_bad_kernel_is_refused(kernel):
    with pytest.raises(AlsegError, match="strategy.kernel must be an odd integer >= 1"):
        ripu(kernel=kernel)


def test_bad_kernel_fails_the_run_before_any_work(make_cfg, tmp_path):
    with pytest.raises(AlsegError, match="strategy.kernel"):
        run(make_cfg("strategy=ripu", "strategy.kernel=4"), tmp_path / "run")
    assert not (tmp_path / "run" / "state").exists()


@pytest.mark.parametrize("overrides, clicks", [
    (["budget=per_image"], [3 * 12, 6 * 12]),  # regions per image, 1 click per pixel
    (["region=box", "region.size=8", "budget=clicks", "budget.initial=40", "budget.per_cycle=30"], [40, 70]),
])
def test_runs_with_each_budget_on_the_same_click_axis(make_cfg, tmp_path, overrides, clicks):
    cfg = make_cfg("strategy=ripu", "budget.cycles=1", "train.epochs=1", *overrides)
    assert run(cfg, tmp_path / "run")["status"] == "completed"
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["clicks"].tolist() == clicks
