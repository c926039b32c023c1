"""dataset.eval_size=native: logits upsampled (bilinear) to each label map's original size,
checked against an mIoU worked out by hand on images whose native size is not the working size."""
import numpy as np
import pandas as pd
import pytest
import torch

from alseg.data import load_dataset
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.train import evaluate
from test_datasets import cache_files, dataset_cfg, write_gray, write_rgb

WORKING = (6, 8)
NATIVE = [(12, 16), (18, 24)]  # the val images' sizes: two of them, neither the working size
CLASSES = 11


def make_camvid(root) -> list[np.ndarray]:
    """CamVid layout: 2 train images at 12x16, val images at NATIVE sizes whose label is a
    class per column (x % 3, with void in the first row); returns the val labels."""
    rng = np.random.default_rng(0)
    for i in range(2):
        write_rgb(root / "train" / f"a_{i}.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        write_gray(root / "trainannot" / f"a_{i}.png", rng.integers(0, 11, (12, 16), dtype=np.uint8))
    labels = []
    for i, (h, w) in enumerate(NATIVE):
        label = np.tile(np.arange(w, dtype=np.uint8) % 3, (h, 1))
        label[0] = 11  # void: never scored
        write_rgb(root / "val" / f"b_{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_gray(root / "valannot" / f"b_{i}.png", label)
        labels.append(label)
    return labels


# class c's logit in each working column: class 0 left, 1 in the middle, 2 right, with
# unequal heights so that no upsampled pixel ties
COLUMNS = np.zeros((CLASSES, WORKING[1]), np.float32)
COLUMNS[0, :3], COLUMNS[1, 3:5], COLUMNS[2, 5:] = 1.0, 2.0, 3.0


class ColumnModel(torch.nn.Module):
    def forward(self, x):
        logits = torch.from_numpy(COLUMNS)[None, :, None, :]
        return logits.expand(len(x), -1, x.shape[2], -1)


def by_hand(width: int) -> np.ndarray:
    """Predicted class per native column: bilinear interpolation (half-pixel centres) of COLUMNS."""
    src = np.maximum((np.arange(width) + 0.5) * WORKING[1] / width - 0.5, 0)
    left = np.floor(src).astype(int)
    right = np.minimum(left + 1, WORKING[1] - 1)
    weight = src - left
    return ((1 - weight) * COLUMNS[:, left] + weight * COLUMNS[:, right]).argmax(axis=0)


def miou_by_hand(labels: list[np.ndarray]) -> float:
    truth, pred = [], []
    for label in labels:
        keep = label != 11
        truth.append(label[keep])
        pred.append(np.broadcast_to(by_hand(label.shape[1]), label.shape)[keep])
    truth, pred = np.concatenate(truth), np.concatenate(pred)
    ious = [((truth == c) & (pred == c)).sum() / ((truth == c) | (pred == c)).sum()
            for c in range(CLASSES) if ((truth == c) | (pred == c)).any()]
    return float(np.mean(ious) * 100)


def test_native_evaluation_matches_an_miou_worked_out_by_hand(tmp_path):
    labels = make_camvid(tmp_path / "camvid")
    native = load_dataset(dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=list(WORKING), eval_size="native"))
    assert native.val.size == WORKING and [native.val.native[i].shape for i in range(2)] == NATIVE
    assert all(np.array_equal(native.val.native[i], np.where(labels[i] == 11, 255, labels[i])) for i in range(2))
    cm = evaluate(ColumnModel(), torch.from_numpy(np.asarray(native.val.images)),
                  torch.from_numpy(np.asarray(native.val.labels)), CLASSES, 1, native.val.native)
    with np.errstate(invalid="ignore"):
        iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert cm.sum() == sum((h - 1) * w for h, w in NATIVE)  # every pixel but the void row, at native size
    assert np.nanmean(iou) * 100 == pytest.approx(miou_by_hand(labels), abs=1e-9)
    working = evaluate(ColumnModel(), torch.from_numpy(np.asarray(native.val.images)),
                       torch.from_numpy(np.asarray(native.val.labels)), CLASSES, 2)
    assert working.sum() <= 2 * WORKING[0] * WORKING[1] and not np.array_equal(working, cm)


def test_native_labels_have_their_own_cache_entry_read_back_afterwards(tmp_path):
    make_camvid(tmp_path / "camvid")
    cfg = dataset_cfg("camvid", tmp_path / "camvid", tmp_path, size=list(WORKING))
    load_dataset(cfg)
    working = cache_files(tmp_path)
    cfg.eval_size = "native"
    first = load_dataset(cfg).val.native
    added = sorted(set(cache_files(tmp_path)) - set(working))
    assert len(added) == 4 and all("-val-6x8-native-" in name for name in added)  # images, labels, native, shapes
    again = load_dataset(cfg).val.native  # from the cache
    assert cache_files(tmp_path) == sorted([*working, *added])
    assert all(np.array_equal(first[i], again[i]) for i in range(2))


def test_a_run_evaluates_at_native_size_and_a_bad_value_is_a_user_error(make_cfg, tmp_path):
    make_camvid(tmp_path / "camvid")
    overrides = ["dataset=camvid", f"dataset.root={tmp_path / 'camvid'}", "dataset.size=[48,64]", "model=small",
                 "budget.initial=2", "budget.cycles=0", "train.epochs=1", "train.batch_size=2"]
    run(make_cfg(*overrides, "dataset.eval_size=native"), tmp_path / "run")
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1
    with pytest.raises(AlsegError, match=r"^dataset.eval_size must be working or native, got \"full\"$"):
        run(make_cfg(*overrides, "dataset.eval_size=full"), tmp_path / "bad")
