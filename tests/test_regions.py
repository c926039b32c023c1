"""Region maps (pixel, seeds, slic, box, image), their cache, overlays, and runs per region type."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg.data import synthetic
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.pool import load_selections
from alseg.oracle import Oracle
from alseg.overlay import region_borders, save_query_overlay
from alseg.regions import REGIONS, build_regions
from alseg.regions.grid import box_map

CONF = Path(__file__).resolve().parents[1] / "conf"
KEY = {"dataset": {"name": "test", "size": [64, 96]}, "split": "train"}


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate(4, 64, 96, seed=0)


def region_cfg(name: str, **values):
    return OmegaConf.merge(OmegaConf.load(CONF / "region" / f"{name}.yaml"), values)


def assert_dense(maps: np.ndarray, counts: np.ndarray) -> None:
    """Every pixel has a region, and the ids of image i are exactly 0..counts[i]-1."""
    assert maps.dtype.kind == "u" and maps.ndim == 3
    for m, n in zip(maps, counts):
        assert np.array_equal(np.unique(m), np.arange(n))


def test_registry_has_every_region_type():
    assert set(REGIONS) == {"pixel", "seeds", "slic", "box", "image", "adaptive"}


def test_seeds_maps_cover_every_pixel_with_contiguous_ids(scenes, tmp_path):
    regions = build_regions(region_cfg("seeds", num_superpixels=40), scenes[0], str(tmp_path), KEY)
    assert regions.maps.shape == (4, 64, 96) and regions.maps.dtype == np.uint8  # smallest type
    assert_dense(regions.maps, regions.counts)
    assert 10 <= regions.counts.min() and regions.counts.max() <= 60  # SEEDS quantises the 40 asked


@pytest.mark.parametrize("algorithm", ["slic", "slico", "mslic"])
def test_slic_maps_cover_every_pixel_with_contiguous_connected_ids(scenes, tmp_path, algorithm):
    regions = build_regions(region_cfg("slic", algorithm=algorithm, region_size=12), scenes[0], str(tmp_path), KEY)
    assert_dense(regions.maps, regions.counts)
    for m in regions.maps[:2]:  # connectivity enforcement leaves one 4-connected piece per id
        for r in range(int(m.max()) + 1):
            assert cv2.connectedComponents((m == r).astype(np.uint8), connectivity=4)[0] == 2


def test_slic_size_from_the_number_of_superpixels(scenes, tmp_path):
    regions = build_regions(region_cfg("slic", algorithm="slic", num_superpixels=24), scenes[0], str(tmp_path), KEY)
    assert 12 <= regions.counts.mean() <= 40  # region side sqrt(64 * 96 / 24) = 16


def test_box_grid_is_clipped_at_the_image_borders():
    m = box_map(70, 100, 32)  # 3 rows (32, 32, 6 pixels) x 4 columns (32, 32, 32, 4 pixels)
    assert m.dtype == np.uint8 and m.max() == 11
    sizes = np.bincount(m.ravel())
    assert sizes.reshape(3, 4).tolist() == [[1024, 1024, 1024, 128]] * 2 + [[192, 192, 192, 24]]
    assert m[0, 0] == 0 and m[0, 99] == 3 and m[69, 0] == 8 and m[69, 99] == 11
    assert (m[64:, 96:] == 11).all() and (m[:32, :32] == 0).all()


def test_box_and_image_regions(scenes, tmp_path):
    images = scenes[0]
    box = build_regions(region_cfg("box", size=32), images, str(tmp_path), KEY)
    assert box.counts.tolist() == [6] * 4 and box.max_regions == 6  # 2 x 3 boxes on 64 x 96
    assert_dense(box.maps, box.counts)
    whole = build_regions(region_cfg("box", size=500), images, str(tmp_path), KEY)
    assert whole.counts.tolist() == [1] * 4
    image = build_regions(region_cfg("image"), images, str(tmp_path), KEY)
    assert image.counts.tolist() == [1] * 4 and (np.asarray(image.maps) == 0).all()
    pixel = build_regions(OmegaConf.create({"name": "pixel"}), images, str(tmp_path), KEY)
    assert pixel.maps is None and pixel.counts.tolist() == [64 * 96] * 4
    assert len({box.key, whole.key, image.key, pixel.key}) == 4  # cached costs must not mix them up
    assert not list(tmp_path.iterdir())  # nothing to cache for maps that do not depend on the image


@pytest.mark.parametrize("name", ["box", "seeds"])
def test_batch_maps_come_from_maps_kept_on_the_device(scenes, tmp_path, name):
    regions = build_regions(region_cfg(name), scenes[0], str(tmp_path), KEY)
    batch = regions.source(torch.device("cpu"))[1:3]
    assert torch.equal(batch.long(), torch.from_numpy(np.asarray(regions.maps[1:3], np.int64)))
    kept = regions.device_maps
    assert kept.shape == regions.maps.shape
    assert regions.source(torch.device("cpu")) is kept  # uploaded once, not per batch


def test_bad_region_values_are_user_errors(scenes, tmp_path):
    with pytest.raises(AlsegError, match="region.size"):
        build_regions(region_cfg("box", size=0), scenes[0], str(tmp_path), KEY)
    with pytest.raises(AlsegError, match="region.algorithm"):
        build_regions(region_cfg("slic", algorithm="quickshift"), scenes[0], str(tmp_path), KEY)
    with pytest.raises(AlsegError, match="unknown region type"):
        build_regions(OmegaConf.create({"name": "hexagon"}), scenes[0], str(tmp_path), KEY)


@pytest.mark.parametrize("name,module,function", [("seeds", "seeds", "seeds_map"), ("slic", "slic", "slic_map")])
def test_second_build_hits_the_region_cache(scenes, tmp_path, monkeypatch, name, module, function):
    first = build_regions(region_cfg(name, num_superpixels=30), scenes[0], str(tmp_path), KEY)

    def no_work(*args):
        raise AssertionError("the cached maps were built again")

    monkeypatch.setattr(f"alseg.regions.{module}.{function}", no_work)
    second = build_regions(region_cfg(name, num_superpixels=30), scenes[0], str(tmp_path), KEY)
    assert isinstance(second.maps, np.memmap)
    assert np.array_equal(first.maps, second.maps) and np.array_equal(first.counts, second.counts)
    assert sorted(p.name for p in (tmp_path / "regions").iterdir()) == sorted(
        [f"{first.key}-maps.npy", f"{first.key}-counts.npy"])  # no temporary files left behind
    with pytest.raises(AssertionError, match="built again"):  # other parameters: a new entry
        build_regions(region_cfg(name, num_superpixels=60), scenes[0], str(tmp_path), KEY)
    assert len(list((tmp_path / "regions").iterdir())) == 2  # the failed build left nothing


def test_region_borders_outline_each_picked_region():
    m = box_map(6, 6, 3)  # four 3x3 boxes
    border = region_borders(m, np.array([0, 1]))
    expected = np.zeros((6, 6), bool)
    expected[0:3, 0:6] = True
    expected[1, [1, 4]] = False  # the centre pixel of each picked box is not on its border
    assert (border == expected).all()


def test_overlay_is_written(scenes, tmp_path):
    images = scenes[0]
    regions = build_regions(region_cfg("box", size=16), images, str(tmp_path), KEY)
    revealed = np.full(images.shape[:3], 255, np.uint8)
    revealed[0, :16, :16] = 2
    path = tmp_path / "queries" / "cycle_00.png"
    save_query_overlay(path, images, revealed, regions, (np.array([0]), np.array([0])), synthetic.PALETTE, 2)
    assert path.stat().st_size > 0


# ----------------------------------------------------------------- end to end, per region type

def test_precise_boxes_spend_their_cost_and_stay_within_one_region_of_the_budget(make_cfg, tmp_path):
    out = tmp_path / "run"
    run(make_cfg("region=box", "region.size=8", "annotation=precise", "budget=clicks", "budget.initial=200",
                 "budget.per_cycle=150", "budget.cycles=1", "strategy=entropy"), out)
    metrics = pd.read_csv(out / "metrics.csv")
    costs = np.load(next((tmp_path / "cache" / "costs").glob("precise-*.npy")))
    assert costs.shape == (12, 24) and costs.min() >= 1  # 4 x 6 boxes of 8x8 on 32x48
    spent = [costs[images, regions] for images, regions in load_selections(out)]
    assert metrics["clicks"].tolist() == np.cumsum([s.sum() for s in spent]).tolist()  # the cost model
    for cost, budget in zip(spent, [200, 150]):
        assert cost.sum() >= budget and cost.sum() - cost[-1] < budget  # only the last one overshoots
    assert (metrics["label_noise"] == 0).all()


@pytest.mark.parametrize("region", ["slic", "image"])
def test_dominant_runs_per_region_type(make_cfg, tmp_path, region):
    run(make_cfg(f"region={region}", "budget=clicks", "budget.initial=6", "budget.per_cycle=4", "budget.cycles=1"),
        tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["clicks"].tolist() == [6, 10] and metrics["regions"].tolist() == [6, 10]
    assert (tmp_path / "run" / "queries" / "cycle_01.png").stat().st_size > 0


def test_full_precise_image_labelling_costs_the_polygon_count_of_the_train_set(make_cfg, tmp_path):
    cfg = make_cfg("region=image", "annotation=precise", "budget=clicks", "budget.name=full")
    run(cfg, tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    images, labels = synthetic.generate(12, 32, 48, int(cfg.dataset.data_seed))
    regions = build_regions(cfg.region, images, str(tmp_path / "other"), KEY)
    polygons = Oracle(cfg.annotation, regions, labels, 9, np.random.default_rng(0)).costs()
    assert metrics["clicks"].tolist() == [polygons.sum()] and metrics["labelled_fraction"].iloc[0] > 0.9
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
