"""From region scores to a batch within the budget: modifiers, then the selection itself.

A strategy only scores (alseg.strategies); what happens to the scores is composed here from
the strategy's config keys, in this order, for every strategy that uses a model (a user's
too): `class_balance` (ClassBalanced), `top_percent` (TopPercent), `sampling` (Stochastic) and,
for strategies with embeddings, greedy k-center (KCenter, whose candidates are the
`strategy.candidates` x batch best after the steps before), then a user's own modifiers
(`strategy.modifiers: [my_pkg.MyModifier]`, import paths). Each modifier maps scores [N, R]
(-inf = not askable) to new scores; adding one is one class with `build(cfg, strategy)` and
`__call__(scores, ctx)` (docs/extending.md).
The batch is then taken in descending score (`choose`), ties broken at random.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from hydra.utils import get_class

from alseg.errors import AlsegError

if TYPE_CHECKING:  # alseg.query imports this module
    from alseg.query import PoolScores


@dataclass
class Budget:
    """What one cycle may buy: `amount` regions per image (per_image) or clicks over the pool."""

    amount: float
    per_image: bool
    costs: torch.Tensor | None = None  # [N, R] clicks per region; None: one click each

    def regions(self, askable: torch.Tensor) -> float:
        """How many regions a click budget buys: `amount` / the mean cost of the askable
        regions (at least 1)."""
        if self.costs is None or not askable.any():
            return max(1.0, self.amount)
        return max(1.0, self.amount / float(self.costs[askable].float().mean()))


@dataclass
class Selection:
    """The regions chosen in one cycle: (images[i], regions[i]) pairs."""

    images: np.ndarray
    regions: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def empty(cls) -> "Selection":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class Context:
    """What modifiers may use besides the scores."""

    pool: PoolScores
    budget: Budget
    generator: torch.Generator  # on the scores' device
    num_classes: int


def lowest(t: torch.Tensor):
    """The value that marks 'not askable' in a score or key tensor (-inf, or int64's minimum)."""
    return -math.inf if t.is_floating_point() else torch.iinfo(t.dtype).min


def order_keys(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """int64 keys that sort like `scores` (float) with ties broken at random: the float's bits
    made monotone in the high half, a random number in the low half. Not askable -> lowest."""
    bits = scores.float().contiguous().view(torch.int32)
    monotone = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    noise = torch.randint(2**31, scores.shape, generator=generator, device=scores.device)
    keys = monotone * 2**31 + noise
    return keys.masked_fill(~torch.isfinite(scores), torch.iinfo(torch.int64).min)


class ClassBalanced:
    """Cai et al.'s ClassBal: min-max normalised score x exp(-p_c), where p_c is the share of
    askable regions whose majority predicted class is c."""

    @classmethod
    def build(cls, cfg, strategy):
        return cls() if cfg.get("class_balance") else None

    def __call__(self, scores: torch.Tensor, ctx: Context) -> torch.Tensor:
        return balance_classes(scores, ctx.pool.classes, ctx.num_classes)


class TopPercent:
    """PixelPick's top-n%: per image keep the `top_percent` most informative askable regions
    with uniform random scores, so that the batch is drawn uniformly among them."""

    untied = True  # its scores are random draws or distinct ranks

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    @classmethod
    def build(cls, cfg, strategy):
        return cls(float(cfg.top_percent)) if cfg.get("top_percent") is not None else None

    def __call__(self, scores, ctx):
        return sample_top_percent(scores, self.fraction, ctx.generator)


class Stochastic:
    """Stochastic batch acquisition (Kirsch et al., TMLR 2023): the batch is drawn without
    replacement with probability proportional to score^beta (power; negative scores count
    as 0), exp(beta x score) (softmax) or rank^-beta (softrank; ranks within each image for
    budget=per_image, over the pool for budget=clicks), by Gumbel-top-k: the scores become
    log-weight + Gumbel noise, and the greedy selection takes them in descending order."""

    untied = True  # its scores are random draws or distinct ranks

    def __init__(self, mode: str, beta: float) -> None:
        self.mode, self.beta = mode, beta

    @classmethod
    def build(cls, cfg, strategy):
        mode = cfg.get("sampling", "topk")
        return None if mode == "topk" else cls(mode, float(cfg.get("beta", 1.0)))

    def __call__(self, scores, ctx):
        askable = torch.isfinite(scores)
        if self.mode == "power":
            log_w = self.beta * torch.log(scores.clamp_min(1e-30))
        elif self.mode == "softmax":
            log_w = self.beta * scores
        else:
            log_w = -self.beta * torch.log(_ranks(scores, ctx).float())
        # Gumbel noise as -log(E), E ~ Exp(1): one draw and one log per region
        exp = torch.empty(scores.shape, device=scores.device).exponential_(generator=ctx.generator)
        return torch.where(askable, log_w - torch.log(exp), -math.inf)


def _ranks(scores: torch.Tensor, ctx: Context) -> torch.Tensor:
    """1-based ranks in descending score (ties at random), per image or over the pool."""
    keys = order_keys(scores, ctx.generator)
    flat = keys if ctx.budget.per_image else keys.view(1, -1)
    order = flat.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, flat.shape[1] + 1, device=keys.device).expand_as(order))
    return ranks.view_as(scores)


class KCenter:
    """Greedy k-center in embedding space (core-set); with `strategy.candidates` (hybrid),
    only the candidates x (regions the budget buys) best-scoring regions take part."""

    untied = True  # its scores are random draws or distinct ranks

    def __init__(self, multiple: float | None) -> None:
        self.multiple = multiple

    @classmethod
    def build(cls, cfg, strategy):
        return cls(cfg.get("candidates")) if strategy.uses_embeddings else None

    def __call__(self, scores, ctx):
        pool, budget = ctx.pool, ctx.budget
        askable = torch.isfinite(scores)
        if budget.per_image:
            return diverse_scores(pool, scores, int(budget.amount), None, self.multiple)
        cheapest = 1.0 if budget.costs is None or not askable.any() else float(budget.costs[askable].min())
        picks = min(int(askable.sum()), math.ceil(budget.amount / max(cheapest, 1.0)))
        candidates = None if self.multiple is None else math.ceil(self.multiple * budget.regions(askable))
        return diverse_scores(pool, scores, None, picks, candidates)


MODIFIERS = [ClassBalanced, TopPercent, Stochastic, KCenter]


def modifiers_for(strategy) -> list:
    """The modifiers that the strategy's config asks for, in MODIFIERS order (none for a
    strategy that does not use a model: cycle 0 and random stay one draw for every strategy)."""
    if not strategy.needs_model:
        return []
    kinds = [*MODIFIERS, *(_import_modifier(path) for path in strategy.cfg.get("modifiers") or [])]
    built = (kind.build(strategy.cfg, strategy) for kind in kinds)
    return [m for m in built if m is not None]


def _import_modifier(path: str):
    try:
        kind = get_class(path)
    except Exception as exc:
        raise AlsegError(f"cannot import strategy modifier {path}: {exc}") from exc
    if not (hasattr(kind, "build") and callable(kind)):
        raise AlsegError(f"strategy modifier {path} must be a class with build(cfg, strategy) and __call__(scores, ctx)")
    return kind


def choose(strategy, pool, budget: Budget, generator: torch.Generator, num_classes: int) -> Selection:
    """The one entry point: modifiers over the pool's scores, then the batch within the budget."""
    ctx = Context(pool, budget, generator, num_classes)
    scores, modifiers = pool.scores, modifiers_for(strategy)
    for modifier in modifiers:
        scores = modifier(scores, ctx)
    # random draws (top percent, sampling) and k-center ranks do not tie: only scores need tie-breaks
    untied = bool(modifiers) and getattr(modifiers[-1], "untied", False)
    keys = scores if untied else order_keys(scores, generator)
    if budget.per_image:
        return select_per_image(keys, int(budget.amount))
    return select_by_clicks(keys, budget.costs, float(budget.amount))


def balance_classes(scores: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Min-max normalised score x exp(-share of askable regions predicted as the region's class)."""
    valid = torch.isfinite(scores)
    if not valid.any():
        return scores
    lo, hi = scores[valid].min(), scores[valid].max()
    norm = (scores - lo) / (hi - lo).clamp_min(1e-12)
    share = torch.bincount(classes[valid], minlength=num_classes).float() / valid.sum()
    return torch.where(valid, norm * torch.exp(-share[classes]), scores)


def sample_top_percent(scores: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Per image, the `fraction` best askable regions get uniform random scores, the rest -inf."""
    valid = torch.isfinite(scores)
    keep = (valid.sum(dim=1).float() * fraction).ceil().long().clamp_min(1)
    k = int(min(keep.max().item(), scores.shape[1]))
    top = order_keys(scores, generator).topk(k, dim=1)
    rank = torch.arange(k, device=scores.device)
    chosen = (rank < keep[:, None]) & (top.values > lowest(top.values))
    random = torch.rand(top.values.shape, generator=generator, device=scores.device)
    out = torch.full_like(scores, -math.inf)
    return out.scatter(1, top.indices, torch.where(chosen, random, -math.inf))


def k_center(emb: torch.Tensor, valid: torch.Tensor, labelled: torch.Tensor, labelled_valid: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center, batched over groups: emb [G, M, D] candidates (valid [G, M]),
    labelled [G, L, D] (labelled_valid [G, L]). Returns [G, k] picked candidate positions in
    pick order (-1 when a group runs out). Each pick is the candidate farthest from
    everything labelled or picked; distances are computed per pick, never all pairs."""
    g, m, _ = emb.shape
    far = torch.full((g, m), math.inf, device=emb.device)
    for chunk in range(0, labelled.shape[1], 256):
        d = torch.cdist(emb, labelled[:, chunk : chunk + 256])
        d = d.masked_fill(~labelled_valid[:, None, chunk : chunk + 256], math.inf)
        far = torch.minimum(far, d.amin(dim=2))
    # a group with nothing labelled starts from the candidate farthest from its mean
    start = torch.cdist(emb, (emb * valid[..., None]).sum(1, keepdim=True) / valid.sum(1).clamp_min(1)[:, None, None])[..., 0]
    far = torch.where(torch.isinf(far), start, far).masked_fill(~valid, -math.inf)
    picks = torch.full((g, k), -1, dtype=torch.int64, device=emb.device)
    rows = torch.arange(g, device=emb.device)
    for j in range(k):
        best, pick = far.max(dim=1)
        ok = best > -math.inf
        picks[:, j] = torch.where(ok, pick, -1)
        d = torch.linalg.vector_norm(emb - emb[rows, pick][:, None], dim=2)
        far = torch.minimum(far, d).masked_fill(~valid, -math.inf)
        far[rows[ok], pick[ok]] = -math.inf
        valid = valid.clone()
        valid[rows[ok], pick[ok]] = False
    return picks


def diverse_scores(pool, scores: torch.Tensor, per_image: int | None, total: int | None, candidates: float | int | None) -> torch.Tensor:
    """Scores [N, R] that rank a greedy k-center batch first: per image (`per_image` picks
    each, among `candidates` x per_image best-scoring candidates when given) or over the whole
    pool (`total` picks among the `candidates` best-scoring). Regions not picked are -inf."""
    n, m = pool.candidates.shape
    valid = pool.candidates >= 0
    cand_scores = torch.gather(scores, 1, pool.candidates.clamp_min(0))
    valid &= torch.isfinite(cand_scores)
    cand_scores = cand_scores.masked_fill(~valid, -math.inf)
    if per_image is not None:
        if candidates:
            keep = min(m, math.ceil(candidates * per_image))
            valid &= cand_scores >= cand_scores.topk(keep, dim=1).values[:, -1:]
        picks = k_center(pool.embeddings, valid, pool.labelled, pool.labelled_valid, per_image)
        image = torch.arange(n, device=picks.device)[:, None].expand_as(picks)
        rank = torch.arange(per_image, 0, -1, device=picks.device, dtype=torch.float32).expand_as(picks)
    else:
        if candidates:
            keep = min(int(valid.sum()), int(candidates))
            if keep > 0:
                valid &= cand_scores >= cand_scores.flatten().topk(keep).values[-1]
        flat = lambda t: t.reshape(1, n * t.shape[1], *t.shape[2:])  # noqa: E731
        flat_picks = k_center(flat(pool.embeddings), flat(valid), flat(pool.labelled), flat(pool.labelled_valid), total)
        image, picks = flat_picks // m, flat_picks % m
        image, picks = torch.where(flat_picks >= 0, image, -1), torch.where(flat_picks >= 0, picks, -1)
        rank = torch.arange(total, 0, -1, device=picks.device, dtype=torch.float32)[None]
    out = torch.full_like(scores, -math.inf)
    ok = picks >= 0
    out[image[ok], pool.candidates[image[ok], picks[ok]]] = rank[ok]
    return out


def select_per_image(keys: torch.Tensor, k: int) -> Selection:
    """The k highest-keyed askable regions of every image (PixelPick's per-image quota)."""
    k = min(k, keys.shape[1])
    top = keys.topk(k, dim=1)
    keep = top.values > lowest(keys)
    rows = torch.arange(keys.shape[0], device=keys.device)[:, None].expand(-1, k)
    return Selection(rows[keep].cpu().numpy(), top.indices[keep].cpu().numpy())


def select_by_clicks(keys: torch.Tensor, costs: torch.Tensor | None, budget: float) -> Selection:
    """Cai et al.'s Algorithm 1: regions in descending key, adding each one's cost, until the
    click budget is reached (the last region may overshoot it). Every region costs >= 1 click,
    so at most `budget` regions can be needed."""
    flat = keys.flatten()
    k = int(min((flat > lowest(keys)).sum().item(), math.ceil(budget)))
    top = flat.topk(k)
    cost = torch.ones(k, device=flat.device) if costs is None else costs.flatten()[top.indices].float()
    spent_before = torch.cumsum(cost, 0) - cost
    chosen = top.indices[spent_before < budget]
    r = keys.shape[1]
    return Selection((chosen // r).cpu().numpy(), (chosen % r).cpu().numpy())
