"""Tests for the procedural street-scene generator (alseg.data.synthetic)."""
from __future__ import annotations

import numpy as np
import pytest

from alseg.data import synthetic

H, W = 64, 96
THIN = ("pedestrian", "pole", "sign")
LARGE = ("sky", "road", "building")


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate(50, H, W, seed=0)


@pytest.fixture(scope="module")
def shares(batch) -> dict[str, float]:
    """Share of each class among non-void pixels of the batch."""
    labels = batch[1]
    counts = np.bincount(labels[labels != 255], minlength=len(synthetic.CLASS_NAMES))
    return dict(zip(synthetic.CLASS_NAMES, counts / counts.sum()))


def _nearest_mean_accuracy(pixels: np.ndarray, labels: np.ndarray) -> float:
    """Pixel accuracy of a classifier assigning each pixel to the class with the nearest mean colour."""
    pixels = pixels.astype(np.float64)
    means = np.stack([pixels[labels == k].mean(0) for k in np.unique(labels)])
    dist = ((pixels[:, None, :] - means[None]) ** 2).sum(-1)
    return float((np.unique(labels)[dist.argmin(1)] == labels).mean())


def test_public_constants():
    assert synthetic.CLASS_NAMES == ("sky", "building", "road", "pavement", "vegetation",
                                     "car", "pedestrian", "pole", "sign")
    assert synthetic.PALETTE.shape == (9, 3) and synthetic.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in synthetic.PALETTE}) == 9


@pytest.mark.parametrize("height,width", [(64, 96), (40, 72), (96, 64), (128, 192)])
def test_shapes_and_values(height, width):
    images, labels = synthetic.generate(3, height, width, seed=5)
    assert images.shape == (3, height, width, 3) and images.dtype == np.uint8
    assert labels.shape == (3, height, width) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(9)) | {255}
    image, label = synthetic.make_scene(np.random.default_rng(0), height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert label.shape == (height, width) and label.dtype == np.uint8


def test_deterministic_and_seed_dependent():
    a_img, a_lab = synthetic.generate(6, H, W, seed=3)
    b_img, b_lab = synthetic.generate(6, H, W, seed=3)
    c_img, c_lab = synthetic.generate(6, H, W, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)
    assert all(not np.array_equal(a_lab[0], a_lab[i]) for i in range(1, 6))  # scenes vary
    p_img, p_lab = synthetic.generate(2, H, W, seed=3)
    assert np.array_equal(p_img, a_img[:2]) and np.array_equal(p_lab, a_lab[:2])


def test_all_classes_occur(batch):
    assert set(np.unique(batch[1])) == set(range(9)) | {255}


def test_class_imbalance(shares):
    for name in THIN:
        assert 0 < shares[name] < 0.02, (name, shares[name])
    for name in LARGE:
        assert shares[name] > 0.10, (name, shares[name])


def test_thin_classes_in_most_images(batch):
    labels = batch[1]
    for name in THIN:
        k = synthetic.CLASS_NAMES.index(name)
        assert (labels == k).any(axis=(1, 2)).mean() >= 0.6, name


def test_void_share_small(batch):
    void = (batch[1] == 255).mean()
    assert 0.001 < void < 0.05


def test_colour_alone_is_ambiguous(batch):
    images, labels = batch
    valid = labels != 255
    pixels, target = images[valid], labels[valid]
    # The classifier itself works: on palette-coloured labels it is (nearly) perfect.
    assert _nearest_mean_accuracy(synthetic.PALETTE[target], target) > 0.99
    # On the rendered images, colour alone gets far from that (measured ~0.33).
    assert _nearest_mean_accuracy(pixels, target) < 0.6


def test_images_are_not_flat(batch):
    images, labels = batch
    road = images[labels == synthetic.CLASS_NAMES.index("road")].astype(np.float64)
    assert road.std(0).min() > 8  # texture, shading, noise and per-image jitter


def test_generate_250_default_size():
    images, labels = synthetic.generate(250, H, W, seed=1)
    assert images.shape == (250, H, W, 3) and labels.shape == (250, H, W)
