import math

import torch
from omegaconf import OmegaConf

from alseg.strategies import STRATEGIES

CFG = OmegaConf.create({"name": "x"})


def probs(*values):
    """[1, C, 1, len(values)] from per-pixel probability vectors."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, len(values[0]), 1, len(values))


def test_entropy_of_uniform_is_log_c_and_of_one_hot_is_zero():
    s = STRATEGIES["entropy"](CFG).pixel_scores(probs([0.25] * 4, [1, 0, 0, 0]))
    assert torch.allclose(s.flatten(), torch.tensor([math.log(4), 0.0]), atol=1e-6)


def test_least_confidence():
    s = STRATEGIES["least_confidence"](CFG).pixel_scores(probs([0.7, 0.2, 0.1], [0.4, 0.35, 0.25]))
    assert torch.allclose(s.flatten(), torch.tensor([0.3, 0.6]))


def test_margin_scores_small_margins_highest():
    s = STRATEGIES["margin"](CFG).pixel_scores(probs([0.7, 0.2, 0.1], [0.4, 0.35, 0.25]))
    assert torch.allclose(s.flatten(), torch.tensor([1 - 0.5, 1 - 0.05]))
    assert s.flatten()[1] > s.flatten()[0]
