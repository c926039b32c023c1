"""region=adaptive and annotation.sieve (Kim et al., ICCV 2023): the merge and the sieve by
hand, and tiny runs with each budget, and a resume."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.pool import NO_LABEL, NOT_ASKED, load_selections
from alseg.data import synthetic
from alseg.regions import Regions, build_regions
from alseg.regions.adaptive import adjacent_pairs, base_config, dense, js_distance, merged_lut, region_means
from alseg.sieve import knee_keep, sieve

from test_rundir import interrupted_run

# Three base superpixels in a row: 0 | 1 | 2 (0 and 2 do not touch).
ROW = np.array([[[0, 0, 1, 1, 2, 2]] * 2])
SIMILAR, OTHER = [0.9, 0.1], [0.1, 0.9]
KEY = {"dataset": {"name": "test", "size": [32, 48]}, "split": "train"}


def merge(means: list[list[float]], asked=(False, False, False), threshold: float = 0.1) -> list[int]:
    pairs = torch.from_numpy(adjacent_pairs(ROW, 3))
    lut = torch.arange(3).view(1, 3)
    return merged_lut(torch.tensor([means]), torch.tensor([asked]), pairs, lut, threshold)[0].tolist()


def test_adjacency_pairs_are_the_touching_superpixels_once():
    assert adjacent_pairs(ROW, 3).tolist() == [[0, 0, 1], [0, 1, 2]]
    square = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 0]]])
    assert adjacent_pairs(square, 3).tolist() == [[0, 0, 1], [0, 0, 2], [0, 1, 2]]


def test_similar_neighbours_merge_and_the_dissimilar_one_stays():
    assert merge([SIMILAR, SIMILAR, OTHER]) == [0, 0, 2]
    assert merge([OTHER, SIMILAR, SIMILAR]) == [0, 1, 1]


def test_similar_superpixels_that_do_not_touch_stay_apart():
    assert merge([SIMILAR, OTHER, SIMILAR]) == [0, 1, 2]


def test_asked_superpixels_never_merge_and_keep_their_region():
    assert merge([SIMILAR, SIMILAR, SIMILAR], asked=(True, False, False)) == [0, 1, 1]
    assert merge([SIMILAR, SIMILAR, SIMILAR], threshold=0.0) == [0, 1, 2]
    assert merge([SIMILAR, SIMILAR, SIMILAR]) == [0, 0, 0]


def test_js_distance_is_scipys():
    p, q = torch.tensor([[0.9, 0.1, 0.0]]), torch.tensor([[0.2, 0.3, 0.5]])
    m = (p + q) / 2
    kl = lambda a: float((a[a > 0] * (a[a > 0] / m[a > 0]).log()).sum())  # noqa: E731
    assert js_distance(p, q).item() == pytest.approx(math.sqrt((kl(p) + kl(q)) / 2))
    assert js_distance(p, p).item() == 0
    assert js_distance(torch.tensor([[1.0, 0]]), torch.tensor([[0, 1.0]])).item() == pytest.approx(math.sqrt(math.log(2)))


def test_dense_ids_number_merged_regions_by_their_smallest_base_id():
    ids, counts = dense(torch.tensor([[0, 0, 2, 2, 4], [0, 1, 1, 0, 0]]), torch.tensor([5, 3]))
    assert ids[0].tolist() == [0, 0, 1, 1, 2] and ids[1, :3].tolist() == [0, 1, 1] and counts.tolist() == [3, 2]


def test_region_means_average_each_superpixel():
    probs = torch.tensor([[[[1.0, 0.0, 0.5, 0.5, 0.2, 0.4]]]]).repeat(1, 1, 2, 1)
    means = region_means(torch.cat([probs, 1 - probs], 1), torch.from_numpy(ROW), 3)
    assert means[0, :, 0].tolist() == pytest.approx([0.5, 0.5, 0.3])


def test_the_knee_sieves_the_doubtful_tail_of_a_region():
    # region 0: two doubtful pixels then a plateau; region 1: a straight curve (no knee)
    conf = torch.tensor([0.05, 0.9, 0.1, 0.92, 0.91, 0.93, 0.2, 0.4, 0.6, 0.8])
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert knee_keep(conf, groups).tolist() == [False, True, False, True, True, True, True, True, True, True]


@pytest.mark.parametrize("base", ["seeds", "slic"])
def test_before_any_merge_the_regions_are_the_base_superpixels(tmp_path, base):
    images, _ = synthetic.generate(3, 32, 48, seed=0)
    cfg = OmegaConf.create({"name": "adaptive", "base": base, "num_superpixels": 24, "merge_threshold": 0.1})
    regions = build_regions(cfg, images, str(tmp_path), KEY)
    plain = build_regions(base_config(cfg), images, str(tmp_path), KEY)
    assert regions.counts.tolist() == plain.counts.tolist()
    for i in range(3):
        assert (regions.maps[i] == plain.maps[i]).all()
    assert (regions.batch_maps(slice(0, 3), torch.device("cpu")).numpy() == plain.maps).all()
    assert regions.pairs.shape[1] == 3 and (regions.pairs[:, 1] < regions.pairs[:, 2]).all()


class Fixed(torch.nn.Module):
    """A 'model' whose logits are given: class 0 everywhere but where `other` says class 1."""

    def __init__(self, other: torch.Tensor):
        super().__init__()
        self.other = other

    def forward(self, x):
        one = self.other.float()
        logits = torch.stack([1 - one, one], 1) * 4
        return logits[: len(x)]


def test_sieving_two_regions_by_hand():
    # one image 2x6, two regions: left (labelled 0), right (labelled 1). The model says class 1 on
    # one pixel of the left region and class 0 on two pixels of the right one.
    rmap = np.array([[[0, 0, 0, 1, 1, 1]] * 2], np.uint8)
    regions = Regions("box", rmap, np.array([2]))
    revealed = np.array([[[0, 0, 0, 1, 1, 1]] * 2], np.uint8)
    other = torch.tensor([[[False, True, False, True, False, False], [False, False, False, True, True, True]]])
    out = sieve(Fixed(other), torch.zeros(1, 2, 6, 3, dtype=torch.uint8), revealed, regions, 4)
    expected = revealed.copy()
    expected[0, 0, 1] = NO_LABEL  # left region: the one pixel predicted 1
    expected[0, 0, 4:] = NO_LABEL  # right region: the two pixels predicted 0
    assert out.tolist() == expected.tolist()
    assert revealed[0, 0, 1] == 0  # the pool keeps its labels: only this cycle's targets change


def test_sieving_leaves_unasked_and_void_pixels_alone():
    revealed = np.array([[[0, 0, NOT_ASKED, NO_LABEL]]], np.uint8)
    regions = Regions("box", np.zeros((1, 1, 4), np.uint8), np.array([1]))
    out = sieve(Fixed(torch.tensor([[[True, False, True, True]]])), torch.zeros(1, 1, 4, 3, dtype=torch.uint8),
                revealed, regions, 4)
    assert out[0, 0, 2:].tolist() == [NOT_ASKED, NO_LABEL]


ADAPTIVE = ["region=adaptive", "region.num_superpixels=24", "annotation.sieve=true", "region.merge_threshold=0.3",
            "train.epochs=1"]


@pytest.mark.parametrize("budget", ["clicks", "per_image"])
def test_adaptive_runs_with_sieving(make_cfg, tmp_path, budget, caplog):
    caplog.set_level(logging.INFO, logger="alseg.sieve")
    run(make_cfg(*ADAPTIVE, f"budget={budget}", "budget.initial=2", "budget.per_cycle=2", "budget.cycles=2"), tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["regions"].tolist() == metrics["clicks"].tolist()  # one click per merged region
    if budget == "clicks":
        assert metrics["clicks"].tolist() == [2, 4, 6]
    else:  # 2 regions in each of 12 images, fewer where merging left an image fewer unasked regions
        assert metrics["clicks"].iloc[0] == 24 and all(0 < d <= 24 for d in metrics["clicks"].diff().iloc[1:])
    luts = [np.load(tmp_path / "run" / "state" / "regions" / f"cycle_{c:02d}.npy") for c in range(3)]
    assert (luts[0] == np.arange(luts[0].shape[1])).all()  # cycle 0: the base superpixels
    assert (luts[2] <= np.arange(luts[2].shape[1])).all()  # a region is named by its smallest base id
    assert (tmp_path / "run" / "queries" / "cycle_02.png").stat().st_size > 0
    assert caplog.text.count("sieving left out") == 2  # before the training of cycles 1 and 2


def test_adaptive_merges_and_a_merged_region_costs_one_click(make_cfg, tmp_path):
    cfg = make_cfg("region=adaptive", "region.num_superpixels=24", "region.merge_threshold=1.0", "budget=clicks",
                   "budget.initial=2", "budget.per_cycle=1", "budget.cycles=1", "train.epochs=1")
    run(cfg, tmp_path / "run")
    lut = np.load(tmp_path / "run" / "state" / "regions" / "cycle_01.npy")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(np.unique(lut[0])) < lut.shape[1] / 2  # every unasked link merged
    assert metrics["clicks"].tolist() == [2, 3]
    # the pixels asked are exactly those of the regions each cycle's merged map names
    images, _ = synthetic.generate(12, 32, 48, int(cfg.dataset.data_seed))
    base = build_regions(base_config(cfg.region), images, str(tmp_path / "cache"), KEY)
    asked = np.zeros((12, 32, 48), bool)
    for c, (chosen_images, chosen_regions) in enumerate(load_selections(tmp_path / "run")):
        lut = torch.from_numpy(np.load(tmp_path / "run" / "state" / "regions" / f"cycle_{c:02d}.npy")).long()
        ids = dense(lut, torch.from_numpy(base.counts))[0].numpy()
        for i, r in zip(chosen_images, chosen_regions):
            asked[i] |= ids[i][base.maps[i]] == r
    revealed = np.load(tmp_path / "run" / "state" / "cycle_01" / "revealed.npy")
    assert (asked == (revealed != NOT_ASKED)).all() and asked.sum() > 2 * asked.size / (12 * 24)


def test_adaptive_resume_gives_the_uninterrupted_run(make_cfg, tmp_path):
    overrides = [*ADAPTIVE, "budget=clicks", "budget.cycles=3"]
    run(make_cfg(*overrides), tmp_path / "whole")
    interrupted_run(make_cfg(*overrides), tmp_path / "stopped", after_cycle=1)
    # stopped in cycle 2: the resume starts from cycle 1's state, whose regions are merged ones
    lut = np.load(tmp_path / "stopped" / "state" / "regions" / "cycle_01.npy")
    assert not (lut == np.arange(lut.shape[1])).all()
    run(make_cfg(*overrides, "resume=true"), tmp_path / "stopped")
    whole, resumed = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns=["train_s", "query_s"])
                      for d in ("whole", "stopped"))
    pd.testing.assert_frame_equal(whole, resumed)
    for c in range(4):
        name = f"state/regions/cycle_{c:02d}.npy"
        assert (np.load(tmp_path / "whole" / name) == np.load(tmp_path / "stopped" / name)).all()


def test_full_budget_with_adaptive_regions(make_cfg, tmp_path):
    run(make_cfg(*ADAPTIVE, "budget=full"), tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 1 and metrics["labelled_fraction"].iloc[0] > 0.9


@pytest.mark.parametrize("overrides, words", [
    (["region=adaptive", "annotation=precise"], "use annotation=dominant"),
    (["region=seeds", "annotation=precise", "annotation.sieve=true"], "with annotation=dominant"),
    (["region=pixel", "annotation.sieve=true"], "not pixel"),
    (["region=adaptive", "region.merge_threshold=2"], "region.merge_threshold must be"),
    (["region=adaptive", "region.base=box"], "region.base must be"),
])
def test_meaningless_combinations_are_user_errors(make_cfg, tmp_path, overrides, words):
    with pytest.raises(AlsegError, match=words):
        run(make_cfg(*overrides), tmp_path / "run")
