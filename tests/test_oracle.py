import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from alseg.oracle import Oracle, _outer, region_costs
from alseg.pool import NO_LABEL, Pool
from alseg.regions import Regions
from alseg.regions.grid import box_map

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
    cfg = OmegaConf.create({"name": name, "noise": noise, "polygon_epsilon": 1.0})
    return Oracle(cfg, regions, TRUTH, 3, np.random.default_rng(0))


def test_dominant_gives_the_majority_class_and_spends_one_click_per_region():
    pool = Pool.empty(1, 4, 4)
    clicks = oracle().reveal(pool, np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3]))
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
    oracle("precise", maps=None).reveal(pool, np.array([0, 0]), np.array([2, 8]))
    assert pool.revealed[0, 0, 2] == 1 and pool.revealed[0, 2, 0] == NO_LABEL
    assert pool.label_noise(TRUTH) == 0.0


def test_noise_flips_labels_at_the_configured_rate():
    truth = np.zeros((1, 100, 100), np.uint8)
    regions = Regions("pixel", None, np.array([10000]))
    o = Oracle(OmegaConf.create({"name": "precise", "noise": 0.3, "polygon_epsilon": 1.0}), regions, truth, 5, np.random.default_rng(0))
    pool = Pool.empty(1, 100, 100)
    o.reveal(pool, np.zeros(10000, np.int64), np.arange(10000))
    assert 0.27 < pool.label_noise(truth) < 0.33
    assert pool.revealed.max() < 5


# ------------------------------------------------------------------ precise labelling and costs
#
# Precise clicks of a region = 8-connected components per class + label changes between
# consecutive pixels of the region's contours (not along the image frame) + vertices of
# cv2.approxPolyDP(outer contour of each component, epsilon); at least 1. Contours run
# through pixel centres, so a 4x2-pixel rectangle is a 1x3 rectangle of centres: with
# epsilon 0.5 it keeps its 4 corners, with epsilon 1.0 it becomes a segment (2 vertices).

BOXES = box_map(12, 12, 4)  # 3 x 3 boxes of 4x4; box 4 is the centre one, away from the frame
BACKGROUND = 3


def scene(**patches) -> np.ndarray:
    truth = np.full((12, 12), BACKGROUND, np.uint8)
    for (ys, xs), value in patches.values():
        truth[ys, xs] = value
    return truth


@pytest.mark.parametrize("truth,region,epsilon,expected", [
    # centre box split by a vertical line, classes 0 | 1 (each half 4 tall x 2 wide):
    # 2 components + 2 border changes (top row 0 0|1 1, bottom row 1 1|0 0) + 4 + 4 vertices
    (scene(a=((slice(4, 8), slice(4, 6)), 0), b=((slice(4, 8), slice(6, 8)), 1)), 4, 0.5, 12),
    # the same with epsilon 1: each half collapses to a segment: 2 + 2 + 2 + 2
    (scene(a=((slice(4, 8), slice(4, 6)), 0), b=((slice(4, 8), slice(6, 8)), 1)), 4, 1.0, 8),
    # one class fills the box: 1 component + 0 changes + 4 corners
    (scene(), 4, 0.5, 5),
    # a one-pixel island of class 1 inside class 0: 2 components + 0 changes (the border is
    # all class 3) + 4 corners + 1 vertex of the island
    (scene(a=((5, 5), 1)), 4, 0.5, 7),
    # left half void, right half class 1: 1 component + 2 changes (void | 1 on the top and
    # bottom rows) + 4 vertices; void is never traced
    (scene(a=((slice(4, 8), slice(4, 6)), 255), b=((slice(4, 8), slice(6, 8)), 1)), 4, 0.5, 7),
    # a box that is all void: nothing to trace, but looking at it is still 1 click
    (scene(a=((slice(4, 8), slice(4, 8)), 255)), 4, 0.5, 1),
    # top-left box (touches the top and left frame), rows 0-1 class 0 and rows 2-3 class 1:
    # 2 components + 1 change (on its right side; the change on its left side lies on the
    # frame and does not count) + 4 + 4 vertices
    (scene(a=((slice(0, 2), slice(0, 4)), 0), b=((slice(2, 4), slice(0, 4)), 1)), 0, 0.5, 11),
])
def test_precise_clicks_of_hand_made_shapes(truth, region, epsilon, expected):
    assert region_costs(BOXES, truth, 9, epsilon)[region] == expected


def test_precise_clicks_of_a_whole_image_are_its_polygon_count():
    truth = np.zeros((4, 4), np.uint8)
    truth[1:3, 1:3] = 1  # a 2x2 square of class 1 in class 0
    whole = np.zeros((4, 4), np.uint8)
    # 2 components + no border changes (only the frame) + 4 (outer square) + 4 (2x2 square)
    assert region_costs(whole, truth, 1, 0.5).tolist() == [10]
    # epsilon 1: the 2x2 square (a 1x1 square of pixel centres) becomes a segment: 2 + 4 + 2
    assert region_costs(whole, truth, 1, 1.0).tolist() == [8]


def test_label_changes_along_a_hole_in_the_region_count():
    rmap = np.zeros((7, 7), np.uint8)
    rmap[2:5, 2:5] = 1  # region 0 is a ring around region 1
    truth = np.zeros((7, 7), np.uint8)
    truth[1, 1:6] = 1  # the ring's inner top row is class 1, the rest of the ring class 0
    # ring: class 0 is one component (4 outer corners), class 1 a row of 5 pixels (a segment,
    # 2 vertices); the outer contour has no change, the hole contour (the ring's inner pixels)
    # changes twice (class 1 row <-> class 0): 2 + 2 + 4 + 2
    assert region_costs(rmap, truth, 2, 0.5)[0] == 10


def test_outer_contours_count_the_8_connected_components():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = (rng.random((15, 17)) < 0.45).astype(np.uint8)
        outer = _outer(*cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE))
        assert len(outer) == cv2.connectedComponents(mask, connectivity=8)[0] - 1


def test_oracle_costs_are_cached_with_zero_padding(tmp_path, monkeypatch):
    maps = np.stack([box_map(12, 12, 4), np.minimum(box_map(12, 12, 6), 3)])  # 9 and 4 regions
    truth = np.stack([scene(a=((5, 5), 1)), scene()])
    regions = Regions("box", maps, np.array([9, 4]), key="test-boxes", cache_dir=str(tmp_path))
    cfg = OmegaConf.create({"name": "precise", "noise": 0.0, "polygon_epsilon": 0.5})
    costs = Oracle(cfg, regions, truth, 4, np.random.default_rng(0)).costs()
    assert costs.shape == (2, 9) and costs.dtype == np.int32
    assert costs[0, 4] == 7 and (costs[1, 4:] == 0).all() and (costs[1, :4] == 5).all()
    monkeypatch.setattr("alseg.oracle.precise_costs", lambda *a: pytest.fail("costs computed again"))
    again = Oracle(cfg, regions, truth, 4, np.random.default_rng(0)).costs()
    assert np.array_equal(costs, again)
    other = OmegaConf.create({"name": "precise", "noise": 0.0, "polygon_epsilon": 1.0})
    with pytest.raises(pytest.fail.Exception, match="computed again"):  # another epsilon, another entry
        Oracle(other, regions, truth, 4, np.random.default_rng(0)).costs()


def test_one_click_per_region_for_dominant_and_per_pixel_for_precise():
    assert oracle("dominant").costs() is None
    assert oracle("precise", maps=None).costs() is None


def test_precise_reveals_the_truth_inside_regions_and_counts_its_clicks():
    pool = Pool.empty(1, 4, 4)
    o = oracle("precise")
    clicks = o.reveal(pool, np.array([0, 0]), np.array([1, 2]))
    assert clicks == o.costs()[0, 1] + o.costs()[0, 2]
    expected = np.full((1, 4, 4), 255)
    expected[0, :2, 2:] = TRUTH[0, :2, 2:]
    expected[0, 2:, :2] = NO_LABEL  # region 2 is all void
    assert (pool.revealed == expected).all() and pool.label_noise(TRUTH) == 0.0
    # region 1 (rows 0-1, columns 2-3) holds class 1 in column 2 and class 2 in column 3:
    # 2 components; its contour (0,2) (1,2) (1,3) (0,3) has labels 1 1 2 2: the step
    # (1,2)->(1,3) changes (1 border point), the step (0,3)->(0,2) changes too but runs along
    # the top frame; each component is 2 pixels whose centres lie within epsilon (1.0) of one
    # another, so approxPolyDP keeps 1 vertex of each: 2 + 1 + 1 + 1
    assert o.costs()[0, 1] == 5
    assert o.costs()[0, 2] == 1  # all void


def region_noise_oracle(name: str, noise: float):
    """40x40 image of 2x2 boxes, each filled with one class, so dominant and precise agree."""
    maps = box_map(40, 40, 2)
    truth = (maps % 5).astype(np.uint8)[None]
    regions = Regions("box", maps[None], np.array([400]))
    cfg = OmegaConf.create({"name": name, "noise": noise, "polygon_epsilon": 1.0})
    return Oracle(cfg, regions, truth, 5, np.random.default_rng(0)), truth


@pytest.mark.parametrize("name", ["dominant", "precise"])
def test_noise_share_per_region(name):
    o, truth = region_noise_oracle(name, 0.3)
    pool = Pool.empty(1, 40, 40)
    o.reveal(pool, np.zeros(400, np.int64), np.arange(400))
    assert 0.24 < pool.label_noise(truth) < 0.36  # 400 regions flipped with probability 0.3
    wrong = (pool.revealed != truth).reshape(20, 2, 20, 2).any(axis=(1, 3))
    same = (pool.revealed.reshape(20, 2, 20, 2) == pool.revealed.reshape(20, 2, 20, 2)[:, :1, :, :1]).all()
    assert same and wrong.sum() == round(pool.label_noise(truth) * 400)  # whole regions flip


def test_the_pool_owns_its_encoding_and_refuses_classes_that_collide_with_it():
    from alseg.data.base import IGNORE
    from alseg.errors import AlsegError
    from alseg.pool import MAX_CLASSES, NOT_ASKED, training_targets

    pool = Pool.empty(1, 1, 4, num_classes=MAX_CLASSES)
    pool.reveal((0, 0, [0, 1, 2]), np.array([253, IGNORE, 0]))
    assert pool.revealed.tolist() == [[[253, NO_LABEL, 0, NOT_ASKED]]]
    assert training_targets(pool.revealed, "cpu").tolist() == [[[253, IGNORE, 0, IGNORE]]]  # class 253 trains
    with pytest.raises(AlsegError, match="at most 254 classes"):
        Pool.empty(1, 1, 4, num_classes=255)  # class 254 would read as 'asked, no label'
