"""Query strategy registry: `strategy.name` -> a Strategy class.

A strategy turns the model's class probabilities into a per-pixel informativeness score
(higher = ask sooner). Region aggregation, modifiers and budget filling are shared by all
strategies (see alseg.query), so adding one is one class here and one YAML file.
"""
from __future__ import annotations

import torch

from alseg.errors import AlsegError


class Strategy:
    """Base class: `pixel_scores(probs [B, C, H, W]) -> [B, H, W]`, higher = more informative."""

    needs_model = True

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def pixel_scores(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Random(Strategy):
    """Uniformly random regions; scores are drawn per region, not per pixel (see alseg.query)."""

    needs_model = False


class Entropy(Strategy):
    """Shannon entropy of the softmax, -sum_c p_c log p_c."""

    def pixel_scores(self, probs):
        return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)


class LeastConfidence(Strategy):
    """1 - max_c p_c."""

    def pixel_scores(self, probs):
        return 1.0 - probs.amax(dim=1)


class Margin(Strategy):
    """Best-versus-second-best: 1 - (p1 - p2), so the smallest margins score highest."""

    def pixel_scores(self, probs):
        top2 = probs.topk(2, dim=1).values
        return 1.0 - (top2[:, 0] - top2[:, 1])


STRATEGIES: dict[str, type[Strategy]] = {
    "random": Random,
    "entropy": Entropy,
    "least_confidence": LeastConfidence,
    "margin": Margin,
}


def build_strategy(cfg) -> Strategy:
    """The strategy that `cfg` (the `strategy` config group) names."""
    if cfg.name not in STRATEGIES:
        raise AlsegError(f"unknown strategy {cfg.name!r}; available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[cfg.name](cfg)
