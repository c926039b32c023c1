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
from alseg import distributed, placement
from alseg.device import upload
from alseg.errors import AlsegError, check_interrupted
from alseg.metrics import confusion
from alseg.augment import augment
from alseg.model import autocast, normalise, to_input
from alseg.placement import Streamed
from alseg.pool import MAX_CLASSES, NO_LABEL, NOT_ASKED, training_targets
from alseg.progress import Progress

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
    label_sets: np.ndarray | None = None,
) -> int:
    """Train `model` with cross-entropy on revealed pixels only, over the images that have any:
    `cfg.epochs` passes over them, or exactly `cfg.iterations` optimiser steps (batches drawn
    from them, so that every strategy trains equally long). Returns the steps taken. A `teacher`
    (train.semi=pseudo_label, see make_teacher) adds a pseudo-label term on the pixels of these
    images that were never asked (`_loss`); the batches and steps stay the same. `label_sets`
    (alseg.pool.Pool.label_table, annotation=multiclass) turns the cross-entropy into the merged
    positive loss over each pixel's named classes. `images` and `revealed` are on the device or
    `Streamed` from host memory (alseg.placement); a numpy `revealed` is copied to the device.
    Over several processes (alseg.distributed) each trains its slice of every batch under DDP."""
    device = images.device
    if isinstance(revealed, np.ndarray):
        revealed = torch.from_numpy(revealed).to(device)
    labelled = _labelled_images(placement.host_view(revealed))
    if len(labelled) == 0:
        raise ValueError("no labelled pixels to train on")
    batches, per_epoch = _batches(labelled, cfg, generator)
    net = distributed.wrap(model)  # over several processes: DDP, each on its slice of every batch
    optimiser = make_optimiser(model, cfg)
    schedule = make_schedule(optimiser, cfg, len(batches), per_epoch)
    precision = autocast(device)
    scaler = torch.amp.GradScaler(enabled=precision.fast_dtype == torch.float16 and device.type == "cuda")
    average = WeightAverage(model, float(cfg.ema)) if cfg.get("ema") else None
    weights = class_weights(placement.host_view(revealed), device) if cfg.get("class_weights", "none") != "none" else None
    net.train()
    reports = _Reports(len(batches), per_epoch, cycle, cfg.lr, report, device)
    table = None if label_sets is None else torch.from_numpy(label_sets).to(device)
    parts = [distributed.part(len(b)) for b in batches]  # this process's slice of every batch
    sources = placement.batches([images, revealed, table], [b[part] for b, part in zip(batches, parts)])
    for step, (batch, part, (x, batch_revealed, sets)) in enumerate(zip(batches, parts, sources), start=1):
        targets = training_targets(batch_revealed, device)
        if teacher is not None:
            targets = targets.masked_fill(batch_revealed == NOT_ASKED, UNASKED)
        x, y = augment(x.permute(0, 3, 1, 2).float(), targets, cfg.augment, generator, part, len(batch))
        loss = _loss(net, teacher, normalise(x), y, cfg, precision, sets, weights)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        if average is not None:
            average.update()
        reports.add(step, loss, optimiser)
    if average is not None:
        average.finish()
    distributed.same_weights(model)
    return len(batches)


class _Reports:
    """A cycle's training loss, heard once per epoch (at most ~100 times a cycle, one sync
    each): about five log lines, the progress bar and `report(step, steps, mean_loss, lr)`
    (alseg.callbacks). A loss that is not finite stops the run (training diverged)."""

    def __init__(self, steps: int, per_epoch: int, cycle: int, lr: float, report, device: torch.device) -> None:
        self.steps, self.per_epoch, self.cycle, self.lr, self.report = steps, per_epoch, cycle, lr, report
        self.every = max(per_epoch, steps // 100)
        self.log_every = max(self.every, steps // 5)
        self.progress = Progress(f"cycle {cycle} training", steps, "steps", every=None)  # a bar on a terminal
        self.total, self.count, self.start = torch.zeros((), device=device), 0, time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, optimiser: torch.optim.Optimizer) -> None:
        self.total, self.count = self.total + loss.detach(), self.count + 1
        self.progress.tick()
        if step % self.every and step != self.steps:
            return
        check_interrupted()
        mean = distributed.mean(self.total).item() / self.count  # one sync per report, not per step
        if not math.isfinite(mean):
            raise AlsegError(f"training diverged in cycle {self.cycle}: the loss became {mean} by step {step} of "
                             f"{self.steps}; lower train.lr (now {self.lr})")
        if step % self.log_every < self.every or step == self.steps:
            log.info("  step %d/%d (epoch %.1f)  loss %.3f  (%.1fs)", step, self.steps, step / self.per_epoch, mean,
                     time.perf_counter() - self.start)
        self.progress.show(loss=f"{mean:.3f}")
        if self.report is not None:
            self.report(step, self.steps, mean, optimiser.param_groups[0]["lr"])
        self.total, self.count = torch.zeros_like(self.total), 0
        if step == self.steps:
            self.progress.close()


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


def _loss(model: torch.nn.Module, teacher, x: torch.Tensor, y: torch.Tensor, cfg, precision,
          table: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's loss: cross-entropy on the revealed pixels of the (augmented) batch `x`, `y`
    (each pixel weighted by its class's `weights`, see class_weights, in a weighted mean; with
    label sets `table` [B, codes, C], the merged positive loss); with a teacher, plus
    `train.pseudo_weight` x pseudo_label_loss, the teacher labelling the same augmented `x` in
    inference mode (pixels marked UNASKED in `y` are the unlabelled ones)."""
    if teacher is not None:
        unasked = y == UNASKED
        y = y.masked_fill(unasked, IGNORE)
        with torch.inference_mode(), precision:
            labels, keep = pseudo_labels(teacher(x).float().softmax(dim=1), unasked, cfg.pseudo_threshold)
        labels, keep = labels.clone(), keep.clone()  # plain tensors: the loss keeps them for backward
    with precision:
        logits = model(x).float()
        # a mean over the labelled pixels that is 0, not NaN, when a crop left none in the batch
        if table is None and weights is None:
            loss = F.cross_entropy(logits, y.long(), ignore_index=IGNORE, reduction="sum") / (y != IGNORE).sum().clamp_min(1)
        elif table is None:  # the weighted mean: over the labelled pixels' weights (0 at IGNORE)
            target = y.long()
            loss = (F.cross_entropy(logits, target, weight=weights[: logits.shape[1]], ignore_index=IGNORE,
                                    reduction="sum") / weights[target].sum().clamp_min(1e-12))
        else:
            loss = merged_positive_loss(logits, y, table)
        if teacher is not None:
            loss = loss + cfg.pseudo_weight * pseudo_label_loss(logits, labels, keep, unasked)
    return loss


def class_weights(revealed: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """`train.class_weights=median_frequency`: median frequency balancing (Eigen & Fergus 2015,
    as SegNet trains on CamVid) over the labels revealed so far, w_c = median(f) / f_c, where
    f_c is class c's revealed pixels over all revealed pixels of the images that hold c (the
    median over the classes with any). Returns 256 weights on `device`, indexed by class id: 0
    for a class none of whose pixels is revealed, for NO_LABEL and for IGNORE. Counted on the
    device or the host where `revealed` lives, about 4 M pixels at a time."""
    revealed = torch.as_tensor(revealed)
    chunk = max(1, 2**22 // max(1, revealed[0].numel()))
    counts = torch.cat([torch.bincount((torch.arange(len(part), device=part.device)[:, None] * 256
                                        + part.flatten(1).long()).flatten(), minlength=256 * len(part)).view(-1, 256)
                        for part in revealed.split(chunk)])[:, :NO_LABEL].double()  # [N, class ids]
    held = counts.sum(0)
    frequency = held / ((counts > 0) * counts.sum(1, keepdim=True)).sum(0).clamp_min(1)
    present = held > 0
    weights = torch.zeros(256, dtype=torch.float64, device=counts.device)
    if present.any():
        weights[:NO_LABEL][present] = frequency[present].quantile(0.5) / frequency[present]
    return weights.float().to(device)


def merged_positive_loss(logits: torch.Tensor, y: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Hwang et al.'s merged positive loss (NeurIPS 2023) for multi-class labels: the mean over
    labelled pixels of -log(sum of the softmax probabilities of the classes named for the pixel).
    `logits` [B, C, H, W]; `y` [B, H, W] label-set codes (IGNORE where not labelled); `table`
    [B, codes, C] bool, the classes each code names in each image (alseg.pool.Pool.label_table).
    A one-class set gives exactly the cross-entropy."""
    labelled = y < table.shape[1]
    image = torch.arange(len(y), device=y.device)[:, None, None]
    # every class counts where nothing is labelled (no -inf there); no boolean indexing: no device sync
    named = table[image, y.long().clamp_max(table.shape[1] - 1)].permute(0, 3, 1, 2) | ~labelled[:, None]
    log_named = torch.logsumexp(logits.masked_fill(~named, -math.inf), dim=1) - torch.logsumexp(logits, dim=1)
    return -torch.where(labelled, log_named, 0.0).sum() / labelled.sum().clamp_min(1)


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
    is dropped, as batch norm cannot train on it (DeepLabV3+'s image pooling), and over several
    processes one with fewer images than processes (each needs one)."""
    n, size = len(labelled), int(cfg.batch_size)
    if cfg.get("iterations"):
        steps = int(cfg.iterations)
        orders = torch.rand(math.ceil(steps * size / n), n, generator=generator).argsort(dim=1)
        return list(labelled[orders.flatten()][: steps * size].view(steps, size)), max(1, math.ceil(n / size))
    batches, least = [], 1 if n == 1 == distributed.world() else max(2, distributed.world())
    for _ in range(int(cfg.epochs)):
        chunks = labelled[torch.randperm(n, generator=generator)].split(size)
        batches += [c for c in chunks if len(c) >= least]
    if not batches:
        raise AlsegError(f"{n} labelled image(s) cannot make a batch for each of the {distributed.world()} processes: "
                         "use train.iterations (batches repeat images), or fewer devices")
    return batches, max(1, len(batches) // int(cfg.epochs))


def make_optimiser(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """`train.optimizer` adam | sgd over the trainable parameters (a frozen encoder has none);
    `train.encoder_lr` (if set) for the encoder's, as PixelPick trains the pretrained encoder
    10x slower."""
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    slower = [p for p in encoder.parameters() if p.requires_grad] if encoder is not None and cfg.get("encoder_lr") else []
    skip = {id(p) for p in slower}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in skip], "lr": cfg.lr}]
    if slower:
        groups.append({"params": slower, "lr": cfg.encoder_lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise AlsegError(f"train.optimizer must be adam or sgd, got {cfg.optimizer!r}")


def make_schedule(optimiser: torch.optim.Optimizer, cfg, steps: int, per_epoch: int):
    """`train.schedule`: constant | step (x gamma at train.milestones: epochs, scaled by the
    batches per epoch, or steps when train.iterations is set) | poly ((1 - step/steps) ** 0.9) |
    cosine ((1 + cos(pi step/steps)) / 2)."""
    per_epoch = 1 if cfg.get("iterations") else per_epoch
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    if cfg.schedule == "step":
        milestones = [int(m) * per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones, gamma=cfg.gamma)
    if cfg.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (1 - min(step, steps - 1) / steps) ** 0.9)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    raise AlsegError(f"train.schedule must be constant, step, poly or cosine, got {cfg.schedule!r}")


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
