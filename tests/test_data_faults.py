"""Faults in the data and the caches: damaged image files, file names that are not UTF-8, cache
entries cut short, a full disk, a bad dataset.root, empty splits, and the cores a job may use."""
from __future__ import annotations

import errno
import io
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import alseg.cache as cache
import alseg.cpus as cpus
import alseg.oracle as oracle
from alseg.data import DATASETS, load_dataset, synthetic
from alseg.data import decode as decode_module
from alseg.data.base import SegDataset, Split
from alseg.data.folder import Folder, read_index_mask
from alseg.data.read import _jpeg_complete, _png_complete, read_image, read_index_png, read_palette_png
from alseg.errors import AlsegError
from alseg.regions import build as build_module
from alseg.regions import build_regions

CONF = Path(__file__).resolve().parents[1] / "conf"
KEY = {"dataset": {"name": "test", "size": [32, 48]}, "split": "train"}
NO_SPACE = "no space left on device while writing {}: free space or set dataset.cache_dir"


def dataset_cfg(name: str, root, tmp_path, **keys):
    cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    cfg.root, cfg.cache_dir = str(root), str(tmp_path / "cache")
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def region_cfg(name: str, **values):
    return OmegaConf.merge(OmegaConf.load(CONF / "region" / f"{name}.yaml"), values)


def make_camvid(root: Path, suffix=".png", size=(24, 32), names=("a", "b", "c")) -> None:
    """A CamVid tree (train/, val/ and their *annot/ labels) of random images, `names` in train."""
    rng = np.random.default_rng(0)
    for split, stems in (("train", names), ("val", ("v0", "v1"))):
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            image = cv2.imencode(suffix, rng.integers(0, 256, (*size, 3), dtype=np.uint8))[1].tobytes()
            label = cv2.imencode(".png", rng.integers(0, 12, size, dtype=np.uint8))[1].tobytes()
            (root / split / f"{stem}{suffix}").write_bytes(image)  # a stem may hold an escaped byte (not UTF-8)
            (root / f"{split}annot" / f"{stem}.png").write_bytes(label)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def encoded(suffix: str, **params) -> bytes:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format=suffix, **params)
    return out.getvalue()


def with_thumbnail(jpeg: bytes) -> bytes:
    """`jpeg` with a whole JPEG (its own end-of-image marker) inside an APP1 segment, as EXIF thumbnails are."""
    app1 = b"Exif\0\0" + encoded("JPEG")
    return jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:]


# ---- damaged image files ----------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    encoded("JPEG"), encoded("JPEG", progressive=True), encoded("JPEG", exif=Image.Exif()),
    cv2.imencode(".jpg", np.full((40, 56, 3), 90, np.uint8), [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes(),
    encoded("JPEG") + b"trailing bytes after the end-of-image marker",
    encoded("JPEG")[:20] + b"\0\0\0" + encoded("JPEG")[20:],  # stray bytes after APP0, which libjpeg skips
    with_thumbnail(encoded("JPEG")),
], ids=["baseline", "progressive", "exif", "restart-markers", "trailing-bytes", "stray-bytes", "thumbnail"])
def test_a_jpeg_is_complete_only_up_to_its_end_marker(data):
    assert _jpeg_complete(data)
    end = data.rindex(b"\xff\xd9") + 2
    assert not any(_jpeg_complete(data[:cut]) for cut in range(2, end))  # every cut is caught


def test_a_png_is_complete_only_with_its_iend_chunk():
    data = encoded("PNG")
    assert _png_complete(data)
    assert not any(_png_complete(data[:cut]) for cut in range(8, len(data)))


DAMAGED = {  # a file cut short: in its data (libjpeg decodes the rest as grey), or by its last bytes
    "cut short": lambda data: data[: len(data) * 9 // 10], "last bytes lost": lambda data: data[:-2],
    "empty": lambda data: b"", "garbage": lambda data: b"\x00\x13 these are not the bytes of any image " * 20,
}


def _damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGED[how](path.read_bytes()))


NOISE = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
READERS = {  # every reader of image and label files, with a file it reads
    "image": (read_image, lambda p: cv2.imwrite(str(p), NOISE)),
    "index label": (read_index_png, lambda p: cv2.imwrite(str(p), NOISE[..., 0] % 3)),
    "palette label": (read_palette_png, lambda p: Image.fromarray(NOISE[..., 0] % 3, mode="P").save(p)),
    "index mask": (read_index_mask, lambda p: Image.fromarray(NOISE[..., 0] % 3).save(p)),
    "colour mask": (lambda p: Folder(OmegaConf.create({"class_names": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]]}))
                    .read_colour_mask(p), lambda p: cv2.imwrite(str(p), (NOISE[..., :1] % 2 * 9).repeat(3, 2))),
}


@pytest.mark.parametrize("how", DAMAGED)
@pytest.mark.parametrize("reader,suffix", [("image", ".jpg"), ("image", ".png"), ("index label", ".png"),
                                           ("palette label", ".png"), ("index mask", ".png"), ("colour mask", ".png")])
def test_every_reader_names_a_damaged_file(tmp_path, reader, suffix, how):
    read, write = READERS[reader]
    path = tmp_path / f"x{suffix}"
    write(path)
    read(path)  # the intact file reads
    _damage(path, how)
    with pytest.raises(AlsegError, match=re.escape(str(path))) as err:
        read(path)
    assert "\n" not in str(err.value)


def test_a_truncated_jpeg_is_an_error_and_nothing_is_cached(tmp_path, caplog):
    root = tmp_path / "camvid"
    make_camvid(root, suffix=".jpg", size=(48, 64))
    _damage(root / "train" / "b.jpg", "cut short")
    with pytest.raises(AlsegError, match=re.escape(f"image {root / 'train' / 'b.jpg'} is damaged")):
        load_dataset(dataset_cfg("camvid", root, tmp_path, size=None))
    assert files_in(tmp_path / "cache") == []


# ---- file names that are not UTF-8 ----------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    root = tmp_path / "camvid"
    make_camvid(root, names=("a", "b\udcffc"))  # the byte 0xff, as Python keeps it in a str
    assert b"b\xffc.png" in os.listdir(os.fsencode(root / "train"))  # the name on disk holds the byte 0xff
    data = load_dataset(dataset_cfg("camvid", root, tmp_path, size=None))
    expected = cv2.cvtColor(cv2.imdecode(np.fromfile(root / "train" / "b\udcffc.png", np.uint8), 1), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(data.train.images[1], expected)  # sorted: "a" < "b\xffc"


def test_an_error_about_a_file_name_that_is_not_utf8_can_be_printed(tmp_path):
    root = tmp_path / "camvid"
    make_camvid(root, names=("a", "b\udcffc"))
    _damage(root / "train" / "b\udcffc.png", "cut short")
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg("camvid", root, tmp_path, size=None))
    message = str(err.value)
    assert f"{root / 'train'}/b\\xffc.png is damaged" in message
    message.encode("utf-8")  # no lone surrogate: a log file or error.txt can hold it


def test_a_folder_dataset_reads_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(["p\udcff0", "p\udcff1", "p2"]):
        cv2.imwrite(str(tmp_path / "tmp.png"), np.full((12, 16, 3), 40 * i, np.uint8))
        (root / "images" / f"{stem}.png").write_bytes((tmp_path / "tmp.png").read_bytes())
        Image.fromarray(np.full((12, 16), i % 2, np.uint8)).save(tmp_path / "mask.png")
        (root / "masks" / f"{stem}.png").write_bytes((tmp_path / "mask.png").read_bytes())
    cfg = dataset_cfg("folder", root, tmp_path, class_names=["a", "b"], val_fraction=0.34)
    data = load_dataset(cfg)
    assert len(data.train) + len(data.val) == 3
    (root / "splits").mkdir()  # split lists name them with the same bytes
    (root / "splits" / "train.txt").write_bytes(b"p\xff0\np2.png\n")
    (root / "splits" / "val.txt").write_bytes(b"p\xff1\n")
    data = load_dataset(cfg)
    assert (len(data.train), len(data.val)) == (2, 1) and data.val.images[0, 0, 0, 0] == 40


# ---- cache entries cut short ------------------------------------------------------------------
def _shorten(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-7], "empty": b"", "header only": data[:128],
                      "longer": data + b"\0" * 16, "garbage": b"\x93NUMPY garbage"}[how])


DAMAGE = ["truncated", "empty", "header only", "longer", "garbage"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("part", ["images", "labels"])
def test_a_damaged_image_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog, part, how):
    make_camvid(tmp_path / "camvid")
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[12, 16])
    first = load_dataset(cfg)
    images, labels = np.array(first.train.images), np.array(first.train.labels)  # not views of the file damaged below
    entry = next((tmp_path / "cache" / "data").glob(f"camvid-train-*-{part}.npy"))
    _shorten(entry, how)
    with caplog.at_level(logging.WARNING):
        again = load_dataset(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "built again" in warnings[0]
    np.testing.assert_array_equal(again.train.images, images)
    np.testing.assert_array_equal(again.train.labels, labels)
    assert len(files_in(tmp_path / "cache")) == 4


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("part", ["maps", "counts"])
def test_a_damaged_region_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog, part, how):
    images = synthetic.generate(3, 32, 48, seed=0)[0]
    first = build_regions(region_cfg("slic", num_superpixels=20), images, str(tmp_path), KEY)
    maps, counts = np.array(first.maps), np.array(first.counts)
    entry = tmp_path / "regions" / f"{first.key}-{part}.npy"
    _shorten(entry, how)
    with caplog.at_level(logging.WARNING):
        again = build_regions(region_cfg("slic", num_superpixels=20), images, str(tmp_path), KEY)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(entry) in r.getMessage()]
    np.testing.assert_array_equal(again.maps, maps)
    np.testing.assert_array_equal(again.counts, counts)


def test_a_cache_entry_of_another_shape_is_rebuilt(tmp_path, caplog):
    path = tmp_path / "x-a.npy"
    np.save(path, np.zeros((2, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        arrays = cache.cached_memmaps(tmp_path, "x", {"a": ((4, 3), np.uint8)}, lambda a: a["a"].fill(5))
    assert arrays["a"].shape == (4, 3) and (arrays["a"] == 5).all()
    assert "shape (2, 3) where (4, 3) is expected" in caplog.text
    np.save(tmp_path / "costs.npy", np.arange(5))
    _shorten(tmp_path / "costs.npy", "truncated")
    np.testing.assert_array_equal(cache.cached_array(tmp_path, "costs", lambda: np.arange(6)), np.arange(6))


# ---- a full disk ------------------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("step", ["open_memmap", "posix_fallocate", "replace"])
def test_a_full_disk_while_writing_the_image_cache_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, step):
    make_camvid(tmp_path / "camvid")
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[12, 16])
    monkeypatch.setattr(np.lib.format if step == "open_memmap" else os, step, _no_space)
    with pytest.raises(AlsegError) as err:
        load_dataset(cfg)
    entry = re.escape(str(tmp_path / "cache" / "data")) + r"/camvid-train-\S+-images\.npy"
    assert re.fullmatch(f"no space left on device while writing {entry}: free space or set dataset\\.cache_dir",
                        str(err.value))
    assert err.value.__suppress_context__  # one line, not three chained tracebacks
    assert files_in(tmp_path / "cache") == []


@pytest.mark.parametrize("step", ["posix_fallocate", "open_memmap", "replace"])
def test_a_full_disk_while_building_regions_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, step):
    images = synthetic.generate(3, 32, 48, seed=0)[0]
    monkeypatch.setattr(np.lib.format if step == "open_memmap" else os, step, _no_space)
    with pytest.raises(AlsegError, match=r"^no space left on device while writing .*: free space or set "
                                         r"dataset\.cache_dir$"):
        build_regions(region_cfg("seeds", num_superpixels=20), images, str(tmp_path), KEY)
    assert files_in(tmp_path) == []


def test_a_full_disk_while_saving_an_array_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", _no_space)
    with pytest.raises(AlsegError, match=re.escape(NO_SPACE.format(tmp_path / "costs" / "c.npy"))):
        cache.cached_array(tmp_path, "costs/c", lambda: np.arange(3))
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_region_build_that_raises_leaves_nothing(tmp_path, error):
    images = synthetic.generate(4, 32, 48, seed=0)[0]
    calls = []

    def compute(image):
        calls.append(1)
        if len(calls) == 3:
            raise error("stopped")
        return np.zeros(image.shape[:2], np.int32)

    with pytest.raises(error):
        build_module.cached_maps(tmp_path, "test", images, compute, "test")
    assert files_in(tmp_path) == []


# ---- a bad dataset.root -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["camvid", "cityscapes", "voc", "folder"])
@pytest.mark.parametrize("what", ["a symbolic link loop", "not a folder", "cannot be read"])
def test_a_bad_root_is_one_line_naming_it(tmp_path, monkeypatch, name, what):
    root = tmp_path / "root"
    if what == "a symbolic link loop":
        root.symlink_to(root)
    elif what == "not a folder":
        root.write_text("a file")
    else:
        root.mkdir()
        scandir = os.scandir

        def unreadable(path="."):  # chmod 0 does not stop root, so the refusal is simulated
            if Path(path) == root:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", unreadable)
    with pytest.raises(AlsegError) as err:
        load_dataset(dataset_cfg(name, root, tmp_path, class_names=["a", "b"]))
    message = str(err.value)
    assert "\n" not in message and f"dataset.root {root} " in message
    assert what.split()[-1] in message


def test_an_unreadable_split_list_is_one_line(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.zeros((4, 4, 3), np.uint8))
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), np.zeros((4, 4), np.uint8))
        (root / "splits" / ("train.txt" if stem == "a" else "val.txt")).write_text(stem)
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self.name == "val.txt":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(AlsegError, match=re.escape(f"cannot read {root / 'splits' / 'val.txt'}: Permission denied")):
        load_dataset(dataset_cfg("folder", root, tmp_path, class_names=["a"]))


# ---- empty splits -------------------------------------------------------------------------------
@pytest.mark.parametrize("count,split", [("num_val", "'val'"), ("num_train", "'train'")])
def test_an_empty_synthetic_split_names_the_split_and_the_fix(tmp_path, count, split):
    cfg = dataset_cfg("synthetic", None, tmp_path, size=[16, 24], num_train=2, num_val=2)
    cfg[count] = 0
    with pytest.raises(AlsegError, match=f"split {split} holds no images; set dataset.{count} to 1 or more"):
        load_dataset(cfg)
    cfg[count] = -1
    with pytest.raises(AlsegError, match=f"dataset.{count} must be a number of images"):
        load_dataset(cfg)


def test_an_empty_evaluation_split_of_any_dataset_is_an_error(tmp_path, monkeypatch):
    empty = Split(np.zeros((0, 4, 4, 3), np.uint8), np.zeros((0, 4, 4), np.uint8))
    full = Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 4), np.uint8))
    palette = np.zeros((1, 3), np.uint8)
    monkeypatch.setitem(DATASETS, "mine", lambda cfg: SegDataset("mine", ("a",), palette, full, empty))
    with pytest.raises(AlsegError, match=r"evaluation split 'test' holds no images; .*dataset\.eval_split"):
        load_dataset(OmegaConf.create({"name": "mine", "eval_split": "test"}))


def test_a_run_with_an_empty_evaluation_split_fails_before_training(make_cfg, tmp_path):
    from alseg.experiment import run

    with pytest.raises(AlsegError, match="num_val"):
        run(make_cfg("dataset.num_val=0"), tmp_path / "run")
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()


# ---- the cores a job may use ------------------------------------------------------------------
def test_usable_cpus_follow_the_affinity_and_slurm(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert cpus.usable_cpus() == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert cpus.usable_cpus() == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert cpus.usable_cpus() == 4


def test_decoding_and_region_builds_use_the_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    pools = []

    class Recording(ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(cpus, "ThreadPoolExecutor", Recording)
    make_camvid(tmp_path / "camvid")
    data = load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=[12, 16]))
    build_regions(region_cfg("slic", num_superpixels=8), np.asarray(data.train.images), str(tmp_path), KEY)
    assert pools == [1, 1, 1]  # train, val, regions


@pytest.mark.parametrize("step", ["decoding", "region maps", "precise click costs"])
def test_a_parallel_step_that_stops_drops_its_queued_images(tmp_path, monkeypatch, step):
    """A signal or a bad image in one task ends the step without working through the images
    still queued (a whole split of Cityscapes would hold a SIGTERM back for minutes)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one thread: tasks run in order
    images, truth = synthetic.generate(12, 16, 24, seed=0)[:2]
    calls = []

    def failing(*args):  # the first image stops the step; each later one takes a second
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        time.sleep(1.0)
        return np.zeros(images.shape[1:3], np.int32)

    with pytest.raises(KeyboardInterrupt):
        if step == "decoding":
            monkeypatch.setattr(decode_module, "_decode_one", failing)
            decode_module._decode_into(None, [None] * 12, (16, 24), True, images.copy(), truth.copy(), "test")
        elif step == "region maps":
            build_module.cached_maps(tmp_path, "test", images, failing, "test")
        else:
            monkeypatch.setattr(oracle, "region_costs", failing)
            regions = build_regions(region_cfg("slic", num_superpixels=8), images, str(tmp_path), KEY)
            oracle.precise_costs(regions, truth, 1.0)
    assert len(calls) <= 2  # the failed image, and at most the one its thread took up next
