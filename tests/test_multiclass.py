"""annotation=multiclass (Hwang et al., NeurIPS 2023): multi-hot answers per region, their
clicks, annotator noise, the pool's label sets, the merged positive loss, and whole runs."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.oracle import Oracle, _noisy_sets
from alseg.pool import NO_LABEL, NOT_ASKED, Pool
from alseg.regions import Regions
from alseg.prototypes import localise
from alseg.train import merged_positive_loss

from test_rundir import interrupted_run
from test_oracle import MAPS, TRUTH  # the 4x4 scene of two-by-two boxes with void, by hand


def oracle(noise=0.0, maps=MAPS, click_per_class=1, truth=TRUTH, num_classes=3, seed=0):
    count = maps.max() + 1 if maps is not None else truth.shape[1] * truth.shape[2]
    regions = Regions("test" if maps is not None else "pixel", maps, np.full(len(truth), count))
    cfg = OmegaConf.create({"name": "multiclass", "noise": noise, "click_per_class": click_per_class})
    return Oracle(cfg, regions, truth, num_classes, np.random.default_rng(seed))


def named_sets(pool: Pool, image: int = 0) -> np.ndarray:
    """The set of classes named for each pixel of `image`, as a bool [H, W, C] map."""
    table = pool.label_table()
    codes = pool.revealed[image]
    out = np.zeros((*codes.shape, pool.num_classes), bool)
    labelled = codes < NO_LABEL
    if table is None:
        out[labelled, codes[labelled]] = True
    else:
        out[labelled] = table[image, codes[labelled]]
    return out


def test_merged_positive_loss_and_its_gradient_by_hand():
    # 2x2 pixels, 3 classes; codes: 0 = {0}, 3 = the image's first set {0, 1}, 4 = its second {1, 2}
    table = torch.zeros(1, NO_LABEL, 3, dtype=torch.bool)
    table[0, [0, 1, 2], [0, 1, 2]] = True
    table[0, 3, [0, 1]] = True
    table[0, 4, [1, 2]] = True
    y = torch.tensor([[[3, 0], [255, 4]]])
    ln2 = math.log(2)
    logits = torch.tensor([[[0.0, ln2], [5.0, ln2]],    # class 0
                           [[0.0, 0.0], [1.0, 0.0]],    # class 1
                           [[0.0, 0.0], [-3.0, 0.0]]],  # class 2
                          requires_grad=True)
    loss = merged_positive_loss(logits[None], y, table)
    # pixel (0,0): p = (1/3, 1/3, 1/3), set {0, 1}: -log(2/3); pixel (0,1): p = (1/2, 1/4, 1/4),
    # set {0}: -log(1/2); pixel (1,1): the same p, set {1, 2}: -log(1/2); pixel (1,0) is void
    assert loss.item() == pytest.approx((math.log(3 / 2) + ln2 + ln2) / 3)
    loss.backward()
    # d/dz_k of -log sum_{c in S} p_c is p_k - [k in S] p_k / p(S), over 3 labelled pixels
    expected = torch.tensor([[[1 / 3 - 1 / 2, 1 / 2 - 1], [0, 1 / 2]],
                             [[1 / 3 - 1 / 2, 1 / 4], [0, 1 / 4 - 1 / 2]],
                             [[1 / 3, 1 / 4], [0, 1 / 4 - 1 / 2]]]) / 3
    torch.testing.assert_close(logits.grad, expected)


def test_a_one_class_set_is_plain_cross_entropy():
    logits = torch.randn(2, 4, 3, 5)
    y = torch.randint(0, 4, (2, 3, 5))
    y[0, 0, 0] = 255
    table = torch.zeros(2, NO_LABEL, 4, dtype=torch.bool)
    table[:, torch.arange(4), torch.arange(4)] = True
    ce = torch.nn.functional.cross_entropy(logits, y, ignore_index=255)
    torch.testing.assert_close(merged_positive_loss(logits, y, table), ce)


def test_regions_name_their_classes_void_never_and_cost_a_click_per_class():
    o = oracle(click_per_class=2)
    # region 0: classes 0, 1; region 1: 1, 2; region 2: only void; region 3: 2, 0 (and void)
    np.testing.assert_array_equal(o.costs(), [[4, 4, 2, 4]])  # 2 clicks per class, a void region 1 class
    pool = Pool.empty(1, 4, 4, 3)
    assert o.reveal(pool, np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3])) == 14
    named = named_sets(pool)
    for (y, x), classes in {(0, 0): [0, 1], (1, 1): [0, 1], (0, 3): [1, 2], (3, 3): [0, 2], (3, 2): [0, 2]}.items():
        assert named[y, x].nonzero()[0].tolist() == classes
    assert (pool.revealed[TRUTH == 255] == NO_LABEL).all()  # void pixels stay unlabelled
    assert pool.label_noise(TRUTH) == 0.0  # every true class is among the named ones
    # pixels per class named: {0,1} on 4 pixels, {1,2} on 4, {0,2} on the 3 non-void of region 3
    np.testing.assert_array_equal(pool.class_counts(3), [7, 8, 7])


def test_one_class_answers_are_plain_labels_and_sets_live_in_a_table_per_image():
    truth = np.array([[[0, 0, 1, 1]], [[2, 2, 2, 2]]], np.uint8)
    maps = np.array([[[0, 0, 1, 1]], [[0, 0, 1, 1]]])
    regions = Regions("test", maps, np.array([2, 2]))
    o = Oracle(OmegaConf.create({"name": "multiclass", "noise": 0.0, "click_per_class": 1}), regions, truth, 3,
               np.random.default_rng(0))
    pool = Pool.empty(2, 1, 4, 3)
    assert o.reveal(pool, np.array([0, 0, 1]), np.array([0, 1, 0])) == 3
    assert pool.sets is None  # no region holds two classes: ordinary labels, ordinary training
    np.testing.assert_array_equal(pool.revealed, [[[0, 0, 1, 1]], [[2, 2, NOT_ASKED, NOT_ASKED]]])
    pool2 = Pool.empty(1, 1, 4, 3)
    Oracle(o.cfg, Regions("test", np.array([[[0, 0, 0, 0]]]), np.array([1])), truth[:1], 3,
           np.random.default_rng(0)).reveal(pool2, np.array([0]), np.array([0]))
    assert (pool2.revealed == 3).all() and pool2.sets[0, 0].tolist() == [True, True, False]


def test_pixel_regions_are_precise_labels_at_one_click():
    pool = Pool.empty(1, 4, 4, 3)
    assert oracle(maps=None).reveal(pool, np.array([0, 0, 0]), np.array([2, 8, 15])) == 3
    assert pool.revealed[0, 0, 2] == 1 and pool.revealed[0, 2, 0] == NO_LABEL and pool.revealed[0, 3, 3] == 2
    with pytest.raises(AlsegError, match="click_per_class=1"):
        oracle(maps=None, click_per_class=2)


def test_noise_drops_a_named_class_or_adds_an_absent_one():
    rng = np.random.default_rng(0)
    one = np.array([[True, False, False, False]] * 200)
    noisy = _noisy_sets(one, 1.0, rng)
    assert (noisy.sum(axis=1) == 2).all() and noisy[:, 0].all()  # one class named: one added
    full = np.array([[True, True]] * 50)
    assert (_noisy_sets(full, 1.0, rng).sum(axis=1) == 1).all()  # nothing left to add: one dropped
    two = np.array([[True, True, False, False]] * 2000)
    counts = _noisy_sets(two, 1.0, rng).sum(axis=1)
    assert set(counts.tolist()) == {1, 3} and 0.45 < (counts == 3).mean() < 0.55  # drop or add, half each
    void = np.zeros((10, 4), bool)
    assert not _noisy_sets(void, 1.0, rng).any()  # a void-only region stays unnamed
    assert (_noisy_sets(two, 0.0, rng) == two).all()


def test_noise_in_the_oracle_is_counted_in_clicks_and_label_noise():
    truth = np.tile(np.array([0, 1], np.uint8), (1, 64, 32))  # every 2x2 box holds classes 0 and 1
    maps = (np.arange(64)[:, None] // 2 * 32 + np.arange(64)[None] // 2)[None]
    o = oracle(noise=0.5, maps=maps, truth=truth, num_classes=4)
    pool = Pool.empty(1, 64, 64, 4)
    clicks = o.reveal(pool, np.zeros(1024, np.int64), np.arange(1024))
    named = named_sets(pool).reshape(32, 2, 32, 2, 4)[:, 0, :, 0]  # one pixel per box
    sizes = named.sum(axis=-1)
    assert clicks == sizes.sum() and set(sizes.ravel().tolist()) == {1, 2, 3}
    assert 0.2 < (sizes == 1).mean() < 0.3 and 0.2 < (sizes == 3).mean() < 0.3
    # a dropped class leaves its half of the box outside the named set: half its pixels noisy
    assert pool.label_noise(truth) == pytest.approx((sizes == 1).mean() / 2)
    assert oracle(maps=maps, truth=truth, num_classes=4).costs().sum() == 2048  # planned without noise


def test_budget_full_asks_every_region_without_noise():
    pool = Pool.empty(1, 4, 4, 3)
    assert oracle(noise=0.9).reveal_all(pool) == 7
    assert (pool.revealed[TRUTH != 255] < NO_LABEL).all() and pool.label_noise(TRUTH) == 0.0


def test_a_full_table_of_sets_ends_in_one_clear_error():
    pool = Pool.empty(1, 1, NO_LABEL, 10)
    named = np.zeros((NO_LABEL, 10), bool)
    sets = [s for size in (2, 3, 4) for s in itertools.combinations(range(10), size)]  # 45 + 120 + 210
    for k, classes in enumerate(sets[:NO_LABEL]):
        named[k, list(classes)] = True
    with pytest.raises(AlsegError, match="image 0 was given more than 244 different sets"):
        pool.reveal_sets(0, (np.zeros(NO_LABEL, np.int64), np.arange(NO_LABEL)), named, np.arange(NO_LABEL))


def test_box_regions_with_a_click_budget(make_cfg, tmp_path):
    cfg = make_cfg("annotation=multiclass", "region=box", "region.size=8", "budget=clicks", "budget.initial=30",
                   "budget.per_cycle=20", "budget.cycles=1", "train.epochs=1", "strategy=entropy")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["annotation"] == "multiclass"
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    # regions are taken until the budget is reached: the last one may overshoot by its classes
    assert (metrics["clicks"] >= [30, 50]).all() and (metrics["clicks"] < [30 + 5, 50 + 10]).all()
    assert (metrics["clicks"] > metrics["regions"]).all()  # boxes hold several classes each
    assert (metrics["label_noise"] == 0).all()
    assert (tmp_path / "run" / "state" / "cycle_01" / "label_sets.npy").exists()


def test_seeds_per_image_stopped_and_resumed_gives_the_uninterrupted_run(make_cfg, tmp_path):
    overrides = ["annotation=multiclass", "annotation.noise=0.3", "region=seeds", "region.num_superpixels=30",
                 "budget.initial=2", "budget.per_cycle=2", "budget.cycles=1", "train.epochs=1", "strategy=margin"]
    run(make_cfg(*overrides), tmp_path / "whole")
    interrupted_run(make_cfg(*overrides), tmp_path / "stopped", after_cycle=0)
    # cycle 1 redone from cycle 0's state, multi-class sets included
    assert (tmp_path / "stopped" / "state" / "cycle_00" / "label_sets.npy").exists()
    run(make_cfg(*overrides, "resume=true"), tmp_path / "stopped")
    whole, resumed = (pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["train_s", "query_s"])
                      for name in ("whole", "stopped"))
    pd.testing.assert_frame_equal(whole, resumed)
    assert whole["regions"].tolist() == [24, 48]  # 12 images x 2 regions per cycle
    assert (whole["label_noise"] > 0).all()  # dropped classes leave pixels outside their named set


def test_prototypes_label_each_pixel_with_the_nearest_named_class():
    # one region of 4 pixels named {0, 2}, one of 2 pixels named {1, 2}; 3 classes
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.1, 0.4], [0.3, 0.1, 0.6], [0.1, 0.2, 0.7],
                          [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    features = torch.tensor([[1.0, 0.0], [0.9, 0.2], [0.2, 0.9], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    sets = torch.tensor([[True, False, True]] * 4 + [[False, True, True]] * 2)
    region = torch.tensor([5, 5, 5, 5, 9, 9])
    # region 5: prototype of 0 = pixel 0 (p_0 0.8), of 2 = pixel 3 (p_2 0.7): pixels 0, 1 -> 0, pixels 2, 3 -> 2;
    # region 9: prototype of 1 = pixel 4, of 2 = pixel 5; class 0 has the highest p_0 of pixel 4 but is not named
    assert localise(features, probs, sets, region).tolist() == [0, 0, 2, 2, 1, 2]


def test_prototype_stage_trains_again_on_pixel_labels(make_cfg, tmp_path, monkeypatch):
    import alseg.experiment as experiment

    calls = []
    real = experiment.prototype_labels

    def spy(model, images, revealed, table, regions, batch_size):
        out = real(model, images, revealed, table, regions, batch_size)
        calls.append((revealed.copy(), table, out))
        return out

    monkeypatch.setattr(experiment, "prototype_labels", spy)
    cfg = make_cfg("annotation=multiclass", "annotation.prototypes=true", "region=box", "region.size=8",
                   "budget.initial=2", "budget.per_cycle=1", "budget.cycles=1", "train.epochs=1")
    run(cfg, tmp_path / "run")
    assert len(calls) == 2  # after each cycle's stage 1
    revealed, table, pseudo = calls[-1]
    c = table.shape[2]
    multi = (revealed >= c) & (revealed < NO_LABEL)
    assert multi.any() and (pseudo[multi] < c).all()  # every multi-class pixel gets one class ...
    image = np.nonzero(multi)[0]
    assert table[image, revealed[multi], pseudo[multi]].all()  # ... among those its region named
    assert (pseudo[~multi] == revealed[~multi]).all()
