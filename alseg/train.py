"""One cycle of training on the revealed labels, and evaluation over a whole split."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from alseg.data.base import IGNORE
from alseg.metrics import confusion
from alseg.model import to_input

log = logging.getLogger(__name__)


def trainable_targets(revealed: np.ndarray, device: torch.device) -> torch.Tensor:
    """Revealed labels as training targets: 'not asked' (255) and 'asked, no label' (254) ignored."""
    targets = torch.from_numpy(np.asarray(revealed)).to(device)
    return torch.where(targets >= 254, IGNORE, targets)


def train_cycle(
    model: torch.nn.Module,
    images: torch.Tensor,
    revealed: np.ndarray,
    cfg,
    generator: torch.Generator,
) -> float:
    """Train `model` for `cfg.epochs` epochs with cross-entropy on revealed pixels only,
    over the images that have any; returns the last epoch's mean loss."""
    device = images.device
    targets = trainable_targets(revealed, device)
    labelled = torch.nonzero((targets != IGNORE).flatten(1).any(dim=1)).flatten().cpu()
    if len(labelled) == 0:
        raise ValueError("no labelled pixels to train on")
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = labelled[torch.randperm(len(labelled), generator=generator)]
        total, batches = 0.0, 0
        for chunk in order.split(cfg.batch_size):
            x, y = to_input(images[chunk.to(device)]), targets[chunk.to(device)]
            if cfg.hflip:
                flip = (torch.rand(len(chunk), generator=generator) < 0.5).to(device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
            loss = F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
        if (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            log.info("  epoch %d/%d  loss %.3f  (%.1fs)", epoch + 1, cfg.epochs, total / batches, time.perf_counter() - start)
    return total / batches


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int) -> np.ndarray:
    """One confusion matrix [C, C] accumulated over the whole split."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        with torch.autocast(images.device.type, enabled=images.device.type == "cuda"):
            logits = model(to_input(images[start : start + batch_size]))
        cm += confusion(logits.argmax(dim=1), labels[start : start + batch_size], num_classes)
    return cm.cpu().numpy()
