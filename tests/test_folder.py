"""`dataset=folder`: images/ + masks/ folders made in the test, index and colour masks, split
lists and the seeded val draw, greyscale/JPEG/TIFF images, resizing, the cache, `alseg data`,
the errors, and experiments end to end with a user's strategy and model from outside alseg."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from alseg.data import DATASETS, load_dataset
from alseg.data import decode as decode_module
from alseg.datacheck import check_dataset
from alseg.errors import AlsegError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset" / "folder.yaml"
NAMES = ["background", "road", "car"]
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
VOID_COLOUR = [255, 255, 255]


def folder_cfg(root, tmp_path, **keys):
    """The packaged folder.yaml with root, cache_dir (in tmp_path), class names and `keys`."""
    cfg = OmegaConf.load(CONF)
    cfg.root, cfg.cache_dir, cfg.class_names = str(root), str(tmp_path / "cache"), NAMES
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def cache_files(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "data"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def make_folder(root: Path, n=8, size=(12, 16), seed=0, colour=False, suffix=".png", void=255,
                splits=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """root/images + root/masks (class indices 0-2 and `void`, or their PALETTE colours);
    returns {stem: (RGB image, class labels with 255 = void)}."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(n):
        stem = f"img_{i:03d}"
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        labels = rng.integers(0, 3, size, dtype=np.uint8)
        labels[0, :3] = [0, 1, 2]
        labels[1, 1] = 255  # void in every mask
        assert cv2.imwrite(str(root / "images" / f"{stem}{suffix}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if suffix in (".jpg", ".jpeg"):  # lossy: the truth is what a decoder reads back
            image = cv2.cvtColor(cv2.imread(str(root / "images" / f"{stem}{suffix}")), cv2.COLOR_BGR2RGB)
        if colour:
            rgb = np.array([*PALETTE, *[[0, 0, 0]] * 252, VOID_COLOUR], np.uint8)[labels]
            Image.fromarray(rgb).save(root / "masks" / f"{stem}.png")
        else:
            Image.fromarray(np.where(labels == 255, void, labels).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        truth[stem] = (image, labels)
    if splits:
        (root / "splits").mkdir(exist_ok=True)
        for split, stems in splits.items():
            (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return truth


def expected(truth, stems):
    return np.stack([truth[s][0] for s in stems]), np.stack([truth[s][1] for s in stems])


# ---- reading ------------------------------------------------------------------------------
def test_index_masks_with_split_lists_pixel_for_pixel(tmp_path):
    splits = {"train": ["img_004", "img_000", "img_002", "img_007", "img_001"], "val": ["img_005", "img_003.png"]}
    truth = make_folder(tmp_path / "data", void=9, splits=splits)
    data = load_dataset(folder_cfg(tmp_path / "data", tmp_path, ignore_index=9))
    assert "folder" in DATASETS and data.name == "folder" and data.class_names == tuple(NAMES)
    assert data.palette.shape == (3, 3) and data.palette.dtype == np.uint8
    images, labels = expected(truth, splits["train"])  # in the order listed
    np.testing.assert_array_equal(data.train.images, images)
    np.testing.assert_array_equal(data.train.labels, labels)  # 9 (void) became 255
    images, labels = expected(truth, ["img_005", "img_003"])  # a listed file name is read as its stem
    np.testing.assert_array_equal(data.val.images, images)
    np.testing.assert_array_equal(data.val.labels, labels)
    assert set(np.unique(data.train.labels)) == {0, 1, 2, 255}


def test_colour_masks_map_palette_colours_to_classes(tmp_path):
    truth = make_folder(tmp_path / "data", colour=True, splits={"train": ["img_000", "img_001"], "val": ["img_002"]})
    # a palette-mode PNG and one with an alpha channel are read as their colours too
    rgb = np.asarray(Image.open(tmp_path / "data" / "masks" / "img_001.png").convert("RGB"))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4).save(tmp_path / "data" / "masks" / "img_001.png")
    rgb = np.asarray(Image.open(tmp_path / "data" / "masks" / "img_002.png").convert("RGB"))
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "data" / "masks" / "img_002.png")
    data = load_dataset(folder_cfg(tmp_path / "data", tmp_path, size=None, palette=PALETTE, ignore_color=VOID_COLOUR))
    assert data.palette.tolist() == PALETTE
    np.testing.assert_array_equal(data.train.labels, expected(truth, ["img_000", "img_001"])[1])
    np.testing.assert_array_equal(data.val.labels, expected(truth, ["img_002"])[1])


def test_val_fraction_split_is_reproducible_from_the_seed(tmp_path):
    make_folder(tmp_path / "data", n=12)

    def split(seed, fraction=0.25):
        data = load_dataset(folder_cfg(tmp_path / "data", tmp_path, val_fraction=fraction, split_seed=seed))
        return [tuple(img[0, 0]) for img in data.train.images], [tuple(img[0, 0]) for img in data.val.images]

    train, val = split(0)
    assert len(train) == 9 and len(val) == 3 and not set(train) & set(val)
    assert split(0) == (train, val)  # the same draw every time
    assert split(3)[1] != val  # another seed, another draw
    assert [len(part) for part in split(0, fraction=0.01)] == [11, 1]  # at least one val image
    # the draw is over the sorted names, so it does not depend on how the files were listed
    from alseg.data.folder import Folder

    ds = Folder(folder_cfg(tmp_path / "data", tmp_path, val_fraction=0.25))
    stems = [it.image.stem for it in ds.items(folder_cfg(tmp_path / "data", tmp_path, val_fraction=0.25), "val")]
    assert stems == sorted(stems) and len(stems) == 3


def test_greyscale_jpeg_and_tiff_images_become_rgb(tmp_path):
    truth = make_folder(tmp_path / "data", n=4, suffix=".jpg", splits={"train": ["img_000", "img_001", "img_002"],
                                                                       "val": ["img_003"]})
    grey = np.random.default_rng(5).integers(0, 256, (12, 16), dtype=np.uint8)
    (tmp_path / "data" / "images" / "img_001.jpg").unlink()
    Image.fromarray(grey, mode="L").save(tmp_path / "data" / "images" / "img_001.png")
    (tmp_path / "data" / "images" / "img_002.jpg").unlink()
    tif = truth["img_002"][0]
    Image.fromarray(tif).save(tmp_path / "data" / "images" / "img_002.tif")
    (tmp_path / "data" / "images" / "notes.txt").write_text("not an image: left alone")
    masks = tmp_path / "data" / "masks"  # TIFF masks and upper-case suffixes are found too
    Image.open(masks / "img_003.png").save(masks / "img_003.tif")
    (masks / "img_003.png").unlink()
    (masks / "img_000.png").rename(masks / "img_000.PNG")
    data = load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    np.testing.assert_array_equal(data.val.labels[0], truth["img_003"][1])
    assert data.train.images.shape == (3, 12, 16, 3)
    np.testing.assert_array_equal(data.train.images[0], truth["img_000"][0])  # JPEG as decoded
    np.testing.assert_array_equal(data.train.images[1], np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(data.train.images[2], tif)


def test_odd_sizes_are_resized_to_the_working_size_as_for_the_builtins(tmp_path, caplog):
    truth = make_folder(tmp_path / "data", n=4, size=(45, 70), splits={"train": ["img_000", "img_001", "img_002"],
                                                                       "val": ["img_003"]})
    with caplog.at_level(logging.WARNING):
        data = load_dataset(folder_cfg(tmp_path / "data", tmp_path, size=[32, 48]))
    assert "stretched" in caplog.text  # 45x70 -> 32x48 changes the aspect ratio by 3.7%
    assert data.train.images.shape == (3, 32, 48, 3) and data.val.labels.shape == (1, 32, 48)
    image, labels = truth["img_001"]
    np.testing.assert_array_equal(data.train.images[1], cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(data.train.labels[1],
                                  cv2.resize(labels, (48, 32), interpolation=cv2.INTER_NEAREST_EXACT))
    native = load_dataset(folder_cfg(tmp_path / "data", tmp_path, size=None))
    assert native.train.size == (45, 70)
    # native size needs one size per split, as for the built-in datasets
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(tmp_path / "data" / "images" / "img_002.png")
    Image.fromarray(np.zeros((40, 70), np.uint8)).save(tmp_path / "data" / "masks" / "img_002.png")
    with pytest.raises(AlsegError, match=r"dataset\.size"):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path, size=None))


def test_cache_is_reused_and_follows_files_and_label_settings(tmp_path, monkeypatch):
    make_folder(tmp_path / "data", n=6)
    cfg = folder_cfg(tmp_path / "data", tmp_path, size=[6, 8])
    first = load_dataset(cfg)
    assert len(cache_files(tmp_path)) == 4

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decode_module, "_decode_one", no_decoding)
    again = load_dataset(cfg)
    assert isinstance(again.train.images, np.memmap)
    np.testing.assert_array_equal(again.train.labels, first.train.labels)
    monkeypatch.undo()
    load_dataset(folder_cfg(tmp_path / "data", tmp_path, size=[6, 8], class_names=NAMES + ["other"]))
    assert len(cache_files(tmp_path)) == 8  # other label settings, other entries
    os.utime(tmp_path / "data" / "masks" / "img_000.png", ns=(1, 1))
    load_dataset(cfg)
    assert len(cache_files(tmp_path)) == 10  # an edited file: its split is decoded anew


# ---- alseg data ---------------------------------------------------------------------------
def test_alseg_data_reports_a_folder_dataset(tmp_path):
    truth = make_folder(tmp_path / "data", colour=True, splits={"train": ["img_000", "img_001", "img_002"],
                                                                "val": ["img_003", "img_004"]})
    cfg = folder_cfg(tmp_path / "data", tmp_path, palette=PALETTE, ignore_color=VOID_COLOUR)
    stats = check_dataset(cfg, str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "dataset_stats.json").read_text()) == stats
    assert stats["dataset"] == "folder" and stats["class_names"] == NAMES and list(stats["splits"]) == ["train", "val"]
    labels = expected(truth, ["img_003", "img_004"])[1]
    assert stats["splits"]["val"] == {"images": 2, "pixels_per_class": [int((labels == c).sum()) for c in range(3)],
                                      "ignored_pixels": int((labels == 255).sum())}


# ---- errors -------------------------------------------------------------------------------
def test_layout_errors_name_the_path_and_show_the_layout(tmp_path):
    unset = folder_cfg("x", tmp_path)
    unset.root = None
    with pytest.raises(AlsegError, match="dataset.root is not set") as err:
        load_dataset(unset)
    assert "images/" in str(err.value)
    with pytest.raises(AlsegError) as err:
        load_dataset(folder_cfg(tmp_path / "nowhere", tmp_path))
    assert f"{tmp_path / 'nowhere'} does not exist" in str(err.value) and "ROOT/masks/" in str(err.value)

    make_folder(tmp_path / "data", n=4)
    (tmp_path / "data" / "masks").rename(tmp_path / "data" / "labels")
    with pytest.raises(AlsegError) as err:
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    assert f"{tmp_path / 'data' / 'masks'} does not exist" in str(err.value) and "Expected layout" in str(err.value)
    (tmp_path / "data" / "labels").rename(tmp_path / "data" / "masks")

    (tmp_path / "data" / "masks" / "img_002.png").unlink()
    with pytest.raises(AlsegError) as err:
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    assert f"image {tmp_path / 'data' / 'images' / 'img_002.png'} has no mask" in str(err.value)
    assert str(tmp_path / "data" / "masks" / "img_002.png") in str(err.value)
    assert cache_files(tmp_path) == []

    (tmp_path / "data" / "images" / "img_001.jpg").write_bytes((tmp_path / "data" / "images" / "img_001.png").read_bytes())
    with pytest.raises(AlsegError, match=r"img_001\.jpg and .*img_001\.png have the same name"):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))


def test_split_list_errors(tmp_path):
    make_folder(tmp_path / "data", n=4, splits={"train": ["img_000", "img_001"], "val": ["img_009"]})
    with pytest.raises(AlsegError, match=r"val\.txt lists 'img_009', but .* holds no image of that name"):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    (tmp_path / "data" / "splits" / "val.txt").write_text("img_001\n")
    with pytest.raises(AlsegError, match="'img_001' is listed in both"):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    (tmp_path / "data" / "splits" / "val.txt").unlink()
    with pytest.raises(AlsegError, match=re.escape(f"{tmp_path / 'data' / 'splits' / 'val.txt'} does not exist")):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))


def test_mask_value_outside_the_classes_names_file_and_value(tmp_path):
    make_folder(tmp_path / "data", n=4)
    bad = tmp_path / "data" / "masks" / "img_003.png"
    values = np.array(Image.open(bad))
    values[5, 6] = 3  # a fourth class, with three class names
    Image.fromarray(values).save(bad)
    with pytest.raises(AlsegError, match=re.escape(f"label {bad} holds value 3")) as err:
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))
    assert "dataset.class_names" in str(err.value) and "255 (dataset.ignore_index" in str(err.value)
    assert cache_files(tmp_path) == []  # a failed build leaves nothing


def test_unknown_colour_names_file_and_colour(tmp_path):
    make_folder(tmp_path / "data", n=4, colour=True)
    bad = tmp_path / "data" / "masks" / "img_001.png"
    rgb = np.array(Image.open(bad).convert("RGB"))
    rgb[4, 7] = [10, 20, 30]
    Image.fromarray(rgb).save(bad)
    cfg = folder_cfg(tmp_path / "data", tmp_path, palette=PALETTE, ignore_color=VOID_COLOUR)
    with pytest.raises(AlsegError, match=re.escape(f"mask {bad} holds colour [10, 20, 30] (first at row 4, column 7)")):
        load_dataset(cfg)
    rgb[4, 7] = PALETTE[0]
    Image.fromarray(rgb).save(bad)
    cfg.ignore_color = None  # then the void colour is unknown too
    with pytest.raises(AlsegError, match=re.escape("holds colour [255, 255, 255]")):
        load_dataset(cfg)
    # colour masks without dataset.palette: the error says to give it
    with pytest.raises(AlsegError, match="is a colour image"):
        load_dataset(folder_cfg(tmp_path / "data", tmp_path))


@pytest.mark.parametrize("keys, message", [
    ({"class_names": "???"}, "needs the class names: pass dataset.class_names="),
    ({"class_names": ["a", "b", "a"]}, "must be distinct; a appear"),
    ({"palette": [[0, 0, 0], [1, 2, 3]]}, "one [r, g, b] per class (3 for dataset.class_names)"),
    ({"palette": [[0, 0, 0], [1, 2, 3], [1, 2, 300]]}, "dataset.palette[2] (car) must be [r, g, b]"),
    ({"palette": PALETTE, "ignore_color": [0, 0, 0]}, "is also the colour of class background"),
    ({"ignore_index": 1}, "dataset.ignore_index must be a mask value in 3-255"),
    ({"val_fraction": 1.0}, "dataset.val_fraction must be in (0, 1)"),
    ({"val_fraction": None}, "dataset.val_fraction must be a number in (0, 1), got None"),
])
def test_config_errors_say_what_is_expected(tmp_path, keys, message):
    make_folder(tmp_path / "data", n=4)
    cfg = folder_cfg(tmp_path / "data", tmp_path)
    for key, value in keys.items():
        cfg[key] = value
    with pytest.raises(AlsegError, match=re.escape(message)):
        load_dataset(cfg)


# ---- end to end: a user's strategy and model, from a module outside alseg ------------------
PLUGINS = '''
import torch

from alseg.strategies import Strategy

CALLS = {"scores": 0, "models": 0}


class FarFromConfident(Strategy):
    """1 - max p, written by a user."""

    def pixel_scores(self, probs):
        CALLS["scores"] += 1
        return 1 - probs.max(dim=1).values


class Tiny(torch.nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        CALLS["models"] += 1
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.net(x)


class NoScores(Strategy):
    pass


def wrong_shape(num_classes):
    return torch.nn.Conv2d(3, num_classes, 3, stride=2)
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A user's module `folder_plugins` in tmp_path (outside the alseg package), importable."""
    (tmp_path / "folder_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "folder_plugins", raising=False)
    yield "folder_plugins"
    sys.modules.pop("folder_plugins", None)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread keeps the tiny runs' time steady on a small shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("masks", ["index", "colour"])
def test_experiment_on_a_folder_dataset_with_a_users_strategy_and_model(make_cfg, tmp_path, plugins, one_torch_thread,
                                                                         masks):
    from alseg.experiment import run

    make_folder(tmp_path / "data", n=10, size=(45, 70), suffix=".jpg", colour=masks == "colour")
    colour = [f"dataset.palette={PALETTE}".replace(" ", ""), f"dataset.ignore_color={VOID_COLOUR}".replace(" ", "")]
    cfg = make_cfg("dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.class_names=[background,road,car]",
                   "dataset.size=[32,48]", "dataset.val_fraction=0.3", *(colour if masks == "colour" else []),
                   "strategy=custom", f"strategy._target_={plugins}.FarFromConfident",
                   "model=custom", f"model._target_={plugins}.Tiny", "+model.kwargs.width=4",
                   "train.epochs=1", "train.batch_size=4", "budget.cycles=1")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["cycles_done"] == 2
    assert summary["num_train_images"] == 7 and summary["image_size"] == [32, 48]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "iou_background" in header and "iou_road" in header and "iou_car" in header
    calls = sys.modules[plugins].CALLS
    assert calls["scores"] > 1 and calls["models"] >= 1  # the user's classes did the work


@pytest.mark.parametrize("overrides, message", [
    (["strategy=custom", "strategy._target_=folder_plugins.NoScores"], "NoScores must implement pixel_scores"),
    (["model=custom", "model._target_=folder_plugins.wrong_shape"],
     "model Conv2d must return logits of shape [B, C, H, W] = (1, 3, 32, 48)"),
])
def test_plugin_errors_on_a_folder_dataset_name_the_class(make_cfg, tmp_path, plugins, overrides, message):
    from alseg.experiment import run

    make_folder(tmp_path / "data", n=4, size=(32, 48))
    cfg = make_cfg("dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.class_names=[background,road,car]",
                   *overrides)
    with pytest.raises(AlsegError, match=re.escape(message)):
        run(cfg, tmp_path / "run")
