import numpy as np
import torch

from alseg.metrics import confusion, iou_per_class, miou, pixel_accuracy


def test_confusion_skips_ignored_pixels():
    pred = torch.tensor([0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 2, 255, 0])
    cm = confusion(pred, target, 3).numpy()
    assert cm.tolist() == [[2, 0, 0], [0, 1, 0], [0, 1, 0]]


def test_miou_worked_by_hand():
    # truth rows, prediction columns; class 3 absent from both truth and prediction
    cm = np.array([
        [8, 2, 0, 0],   # class 0: TP 8, FN 2, FP 1      -> 8 / 11
        [1, 3, 1, 0],   # class 1: TP 3, FN 2, FP 2 + 0  -> 3 / 7
        [0, 0, 0, 0],   # class 2: TP 0, FN 0, FP 1      -> 0 / 1
        [0, 0, 0, 0],   # class 3: absent                -> left out
    ])
    iou = iou_per_class(cm)
    assert np.allclose(iou[:3], [8 / 11, 3 / 7, 0.0])
    assert np.isnan(iou[3])
    assert np.isclose(miou(cm), 100 * (8 / 11 + 3 / 7 + 0) / 3)
    assert np.isclose(pixel_accuracy(cm), 100 * 11 / 15)
