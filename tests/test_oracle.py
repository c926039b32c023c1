import numpy as np
from omegaconf import OmegaConf

from alseg.oracle import NO_LABEL, Oracle
from alseg.pool import Pool
from alseg.regions import Regions

TRUTH = np.array([[
    [0, 0, 1, 2],
    [0, 1, 1, 2],
    [255, 255, 255, 2],
    [255, 255, 0, 2],
]], np.uint8)
MAPS = np.array([[
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 3, 3],
    [2, 2, 3, 3],
]])


def oracle(name="dominant", noise=0.0, maps=MAPS):
    regions = Regions("test" if maps is not None else "pixel", maps, np.array([4 if maps is not None else 16]))
    cfg = OmegaConf.create({"name": name, "noise": noise})
    return Oracle(cfg, regions, TRUTH, 3, np.random.default_rng(0))


def test_dominant_gives_the_majority_class_and_spends_one_click_per_region():
    pool = Pool.empty(1, 4, 4)
    clicks = oracle().reveal(pool.revealed, np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3]))
    assert clicks == 4
    expected = np.array([[
        [0, 0, 1, 1],        # region 0: three 0s, one 1 -> 0
        [0, 0, 1, 1],        # region 1: two 1s, two 2s -> tie goes to the lower id (1)
        [NO_LABEL, NO_LABEL, 2, 2],  # region 2: void majority -> no label; region 3: 2, 2, 0, 2 -> 2
        [NO_LABEL, NO_LABEL, 2, 2],
    ]])
    assert (pool.revealed == expected).all()
    # wrong revealed pixels: region 0 one (the 1), region 1 two (the 2s), region 3 two (255 and 0)
    # among 12 labelled pixels; void ground truth counts as a difference
    assert np.isclose(pool.label_noise(TRUTH), 5 / 12)


def test_pixels_reveal_truth_and_void_pixels_get_no_label():
    pool = Pool.empty(1, 4, 4)
    oracle("precise", maps=None).reveal(pool.revealed, np.array([0, 0]), np.array([2, 8]))
    assert pool.revealed[0, 0, 2] == 1 and pool.revealed[0, 2, 0] == NO_LABEL
    assert pool.label_noise(TRUTH) == 0.0


def test_noise_flips_labels_at_the_configured_rate():
    truth = np.zeros((1, 100, 100), np.uint8)
    regions = Regions("pixel", None, np.array([10000]))
    o = Oracle(OmegaConf.create({"name": "precise", "noise": 0.3}), regions, truth, 5, np.random.default_rng(0))
    pool = Pool.empty(1, 100, 100)
    o.reveal(pool.revealed, np.zeros(10000, np.int64), np.arange(10000))
    assert 0.27 < pool.label_noise(truth) < 0.33
    assert pool.revealed.max() < 5
