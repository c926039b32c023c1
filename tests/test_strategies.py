import math

import torch
from omegaconf import OmegaConf

from alseg.strategies import STRATEGIES, top2

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


def passes(*committee):
    """Each member's per-pixel probability vectors -> a list of [1, C, 1, P] tensors."""
    return [probs(*member) for member in committee]


def mc(name):
    return STRATEGIES[name](OmegaConf.create({"name": name, "passes": 3}))


def test_ratio_is_second_over_best():
    s = STRATEGIES["ratio"](CFG).pixel_scores(probs([0.6, 0.3, 0.1], [0.5, 0.5, 0.0]))
    assert torch.allclose(s.flatten(), torch.tensor([0.5, 1.0]))


def test_top2_matches_topk_also_with_ties():
    p = torch.rand(2, 5, 3, 4).softmax(dim=1)
    p[0, 1:3, 0, 0] = 0.9  # a tie for the highest
    best, second = top2(p)
    expected = p.topk(2, dim=1).values
    assert torch.equal(best, expected[:, 0]) and torch.equal(second, expected[:, 1])
    assert best[0, 0, 0] == second[0, 0, 0]


def test_bald_is_zero_when_all_passes_agree_and_positive_when_they_disagree():
    agree = mc("bald").score_passes(passes([[0.7, 0.3]], [[0.7, 0.3]], [[0.7, 0.3]]))
    assert torch.allclose(agree, torch.zeros(1), atol=1e-6)
    split = mc("bald").score_passes(passes([[1.0, 0.0]], [[0.0, 1.0]]))
    assert torch.allclose(split.flatten(), torch.tensor([math.log(2)]), atol=1e-5)  # H[0.5, 0.5] - 0


def test_vote_entropy_is_zero_for_a_unanimous_committee():
    unanimous = mc("vote_entropy").score_passes(passes([[0.6, 0.4]], [[0.9, 0.1]], [[0.51, 0.49]]))
    assert torch.allclose(unanimous, torch.zeros(1), atol=1e-6)
    split = mc("vote_entropy").score_passes(passes([[0.6, 0.4]], [[0.2, 0.8]], [[0.9, 0.1]], [[0.3, 0.7]]))
    assert torch.allclose(split.flatten(), torch.tensor([math.log(2)]), atol=1e-5)


def test_variation_ratio_counts_the_modal_votes():
    s = mc("variation_ratio").score_passes(passes([[0.6, 0.4]], [[0.2, 0.8]], [[0.9, 0.1]]))
    assert torch.allclose(s.flatten(), torch.tensor([1 - 2 / 3]))


def test_kl_consensus_matches_the_kl_divergences_computed_directly():
    members = [[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]]
    p = torch.tensor(members)
    mean = p.mean(0)
    expected = (p * (p / mean).log()).sum(1).mean()
    s = mc("kl_consensus").score_passes(passes(*[[m] for m in members]))
    assert torch.allclose(s.flatten(), expected.view(1), atol=1e-6)


def test_mc_flag_averages_a_single_pass_score_over_the_passes():
    cfg = OmegaConf.create({"name": "entropy", "mc": True, "passes": 2})
    strategy = STRATEGIES["entropy"](cfg)
    assert strategy.passes == 2
    s = strategy.score_passes(passes([[0.5, 0.5]], [[1.0, 0.0]]))
    assert torch.allclose(s.flatten(), torch.tensor([math.log(2) / 2]), atol=1e-6)


def test_checking_a_strategy_leaves_the_runs_random_numbers_alone():
    from alseg.strategies import build_strategy, check_strategy

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_strategy(build_strategy(OmegaConf.create({"name": "coreset"})), 5)  # coreset draws random scores
    assert torch.equal(torch.rand(3), expected)  # so every strategy starts from the same weights
