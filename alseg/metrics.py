"""Confusion matrices and the scores derived from them."""
from __future__ import annotations

import numpy as np
import torch

from alseg.data.base import IGNORE


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion counts [C, C] (rows = truth, columns = prediction); ignored pixels skipped."""
    keep = target != IGNORE
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class, NaN for classes absent from both truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction, as a percentage."""
    return float(np.nanmean(iou_per_class(cm)) * 100)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of correctly predicted (non-ignored) pixels, as a percentage."""
    cm = np.asarray(cm, dtype=np.float64)
    return float(np.trace(cm) / max(cm.sum(), 1) * 100)
