"""One cycle of training on the revealed labels, and evaluation over a whole split."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from alseg.data.base import IGNORE
from alseg.device import upload
from alseg.errors import AlsegError
from alseg.metrics import confusion
from alseg.augment import augment
from alseg.model import autocast, normalise, to_input

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
    optimiser = make_optimiser(model, cfg)
    steps = cfg.epochs * math.ceil(len(labelled) / cfg.batch_size)
    schedule = make_schedule(optimiser, cfg, steps)
    precision = autocast(device)
    scaler = torch.amp.GradScaler(enabled=precision.fast_dtype == torch.float16 and device.type == "cuda")
    model.train()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = upload(labelled[torch.randperm(len(labelled), generator=generator)], device)
        total, batches = torch.zeros((), device=device), 0
        for chunk in order.split(cfg.batch_size):
            if len(chunk) == 1 < len(order):
                continue  # batch norm cannot train on a batch of one (DeepLabV3+'s image pooling)
            x, y = augment(images[chunk].permute(0, 3, 1, 2).float(), targets[chunk], cfg.augment, generator)
            x = normalise(x)
            with precision:
                loss = F.cross_entropy(model(x).float(), y.long(), ignore_index=IGNORE)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            total, batches = total + loss.detach(), batches + 1
        if (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            log.info("  epoch %d/%d  loss %.3f  (%.1fs)", epoch + 1, cfg.epochs, total.item() / batches, time.perf_counter() - start)
    return total.item() / batches


def make_optimiser(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """`train.optimizer` adam | sgd; `train.encoder_lr` (if set) for the encoder's parameters,
    as PixelPick trains the pretrained encoder 10x slower."""
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    enc_params = {id(p) for p in encoder.parameters()} if encoder is not None and cfg.get("encoder_lr") else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in enc_params], "lr": cfg.lr}]
    if enc_params:
        groups.append({"params": list(encoder.parameters()), "lr": cfg.encoder_lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise AlsegError(f"train.optimizer must be adam or sgd, got {cfg.optimizer!r}")


def make_schedule(optimiser: torch.optim.Optimizer, cfg, steps: int):
    """`train.schedule`: constant | step (x gamma at the epochs in train.milestones, scaled
    to steps) | poly ((1 - step/steps) ** 0.9)."""
    per_epoch = max(1, steps // cfg.epochs)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    if cfg.schedule == "step":
        milestones = [int(m) * per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=cfg.gamma)
    if cfg.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (1 - min(step, steps - 1) / steps) ** 0.9)
    raise AlsegError(f"train.schedule must be constant, step or poly, got {cfg.schedule!r}")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int) -> np.ndarray:
    """One confusion matrix [C, C] accumulated over the whole split."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        with autocast(images.device):
            logits = model(to_input(images[start : start + batch_size]))
        cm += confusion(logits.argmax(dim=1), labels[start : start + batch_size], num_classes)
    return cm.cpu().numpy()
