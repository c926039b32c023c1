"""Datasets on disk: tiny fixtures in the exact CamVid, Cityscapes and VOC layouts, checked
pixel for pixel; the cache; `alseg data`; and real CamVid from ../shared/data/camvid."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from alseg.data import DATASETS, decode_split, load_dataset, load_split
from alseg.data import decode as decode_module
from alseg.datacheck import check_dataset
from alseg.errors import AlsegError

REAL_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
_skip_without_camvid = pytest.mark.skipif(not (REAL_CAMVID / "trainannot").is_dir(),
                                          reason=f"real CamVid not found at {REAL_CAMVID} (../shared/data/camvid)")


def needs_camvid(test):
    """Marks a test `camvid` and skips it, saying why, where the real data is absent."""
    return pytest.mark.camvid(_skip_without_camvid(test))


def dataset_cfg(name: str, root, tmp_path, **keys):
    """The packaged dataset YAML with root, cache_dir (in tmp_path) and `keys` overridden."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "dataset" / f"{name}.yaml"
    cfg = OmegaConf.load(conf)
    cfg.root, cfg.cache_dir = str(root), str(tmp_path / "cache")
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)


def cache_files(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "data"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- CamVid -----------------------------------------------------------------------------
def make_camvid(root: Path, counts=None, size=(12, 16), seed=0) -> dict:
    """SegNet layout with random images and labels 0..11; returns {split: (images, raw labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (counts or {"train": 3, "val": 2}).items():
        images = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
        labels = rng.integers(0, 12, (n, *size), dtype=np.uint8)
        labels[:, 0, 0], labels[:, 0, 1] = 11, 10  # void and the last class in every image
        for i in range(n):
            write_rgb(root / split / f"0001TP_{i:06d}.png", images[i])
            write_gray(root / f"{split}annot" / f"0001TP_{i:06d}.png", labels[i])
        out[split] = (images, labels)
    return out


def test_camvid_native_size_maps_void_to_ignore_pixel_for_pixel(tmp_path):
    truth = make_camvid(tmp_path / "camvid")
    data = load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None))
    assert data.name == "camvid" and data.num_classes == 11
    assert data.class_names[6] == "sign_symbol" and data.class_names[10] == "bicyclist"
    for split, part in (("train", data.train), ("val", data.val)):
        images, raw = truth[split]
        np.testing.assert_array_equal(part.images, images)
        np.testing.assert_array_equal(part.labels, np.where(raw == 11, 255, raw))
        assert part.images.dtype == np.uint8 and part.labels.dtype == np.uint8


def test_camvid_resizes_images_by_area_and_labels_by_nearest(tmp_path, caplog):
    truth = make_camvid(tmp_path / "camvid", size=(12, 16))
    data = load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[6, 8]))
    images, raw = truth["train"]
    for i in range(len(images)):
        np.testing.assert_array_equal(data.train.images[i], cv2.resize(images[i], (8, 6), interpolation=cv2.INTER_AREA))
        mapped = np.where(raw[i] == 11, 255, raw[i]).astype(np.uint8)
        np.testing.assert_array_equal(data.train.labels[i], cv2.resize(mapped, (8, 6), interpolation=cv2.INTER_NEAREST_EXACT))
    assert "stretched" not in caplog.text  # same aspect ratio
    with caplog.at_level(logging.WARNING):
        load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[6, 6]))
    assert caplog.text.count("stretched") == 1  # once, though two splits are loaded


def test_camvid_eval_split_is_configurable(tmp_path):
    make_camvid(tmp_path / "camvid", {"train": 2, "val": 1, "test": 3})
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None)
    assert len(load_dataset(cfg).val) == 1  # val by default
    cfg.eval_split = "test"
    assert len(load_dataset(cfg).val) == 3
    cfg.eval_split = "train"
    with pytest.raises(AlsegError, match="eval_split"):
        load_dataset(cfg)


def test_missing_or_partial_root_names_the_path_and_shows_the_layout(tmp_path):
    unset = dataset_cfg("camvid", "x", tmp_path)
    unset.root = None
    with pytest.raises(AlsegError, match="dataset.root is not set"):
        load_dataset(unset)
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("camvid", tmp_path / "nowhere", tmp_path))
    assert str(tmp_path / "nowhere") in str(err.value) and "trainannot/" in str(err.value)

    make_camvid(tmp_path / "camvid")
    (tmp_path / "camvid" / "valannot" / "0001TP_000001.png").unlink()
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None))
    assert str(tmp_path / "camvid" / "valannot" / "0001TP_000001.png") in str(err.value)
    assert "Expected layout" in str(err.value)

    for p in (tmp_path / "camvid" / "trainannot").iterdir():
        p.unlink()
    (tmp_path / "camvid" / "trainannot").rmdir()
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None))
    assert f"{tmp_path / 'camvid' / 'trainannot'} does not exist" in str(err.value)
    assert cache_files(tmp_path) == []


def test_bad_label_value_and_unreadable_image_name_the_file(tmp_path):
    make_camvid(tmp_path / "camvid")
    bad_label = tmp_path / "camvid" / "trainannot" / "0001TP_000002.png"
    values = cv2.imread(str(bad_label), cv2.IMREAD_UNCHANGED)
    values[3, 4] = 12
    write_gray(bad_label, values)
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None)
    with pytest.raises(AlsegError, match=re.escape(f"label {bad_label} holds value 12")):
        load_dataset(cfg)
    assert cache_files(tmp_path) == []  # a failed build leaves nothing, not even a temporary file

    values[3, 4] = 0
    write_gray(bad_label, values)
    broken = tmp_path / "camvid" / "val" / "0001TP_000001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    with pytest.raises(AlsegError, match=re.escape(str(broken))):
        load_dataset(cfg)


def test_native_size_needs_one_size_per_split(tmp_path):
    make_camvid(tmp_path / "camvid")
    write_rgb(tmp_path / "camvid" / "train" / "0001TP_000001.png", np.zeros((10, 16, 3), np.uint8))
    write_gray(tmp_path / "camvid" / "trainannot" / "0001TP_000001.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(AlsegError, match=r"dataset\.size"):
        load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None))
    data = load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[12, 16]))
    assert data.train.images.shape == (3, 12, 16, 3)


def test_cache_is_built_once_and_read_afterwards(tmp_path, monkeypatch):
    make_camvid(tmp_path / "camvid")
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[6, 8])
    first = load_dataset(cfg)
    names = cache_files(tmp_path)
    assert len(names) == 4 and all(n.endswith(("-images.npy", "-labels.npy")) for n in names)
    assert not any(".tmp" in n for n in names)

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decode_module, "_decode_one", no_decoding)
    again = load_dataset(cfg)
    assert isinstance(again.train.images, np.memmap)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.val.labels, first.val.labels)
    again.train.images[0, 0, 0, 0] ^= 1  # copy-on-write: writable, the file stays intact
    monkeypatch.undo()
    np.testing.assert_array_equal(load_dataset(cfg).train.images, first.train.images)

    cfg.size = [4, 8]  # another size is another entry
    load_dataset(cfg)
    assert len(cache_files(tmp_path)) == 8


def test_jobs_building_the_same_cache_at_once_all_get_it_complete(tmp_path):
    make_camvid(tmp_path / "camvid", {"train": 6, "val": 2})
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[6, 8])
    results, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def job(k):
        try:
            barrier.wait()
            results[k] = np.array(load_split(cfg, "train").labels)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert not any(".tmp" in n for n in cache_files(tmp_path))
    # a stray temporary file of a killed job is never read as the entry
    (tmp_path / "cache" / "data" / "camvid-val-6x8-0000-images.pid.tmp.npy").write_bytes(b"half")
    assert len(load_split(cfg, "val")) == 2


def test_decode_split_matches_the_cache(tmp_path):
    make_camvid(tmp_path / "camvid")
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[6, 8])
    decoded, cached = decode_split(cfg, "train"), load_split(cfg, "train")
    assert not isinstance(decoded.images, np.memmap)
    np.testing.assert_array_equal(decoded.images, cached.images)
    np.testing.assert_array_equal(decoded.labels, cached.labels)


# ---- Cityscapes -------------------------------------------------------------------------
# The official label id -> train id table, written out independently of the loader.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def make_cityscapes(root: Path, size=(16, 32), seed=1) -> dict:
    """leftImg8bit/gtFine layout, two cities; labels use every id 0..33."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, cities in (("train", {"aachen": 2, "bochum": 1}), ("val", {"frankfurt": 2})):
        images, labels = [], []
        for city, n in cities.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                label = rng.integers(0, 34, size, dtype=np.uint8)
                label.flat[:34] = np.arange(34)  # every id, mapped ones and ignored ones
                write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                # files that are not labelIds must be left alone
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", label)
                images.append(image)
                labels.append(label)
        out[split] = (np.stack(images), np.stack(labels))
    return out


def test_cityscapes_label_ids_map_to_train_ids_pixel_for_pixel(tmp_path):
    truth = make_cityscapes(tmp_path / "cityscapes")
    cfg = dataset_cfg("cityscapes", tmp_path / "cityscapes", tmp_path)
    assert list(cfg.size) == [256, 512]  # PixelPick's working size by default
    cfg.size = None
    data = load_dataset(cfg)
    assert data.num_classes == 19 and data.class_names[6] == "traffic light" and data.class_names[18] == "bicycle"
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    for split, part in (("train", data.train), ("val", data.val)):
        images, labels = truth[split]
        np.testing.assert_array_equal(part.images, images)
        np.testing.assert_array_equal(part.labels, lut[labels])
    assert (data.train.labels == 255).any() and set(np.unique(data.train.labels)) == {*range(19), 255}


def test_cityscapes_working_size_and_bad_id(tmp_path):
    truth = make_cityscapes(tmp_path / "cityscapes")
    data = load_dataset(dataset_cfg("cityscapes", tmp_path / "cityscapes", tmp_path, size=[8, 16]))
    assert data.train.images.shape == (3, 8, 16, 3) and data.val.labels.shape == (2, 8, 16)
    lut = np.full(256, 255, np.uint8)
    lut[list(CITYSCAPES_TRAIN_IDS)] = list(CITYSCAPES_TRAIN_IDS.values())
    expected = cv2.resize(lut[truth["val"][1][1]], (16, 8), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(data.val.labels[1], expected)

    bad = tmp_path / "cityscapes" / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    label = truth["val"][1][1].copy()
    label[2, 2] = 40
    write_gray(bad, label)
    with pytest.raises(AlsegError, match=re.escape(f"label {bad} holds value 40")):
        load_dataset(dataset_cfg("cityscapes", tmp_path / "cityscapes", tmp_path, size=[8, 16]))


def test_cityscapes_partial_root(tmp_path):
    make_cityscapes(tmp_path / "cityscapes")
    import shutil

    shutil.rmtree(tmp_path / "cityscapes" / "gtFine" / "val")
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("cityscapes", tmp_path / "cityscapes", tmp_path))
    assert f"{tmp_path / 'cityscapes' / 'gtFine' / 'val'} does not exist" in str(err.value)
    assert "_gtFine_labelIds.png" in str(err.value)


# ---- VOC --------------------------------------------------------------------------------
def voc_palette() -> list[int]:
    """The VOC devkit colormap as a flat PIL palette, written out independently of the loader."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r, g, b = r | ((c & 1) << (7 - j)), g | (((c >> 1) & 1) << (7 - j)), b | (((c >> 2) & 1) << (7 - j))
            c >>= 3
        palette += [r, g, b]
    return palette


def make_voc(devkit: Path, size=(20, 20), seed=2, augmented=False) -> dict:
    """VOCdevkit/VOC2012 with JPEGs, palette PNG labels (255 object borders) and the split lists."""
    rng = np.random.default_rng(seed)
    base = devkit / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039", "2008_000002"], "val": ["2007_000033", "2007_000042"]}
    if augmented:
        ids["train_aug"] = ["2008_000002", "2009_000001", "2011_000003", "2007_000032"]
    out = {}
    for split, names in ids.items():
        folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        labels = []
        for name in names:
            if not (base / "JPEGImages" / f"{name}.jpg").exists():
                write_rgb(base / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            label = rng.integers(0, 21, size, dtype=np.uint8)
            label[0, :] = label[-1, :] = label[:, 0] = 255  # the VOC boundary value, ignored
            label.flat[size[1] + 1:size[1] + 22] = np.arange(21)
            path = base / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if split == "train_aug":  # SBD's converted labels are greyscale PNGs
                Image.fromarray(label, mode="L").save(path)
            else:
                img = Image.fromarray(label, mode="P")
                img.putpalette(voc_palette())
                img.save(path)
            labels.append(label)
        lists = base / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        lines = ([f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in names] if split == "train_aug"
                 else names)
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out[split] = (names, np.stack(labels))
    return out


@pytest.mark.parametrize("spelling", ["VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_reads_palette_indices_not_rgb_from_either_root(tmp_path, spelling):
    truth = make_voc(tmp_path / "VOCdevkit")
    label_file = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png"
    assert Image.open(label_file).mode == "P"
    cfg = dataset_cfg("voc", tmp_path / spelling, tmp_path)
    assert list(cfg.size) == [320, 320] and cfg.augmented is False
    cfg.size = None
    data = load_dataset(cfg)
    assert data.num_classes == 21 and data.class_names[0] == "background" and data.class_names[20] == "tvmonitor"
    assert data.palette.tolist()[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    for split, part in (("train", data.train), ("val", data.val)):
        names, labels = truth[split]
        np.testing.assert_array_equal(part.labels, labels)  # 255 stays 255
        for i, name in enumerate(names):
            jpeg = cv2.imread(str(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{name}.jpg"))
            np.testing.assert_array_equal(part.images[i], cv2.cvtColor(jpeg, cv2.COLOR_BGR2RGB))


def test_voc_default_size_stretches_to_a_square_with_a_warning(tmp_path, caplog):
    truth = make_voc(tmp_path / "VOCdevkit", size=(20, 30))
    with caplog.at_level(logging.WARNING):
        data = load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, size=[10, 10]))
    assert "stretched" in caplog.text
    assert data.train.labels.shape == (3, 10, 10)
    np.testing.assert_array_equal(data.train.labels[0],
                                  cv2.resize(truth["train"][1][0], (10, 10), interpolation=cv2.INTER_NEAREST_EXACT))


def test_voc_augmented_uses_train_aug_and_segmentation_class_aug(tmp_path):
    truth = make_voc(tmp_path / "VOCdevkit", augmented=True)
    data = load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, size=None, augmented=True))
    np.testing.assert_array_equal(data.train.labels, truth["train_aug"][1])
    np.testing.assert_array_equal(data.val.labels, truth["val"][1])
    plain = load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, size=None))
    np.testing.assert_array_equal(plain.train.labels, truth["train"][1])


def test_voc_errors(tmp_path):
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("voc", tmp_path, tmp_path))
    assert str(tmp_path / "VOC2012") in str(err.value) and "SegmentationClass/" in str(err.value)
    with pytest.raises(AlsegError, match="SegmentationClassAug does not exist"):
        make_voc(tmp_path / "VOCdevkit")
        load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, augmented=True))
    rgb = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000042.png"
    Image.open(rgb).convert("RGB").save(rgb)
    with pytest.raises(AlsegError, match=re.escape(f"label {rgb} has image mode RGB")):
        load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, size=None))
    bad = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000042.png"
    img = Image.fromarray(np.full((20, 20), 21, np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(bad)
    with pytest.raises(AlsegError, match=re.escape(f"label {bad} holds value 21")):
        load_dataset(dataset_cfg("voc", tmp_path / "VOCdevkit", tmp_path, size=None))


# ---- registry and configs -----------------------------------------------------------------
def test_every_dataset_yaml_names_its_option_and_is_registered():
    for conf in (Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("*.yaml"):
        cfg = OmegaConf.load(conf)
        assert cfg.name == conf.stem and cfg.name in DATASETS
        assert {"root", "size", "cache_dir"} <= set(cfg)


# ---- alseg data ---------------------------------------------------------------------------
def test_datacheck_writes_stats_for_every_split(tmp_path):
    truth = make_camvid(tmp_path / "camvid", {"train": 3, "val": 2, "test": 1})
    stats = check_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=None), str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "dataset_stats.json").read_text())
    assert saved == stats
    assert saved["dataset"] == "camvid" and saved["num_classes"] == 11 and len(saved["class_names"]) == 11
    assert list(saved["splits"]) == ["train", "val", "test"]
    for split, (_, raw) in truth.items():
        s = saved["splits"][split]
        assert s["images"] == len(raw)
        assert s["pixels_per_class"] == [int((raw == c).sum()) for c in range(11)]
        assert s["ignored_pixels"] == int((raw == 11).sum())


def run_alseg(tmp_path, *args):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "alseg.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_alseg_data_command(tmp_path):
    make_cityscapes(tmp_path / "cs")
    ok = run_alseg(tmp_path, "data", "dataset=cityscapes", "dataset.root=cs", "dataset.size=[8,16]", "hydra.run.dir=out")
    assert ok.returncode == 0, ok.stderr
    stats = json.loads((tmp_path / "out" / "dataset_stats.json").read_text())
    assert stats["splits"]["train"]["images"] == 3 and stats["splits"]["val"]["images"] == 2
    assert "traffic light" in ok.stdout and "(ignored)" in ok.stdout
    bad = run_alseg(tmp_path, "data", "dataset=cityscapes", "dataset.root=missing", "hydra.run.dir=out2")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stdout + bad.stderr
    assert bad.stdout.count("error:") == 1 and f"{tmp_path / 'missing'} does not exist" in bad.stdout


# ---- real CamVid ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camvid_cfg(tmp_path_factory):
    """Real CamVid at 90x120, cached once for the tests of this module."""
    cache = tmp_path_factory.mktemp("camvid")
    return dataset_cfg("camvid", REAL_CAMVID, cache, size=[90, 120])


def readme_shares() -> dict[str, float]:
    """Class shares of the train split as ../shared/data/camvid/README.md lists them."""
    text = (REAL_CAMVID / "README.md").read_text()
    return {name: float(share) for name, share in re.findall(r"\d+ ([a-z_]+)(?:/[a-z]+)? ([\d.]+)%", text)}


@needs_camvid
def test_real_camvid_loads_at_the_working_size(camvid_cfg):
    data = load_dataset(camvid_cfg)
    assert data.train.images.shape == (367, 90, 120, 3) and data.val.labels.shape == (101, 90, 120)
    name = sorted((REAL_CAMVID / "train").iterdir())[5].name
    raw = cv2.imread(str(REAL_CAMVID / "trainannot" / name), cv2.IMREAD_UNCHANGED)
    expected = cv2.resize(np.where(raw == 11, 255, raw).astype(np.uint8), (120, 90), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(data.train.labels[5], expected)
    image = cv2.cvtColor(cv2.imread(str(REAL_CAMVID / "train" / name)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(data.train.images[5], cv2.resize(image, (120, 90), interpolation=cv2.INTER_AREA))
    assert set(np.unique(data.val.labels)) <= {*range(11), 255}


@needs_camvid
def test_real_camvid_class_shares_match_its_readme(camvid_cfg, tmp_path):
    stats = check_dataset(camvid_cfg, str(tmp_path))
    assert list(stats["splits"]) == ["train", "val"]
    train = stats["splits"]["train"]
    assert train["images"] == 367 and stats["splits"]["val"]["images"] == 101
    total = sum(train["pixels_per_class"]) + train["ignored_pixels"]
    assert total == 367 * 90 * 120
    expected = readme_shares()
    assert len(expected) == 12
    measured = dict(zip(stats["class_names"], (100 * v / total for v in train["pixels_per_class"])))
    measured["void"] = 100 * train["ignored_pixels"] / total
    for name, share in expected.items():
        # the README rounds to 0.1; 90x120 adds < 0.15 (labels misaligned by half a block would add ~0.4)
        assert measured[name] == pytest.approx(share, abs=0.3), name


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, spinning worker threads of several busy
    processes slow training several times over; one thread keeps this test's time steady."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_camvid
def test_real_camvid_experiment_runs_end_to_end(make_cfg, tmp_path, one_torch_thread):
    from alseg.experiment import run

    cfg = make_cfg("dataset=camvid", f"dataset.root={REAL_CAMVID}", "dataset.size=[30,40]", "budget.initial=5",
                   "budget.per_cycle=5", "budget.cycles=1", "train.epochs=1", "train.batch_size=32")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["cycles_done"] == 2
    assert summary["num_train_images"] == 367 and summary["image_size"] == [30, 40]
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "iou_sign_symbol" in metrics and "iou_bicyclist" in metrics
