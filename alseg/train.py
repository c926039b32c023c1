"""One cycle of training on the revealed labels (optionally with pseudo-labels from the
previous cycle's model), and evaluation over a whole split."""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from alseg.data.base import IGNORE, NativeLabels
from alseg import placement
from alseg.device import upload
from alseg.errors import AlsegError
from alseg.metrics import confusion
from alseg.augment import augment
from alseg.model import autocast, normalise, to_input
from alseg.placement import Streamed
from alseg.pool import MAX_CLASSES, NO_LABEL, NOT_ASKED, training_targets

log = logging.getLogger(__name__)

# In the targets of train.semi=pseudo_label, a pixel never asked: a code no class id reaches
# (alseg.pool.MAX_CLASSES), kept apart from IGNORE (void, crop padding) through augmentation.
UNASKED = MAX_CLASSES


def train_cycle(
    model: torch.nn.Module,
    images: torch.Tensor | Streamed,
    revealed: np.ndarray | torch.Tensor | Streamed,
    cfg,
    generator: torch.Generator,
    cycle: int = 0,
    report=None,
    teacher: torch.nn.Module | None = None,
) -> int:
    """Train `model` with cross-entropy on revealed pixels only, over the images that have any:
    `cfg.epochs` passes over them, or exactly `cfg.iterations` optimiser steps (batches drawn
    from them, so that every strategy trains equally long). Returns the steps taken; a loss
    that is not finite stops the run (training diverged). About five times per cycle,
    `report(step, steps, mean_loss, lr)` hears the progress (alseg.callbacks). A `teacher`
    (train.semi=pseudo_label, see make_teacher) adds a pseudo-label term on the pixels of these
    images that were never asked (`_loss`); the batches and steps stay the same. `images` and
    `revealed` are on the device or `Streamed` from host memory (alseg.placement); a numpy
    `revealed` is copied to the device."""
    device = images.device
    if isinstance(revealed, np.ndarray):
        revealed = torch.from_numpy(revealed).to(device)
    labelled = _labelled_images(placement.host_view(revealed))
    if len(labelled) == 0:
        raise ValueError("no labelled pixels to train on")
    batches, per_epoch = _batches(labelled, cfg, generator)
    optimiser = make_optimiser(model, cfg)
    schedule = make_schedule(optimiser, cfg, len(batches), per_epoch)
    precision = autocast(device)
    scaler = torch.amp.GradScaler(enabled=precision.fast_dtype == torch.float16 and device.type == "cuda")
    average = WeightAverage(model, float(cfg.ema)) if cfg.get("ema") else None
    model.train()
    start = time.perf_counter()
    every = max(1, len(batches) // 5)
    total, count = torch.zeros((), device=device), 0
    for step, (batch_images, batch_revealed) in enumerate(placement.batches([images, revealed], batches), start=1):
        targets = training_targets(batch_revealed, device)
        if teacher is not None:
            targets = targets.masked_fill(batch_revealed == NOT_ASKED, UNASKED)
        x, y = augment(batch_images.permute(0, 3, 1, 2).float(), targets, cfg.augment, generator)
        loss = _loss(model, teacher, normalise(x), y, cfg, precision)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        if average is not None:
            average.update()
        total, count = total + loss.detach(), count + 1
        if step % every == 0 or step == len(batches):
            mean = total.item() / count  # one sync per report, not per step
            if not math.isfinite(mean):
                raise AlsegError(f"training diverged in cycle {cycle}: the loss became {mean} by step {step} of "
                                 f"{len(batches)}; lower train.lr (now {cfg.lr})")
            log.info("  step %d/%d (epoch %.1f)  loss %.3f  (%.1fs)", step, len(batches), step / per_epoch, mean,
                     time.perf_counter() - start)
            if report is not None:
                report(step, len(batches), mean, optimiser.param_groups[0]["lr"])
            total, count = torch.zeros((), device=device), 0
    if average is not None:
        average.finish()
    return len(batches)


def _labelled_images(revealed: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Indices (a CPU tensor) of the images with any revealed class label."""
    return torch.nonzero(torch.as_tensor((revealed < NO_LABEL).reshape(len(revealed), -1).any(1)).cpu()).flatten()


class WeightAverage:
    """An exponential moving average of the weights (`train.ema` = its decay), with the usual
    warm-up decay_t = min(decay, (1 + t) / (10 + t)) so that the first steps fade fast. It
    smooths the end of training, where one last noisy step would otherwise decide a cycle's
    mIoU; `finish` loads the average into the model (batch-norm statistics stay the model's)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def finish(self) -> None:
        for p, a in zip(self.params, self.average):
            p.copy_(a)


def _loss(model: torch.nn.Module, teacher, x: torch.Tensor, y: torch.Tensor, cfg, precision) -> torch.Tensor:
    """One batch's loss: cross-entropy on the revealed pixels of the (augmented) batch `x`, `y`;
    with a teacher, plus `train.pseudo_weight` x pseudo_label_loss, the teacher labelling the
    same augmented `x` in inference mode (pixels marked UNASKED in `y` are the unlabelled ones)."""
    if teacher is not None:
        unasked = y == UNASKED
        y = y.masked_fill(unasked, IGNORE)
        with torch.inference_mode(), precision:
            labels, keep = pseudo_labels(teacher(x).float().softmax(dim=1), unasked, cfg.pseudo_threshold)
        labels, keep = labels.clone(), keep.clone()  # plain tensors: the loss keeps them for backward
    with precision:
        logits = model(x).float()
        # a mean over the labelled pixels that is 0, not NaN, when a crop left none in the batch
        loss = F.cross_entropy(logits, y.long(), ignore_index=IGNORE, reduction="sum") / (y != IGNORE).sum().clamp_min(1)
        if teacher is not None:
            loss = loss + cfg.pseudo_weight * pseudo_label_loss(logits, labels, keep, unasked)
    return loss


def pseudo_labels(probs: torch.Tensor, unasked: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's pseudo-labels (argmax of `probs` [B, C, H, W]) and where they count: the
    pixels never asked whose confidence (max probability) exceeds `threshold`, [B, H, W] each."""
    confidence, labels = probs.max(dim=1)
    return labels, unasked & (confidence > threshold)


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, unasked: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits` against `labels` summed over the `keep` pixels, divided by the
    number of pixels never asked (FixMatch's masked mean: the term grows with the share of
    confident pixels instead of giving a few confident pixels the weight of all)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return ce[keep].sum() / unasked.sum().clamp_min(1)


def make_teacher(model: torch.nn.Module, cfg, cycle: int) -> torch.nn.Module | None:
    """With train.semi=pseudo_label, from cycle 1 on: a frozen copy of `model` as the previous
    cycle trained it (take it before re-initialising the model); None otherwise."""
    if cfg.get("semi", "none") != "pseudo_label" or cycle == 0:
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


def _batches(labelled: torch.Tensor, cfg, generator: torch.Generator) -> tuple[list[torch.Tensor], int]:
    """The batches of image indices of one cycle, and the batches per epoch. With
    `cfg.iterations`, that many full batches cut from consecutive random orders of the
    labelled images (an image repeats within a batch only when fewer than a batch hold labels).
    With `cfg.epochs`, each epoch one random order cut into batches; a last batch of one image
    is dropped, as batch norm cannot train on it (DeepLabV3+'s image pooling)."""
    n, size = len(labelled), int(cfg.batch_size)
    if cfg.get("iterations"):
        steps = int(cfg.iterations)
        orders = torch.rand(math.ceil(steps * size / n), n, generator=generator).argsort(dim=1)
        return list(labelled[orders.flatten()][: steps * size].view(steps, size)), max(1, math.ceil(n / size))
    batches = []
    for _ in range(int(cfg.epochs)):
        chunks = labelled[torch.randperm(n, generator=generator)].split(size)
        batches += [c for c in chunks if len(c) > 1 or n == 1]
    return batches, max(1, len(batches) // int(cfg.epochs))


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


def make_schedule(optimiser: torch.optim.Optimizer, cfg, steps: int, per_epoch: int):
    """`train.schedule`: constant | step (x gamma at train.milestones: epochs, scaled by the
    batches per epoch, or steps when train.iterations is set) | poly ((1 - step/steps) ** 0.9)."""
    per_epoch = 1 if cfg.get("iterations") else per_epoch
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    if cfg.schedule == "step":
        milestones = [int(m) * per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=cfg.gamma)
    if cfg.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (1 - min(step, steps - 1) / steps) ** 0.9)
    raise AlsegError(f"train.schedule must be constant, step or poly, got {cfg.schedule!r}")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor | Streamed, labels: torch.Tensor | Streamed, num_classes: int,
             batch_size: int, native: NativeLabels | None = None) -> np.ndarray:
    """One confusion matrix [C, C] accumulated over the whole split: against `labels` at the
    working size, or with `native` (dataset.eval_size=native) against each image's labels at
    their original size, the logits upsampled (bilinear) to it."""
    model.eval()
    device = images.device
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    slices = [slice(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
    for batch, (x, y) in zip(slices, placement.batches([images, None if native else labels], slices)):
        with autocast(device):
            logits = model(to_input(x))
        if native is None:
            cm += confusion(logits.argmax(dim=1), y, num_classes)
            continue
        for i, scores in zip(range(batch.start, batch.stop), logits):
            truth = upload(torch.from_numpy(native[i]), device)
            pred = F.interpolate(scores[None].float(), size=truth.shape, mode="bilinear", align_corners=False)
            cm += confusion(pred[0].argmax(dim=0), truth, num_classes)
    return cm.cpu().numpy()
