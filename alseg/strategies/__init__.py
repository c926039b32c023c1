"""Query strategy registry: `strategy.name` -> a Strategy class.

A strategy turns the model's class probabilities into a per-pixel informativeness score
(higher = ask sooner). Region aggregation, modifiers and budget filling are shared by all
strategies (alseg.query, alseg.selection), so adding one is one class and one YAML file. A user's own class
is loaded with `strategy=custom strategy._target_=my_pkg.MyStrategy` (see docs/extending.md).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import OmegaConf

from alseg.errors import AlsegError


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy along `dim`, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=dim)


def top2(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The highest and second-highest class probability of each pixel, [B, H, W] each (a tie
    for the highest gives two equal values). Several times faster than topk on a GPU."""
    best, index = probs.max(dim=1, keepdim=True)
    second = probs.scatter(1, index, -torch.inf).amax(dim=1)
    return best[:, 0], second


class Strategy:
    """Base class. Override `pixel_scores(probs [B, C, H, W]) -> [B, H, W]` (higher = more
    informative), or `score_passes` for scores that need several stochastic passes."""

    needs_model = True       # False: scores do not depend on the model (random)
    multi_pass = False       # True: scores come from T passes (MC dropout or a committee)
    uses_embeddings = False  # True: selection uses region embeddings (core-set, hybrid)

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @property
    def passes(self) -> int:
        """Passes per model and image: `strategy.passes` for MC-dropout strategies, else 1
        (also for a committee of models, whose members make one deterministic pass each)."""
        mc = self.multi_pass or bool(self.cfg.get("mc", False))
        if not mc or self.cfg.get("committee", "dropout") == "models":
            return 1
        return int(self.cfg.passes)

    @property
    def mc_scope(self) -> str:
        """`head`: MC passes sample only the dropout before the head; `full`: the whole network."""
        return str(self.cfg.get("mc_scope", "head"))

    @property
    def members(self) -> int:
        """Models to train: `strategy.members` for a committee of models, else 1."""
        if self.multi_pass and self.cfg.get("committee", "dropout") == "models":
            return int(self.cfg.members)
        return 1

    def pixel_scores(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement pixel_scores(probs) -> [B, H, W]")

    def score_passes(self, passes: Iterable[torch.Tensor]) -> torch.Tensor:
        """Scores from several passes' probabilities: the mean of the single-pass scores
        (`strategy.mc=true`); multi-pass strategies override this."""
        total, count = None, 0
        for probs in passes:
            s = self.pixel_scores(probs)
            total, count = (s if total is None else total + s), count + 1
        return total / count


class Random(Strategy):
    """Uniformly random regions; scores are drawn per region, not per pixel (see alseg.query)."""

    needs_model = False


class Entropy(Strategy):
    """Shannon entropy of the softmax, -sum_c p_c log p_c."""

    def pixel_scores(self, probs):
        return entropy(probs)


class LeastConfidence(Strategy):
    """1 - max_c p_c."""

    def pixel_scores(self, probs):
        return 1.0 - probs.amax(dim=1)


class Margin(Strategy):
    """Best-versus-second-best: 1 - (p1 - p2), so the smallest margins score highest."""

    def pixel_scores(self, probs):
        best, second = top2(probs)
        return 1.0 - (best - second)


class Ratio(Strategy):
    """Cai et al.: p2 / p1, the second-best over the best probability."""

    def pixel_scores(self, probs):
        best, second = top2(probs)
        return second / best.clamp_min(1e-12)


class Ripu(Strategy):
    """RIPU (Xie et al., CVPR 2022): region impurity x prediction uncertainty. The impurity of a
    pixel is the entropy of the histogram of predicted classes (argmax) in the `strategy.kernel`
    square around it; only pixels inside the image count at borders. The uncertainty is the
    entropy of the pixel's own softmax."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        kernel = cfg.get("kernel", 3)
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise AlsegError(f"strategy.kernel must be an odd integer >= 1 (the side of the neighbourhood "
                             f"around each pixel, e.g. strategy.kernel=3), got {kernel!r}")
        self.kernel = kernel

    def pixel_scores(self, probs):
        hard = torch.zeros_like(probs).scatter_(1, probs.argmax(dim=1, keepdim=True), 1.0)
        shares = F.avg_pool2d(hard, self.kernel, stride=1, padding=self.kernel // 2, count_include_pad=False)
        return entropy(shares) * entropy(probs)


class Bald(Strategy):
    """BALD mutual information: H[mean_t p_t] - mean_t H[p_t] over T passes."""

    multi_pass = True

    def score_passes(self, passes):
        total, total_entropy, count = 0.0, 0.0, 0
        for probs in passes:
            total, total_entropy, count = total + probs, total_entropy + entropy(probs), count + 1
        return entropy(total / count) - total_entropy / count


def _votes(passes: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Hard votes per class [B, C, H, W] over the passes, and the number of passes."""
    votes, count = None, 0
    for probs in passes:
        hard = torch.zeros_like(probs).scatter_(1, probs.argmax(dim=1, keepdim=True), 1.0)
        votes, count = (hard if votes is None else votes + hard), count + 1
    return votes, count


class VariationRatio(Strategy):
    """1 - (votes for the modal class) / T over T passes."""

    multi_pass = True

    def score_passes(self, passes):
        votes, count = _votes(passes)
        return 1.0 - votes.amax(dim=1) / count


class VoteEntropy(Strategy):
    """Query by committee: entropy of the members' hard votes."""

    multi_pass = True

    def score_passes(self, passes):
        votes, count = _votes(passes)
        return entropy(votes / count)


class KLConsensus(Strategy):
    """Query by committee: mean_m KL(p_m || mean p), accumulated as
    mean_m sum_c p_m log p_m - sum_c pbar log pbar (the same sum, without storing the passes).
    That sum is H[mean p] - mean H[p_m]: with committee=dropout it equals BALD exactly."""

    multi_pass = True

    def score_passes(self, passes):
        total, neg_entropy, count = 0.0, 0.0, 0
        for probs in passes:
            total, neg_entropy, count = total + probs, neg_entropy - entropy(probs), count + 1
        return (neg_entropy / count + entropy(total / count)).clamp_min(0)


class Coreset(Strategy):
    """Greedy k-center in the decoder's feature space: repeatedly take the askable region
    farthest from everything labelled or already chosen (alseg.selection.k_center). Its scores
    are all equal, so for pixel regions the candidate pixels of each image are drawn at random
    (ties are broken from the run's generator)."""

    uses_embeddings = True

    def pixel_scores(self, probs):
        return torch.zeros_like(probs[:, 0])


class Hybrid(Strategy):
    """The `strategy.candidates` x batch most uncertain regions (by `strategy.uncertainty`),
    then a diverse batch among them by greedy k-center."""

    uses_embeddings = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        plain = OmegaConf.to_container(cfg, resolve=True)
        self.uncertainty = build_strategy(OmegaConf.create({**plain, "name": cfg.uncertainty, "_target_": None}))

    @property
    def passes(self) -> int:
        return self.uncertainty.passes

    def score_passes(self, passes):
        return self.uncertainty.score_passes(passes)


STRATEGIES: dict[str, type[Strategy]] = {
    "random": Random,
    "entropy": Entropy,
    "least_confidence": LeastConfidence,
    "margin": Margin,
    "ratio": Ratio,
    "ripu": Ripu,
    "bald": Bald,
    "variation_ratio": VariationRatio,
    "vote_entropy": VoteEntropy,
    "kl_consensus": KLConsensus,
    "coreset": Coreset,
    "hybrid": Hybrid,
}


def strategy_class(cfg) -> type[Strategy]:
    """The class that `cfg` names: `strategy._target_` (a user's class) or `strategy.name`."""
    target = cfg.get("_target_")
    if target:
        try:
            cls = get_class(target)
        except Exception as exc:
            raise AlsegError(f"cannot import strategy._target_={target}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise AlsegError(f"strategy._target_={target} must be a subclass of alseg.strategies.Strategy")
        return cls
    if cfg.name not in STRATEGIES:
        raise AlsegError(f"unknown strategy {cfg.name!r}; available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[cfg.name]


def build_strategy(cfg) -> Strategy:
    """The strategy that `cfg` (the `strategy` config group) names."""
    return strategy_class(cfg)(cfg)


def check_strategy(strategy: Strategy, num_classes: int) -> None:
    """Fail early, naming the class, when a strategy's scores have the wrong shape."""
    if not strategy.needs_model:
        return
    name = type(strategy).__name__
    probs = torch.full((2, num_classes, 3, 4), 1.0 / num_classes)
    try:
        with torch.random.fork_rng(devices=[]):  # a check must not shift the run's random numbers
            scores = strategy.score_passes(iter([probs] * strategy.passes))
    except NotImplementedError as exc:
        raise AlsegError(f"strategy {name}: {exc}") from exc
    except Exception as exc:
        raise AlsegError(f"strategy {name} failed on probabilities of shape [B, C, H, W] = {tuple(probs.shape)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (2, 3, 4):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise AlsegError(f"strategy {name} must return one score per pixel, shape [B, H, W] = (2, 3, 4), got {got}")
