"""The active-learning loop: train -> score the pool -> ask the oracle -> retrain.

`run(cfg, out_dir)` takes a plain config (no Hydra runtime needed), so tests and notebooks
call it directly. Everything a run writes is described in README.md ("Outputs").
"""
from __future__ import annotations

import copy
import json
import math
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alseg import query
from alseg.data import load_dataset
from alseg.device import resolve_device
from alseg.errors import AlsegError, Refused
from alseg.metrics import iou_per_class, miou, pixel_accuracy
from alseg.model import build_model, check_model
from alseg.oracle import NO_LABEL, Oracle
from alseg.overlay import save_query_overlay
from alseg.pool import Pool, record_selection
from alseg.regions import Regions, build_regions
from alseg.rundir import RunFiles
from alseg.strategies import STRATEGIES, build_strategy, check_strategy, strategy_class
from alseg.train import evaluate, train_cycle

log = logging.getLogger(__name__)

BUDGETS = ("per_image", "clicks", "full")


def check_config(cfg: DictConfig) -> None:
    """Reject impossible settings before any work is done."""
    b = cfg.budget
    if b.name not in BUDGETS:
        raise AlsegError(f"unknown budget {b.name!r}; available: {', '.join(BUDGETS)}")
    if b.name != "full":
        if b.initial <= 0 or b.per_cycle <= 0 or b.cycles < 0:
            raise AlsegError("budget.initial and budget.per_cycle must be > 0 and budget.cycles >= 0")
        if b.name == "per_image" and (int(b.initial) != b.initial or int(b.per_cycle) != b.per_cycle):
            raise AlsegError("budget=per_image counts regions per image: budget.initial and budget.per_cycle must be integers")
    kind = strategy_class(cfg.strategy)
    if cfg.strategy.class_balance and not kind.needs_model:
        raise AlsegError("strategy.class_balance weights model scores by predicted class: use it with a model-based strategy, not random")
    top = cfg.strategy.top_percent
    if top is not None and not 0 < top <= 1:
        raise AlsegError(f"strategy.top_percent must be in (0, 1], got {top}")
    if top is not None and kind.uses_embeddings:
        raise AlsegError(f"strategy.top_percent samples at random among the top regions: it cannot be combined with {cfg.strategy.name}")
    if kind.uses_embeddings and cfg.region.name == "pixel" and b.name == "clicks":
        raise AlsegError(f"{cfg.strategy.name} with region=pixel works per image: use budget=per_image, or a region type with a map")
    if cfg.strategy.aggregate not in ("mean", "sum", "max"):
        raise AlsegError(f"strategy.aggregate must be mean, sum or max, got {cfg.strategy.aggregate!r}")
    if cfg.save_model not in ("last", "every", "never"):
        raise AlsegError(f"save_model must be last, every or never, got {cfg.save_model!r}")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise AlsegError("train.epochs and train.batch_size must be >= 1")


def run(cfg: DictConfig, out_dir: str | Path, record: Callable[[Path], None] | None = None) -> dict:
    """Run one experiment into `out_dir`, which it holds (locked) until it ends; returns the
    summary. Raises AlsegError for user errors, after recording `"status": "failed"` and the
    message in summary.json, or Refused, having changed nothing, when the directory is not
    this run's to use. A KeyboardInterrupt (or SIGTERM, through the CLI) records
    `"status": "interrupted"`. `record(out_dir)` is called before the run's first write."""
    out = Path(out_dir)
    info = {
        "dataset": cfg.dataset.name, "region": cfg.region.name, "annotation": cfg.annotation.name,
        "strategy": cfg.strategy.name, "budget": cfg.budget.name, "seed": int(cfg.seed),
    }
    rows: list[dict] = []
    with RunFiles(out, cfg, info, record) as files:
        start_cycle = files.prepare(rows)  # reads only: a refused run changes nothing
        if start_cycle is None:
            return json.loads((files.out / "summary.json").read_text())
        try:
            return _run(cfg, files, rows, start_cycle)
        except Refused:
            raise
        except BaseException as exc:
            error = files.end(exc, rows)
            if error is exc:
                raise
            raise error from exc


def _run(cfg: DictConfig, files: RunFiles, rows: list[dict], start_cycle: int) -> dict:
    check_config(cfg)
    device = resolve_device(cfg.device)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    data = load_dataset(cfg.dataset)
    files.check_data(data)
    files.write_summary("running", rows)
    n, (h, w), c = len(data.train), data.train.size, data.num_classes
    files.info.update(num_train_images=n, image_size=[h, w], class_names=list(data.class_names))
    regions = _train_regions(cfg, data)
    oracle = Oracle(cfg.annotation, regions, data.train.labels, c, rng)
    strategy = build_strategy(cfg.strategy)
    random_strategy = STRATEGIES["random"](cfg.strategy)
    check_strategy(strategy, c)
    models = _build_models(cfg, strategy, c, device)
    for model in models:
        _check_member(model, cfg, strategy, c, (h, w), device)
    initial_weights = [copy.deepcopy(m.state_dict()) for m in models]
    train_images = torch.from_numpy(np.asarray(data.train.images)).to(device)
    train_labels = torch.from_numpy(np.asarray(data.train.labels)).to(device)
    val_images = torch.from_numpy(np.asarray(data.val.images)).to(device)
    val_labels = torch.from_numpy(np.asarray(data.val.labels)).to(device)
    costs = oracle.costs()
    costs = None if costs is None else torch.from_numpy(costs).to(device)
    pool = Pool.empty(n, h, w)
    if start_cycle > 0:
        files.restore(pool, models, generator, rng)
    cycles = 0 if cfg.budget.name == "full" else int(cfg.budget.cycles)
    log.info("%s: %d train / %d val images of %dx%d, %d classes, %s regions, strategy %s, budget %s on %s",
             cfg.dataset.name, n, len(data.val), h, w, c, regions.name, strategy.cfg.name, cfg.budget.name, device)

    exhausted = None
    for cycle in range(start_cycle, cycles + 1):
        t0 = time.perf_counter()
        if cfg.budget.name == "full":
            pool.revealed[:] = np.where(data.train.labels == 255, NO_LABEL, data.train.labels)
            chosen = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            spent = float(regions.counts.sum() if costs is None else costs.sum().item())
            pool.regions += int(regions.counts.sum())
        else:
            chosen = _query(cycle, cfg, strategy, random_strategy, models, train_images, train_labels, pool, regions,
                            costs, generator, c)
            if len(chosen[0]) == 0:
                exhausted = f"the pool has no askable region left before cycle {cycle}; stopped after {cycle} cycles"
                log.warning("warning: %s", exhausted)
                break
            spent = oracle.reveal(pool.revealed, *chosen)
            pool.regions += len(chosen[0])
        pool.clicks += spent
        record_selection(files.state, cycle, *chosen)
        query_s = time.perf_counter() - t0
        if cycle > 0:
            log.info("  asked %d regions (%d clicks) in %.1fs", len(chosen[0]), spent, query_s)

        t0 = time.perf_counter()
        for model, weights in zip(models, initial_weights):
            if cfg.train.reinit:
                model.load_state_dict(weights)
            train_cycle(model, train_images, pool.revealed, cfg.train, generator)
        train_s = time.perf_counter() - t0
        cm = evaluate(models[0], val_images, val_labels, c, cfg.train.eval_batch_size)

        rows.append(_metrics_row(cycle, pool, data, cm, train_s, query_s))
        files.write_metrics(rows)
        files.save_state(cycle, pool, models, generator, rng)
        if cfg.save_model == "every":
            files.copy_model(cycle, files.out / "checkpoints" / f"cycle_{cycle:02d}.pt")
        save_query_overlay(files.out / "queries" / f"cycle_{cycle:02d}.png", data.train.images, pool.revealed,
                           regions, chosen, data.palette, int(cfg.overlay_images))
        files.write_summary("running", rows)
        log.info("cycle %d/%d  clicks %d  mIoU %.2f  pixel acc %.2f  (train %.1fs, query %.1fs)",
                 cycle, cycles, pool.clicks, rows[-1]["miou"], rows[-1]["pixel_acc"], train_s, query_s)

    files.write_curve(rows)
    if cfg.save_model in ("last", "every") and rows:
        files.copy_model(rows[-1]["cycle"], files.out / "model.pt")
    files.write_summary("completed", rows, exhausted, budget_exhausted=exhausted is not None)
    return json.loads((files.out / "summary.json").read_text())


def _train_regions(cfg: DictConfig, data) -> Regions:
    """The train split's region maps, cached under what the pool depends on (not where
    caches live, nor which split is evaluated); a decoded cache's file name hashes every
    source file's size and time, so edited data never meets stale superpixels."""
    data_key = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
                if k not in ("cache_dir", "eval_split")}
    if getattr(data.train.images, "filename", None):
        data_key["source"] = Path(data.train.images.filename).name
    cache_dir = str(Path(cfg.dataset.cache_dir).expanduser())
    return build_regions(cfg.region, data.train.images, cache_dir, {"dataset": data_key, "split": "train"})


def _check_member(model: torch.nn.Module, cfg: DictConfig, strategy, num_classes: int, size, device) -> None:
    """Lay a model out for the device and fail early when it cannot serve the strategy."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    check_model(model, num_classes, size, device)
    if strategy.uses_embeddings and not (hasattr(model, "features") and hasattr(model, "head")):
        raise AlsegError(f"strategy {cfg.strategy.name} needs embeddings: model {type(model).__name__} "
                         "must have features(x) and head(features, size)")


def _build_models(cfg: DictConfig, strategy, num_classes: int, device: torch.device) -> list[torch.nn.Module]:
    """The model, with MC dropout before its head when the strategy needs stochastic passes,
    or a committee of `strategy.members` models from different initialisations."""
    if strategy.multi_pass and cfg.strategy.get("committee", "dropout") == "models":
        members = int(cfg.strategy.members)
        if members < 2:
            raise AlsegError("strategy.committee=models needs strategy.members >= 2")
        models = []
        for m in range(members):
            torch.manual_seed(int(cfg.seed) + 1000 * m)
            models.append(build_model(cfg.model, num_classes).to(device))
        return models
    dropout = cfg.model.get("dropout") if strategy.passes > 1 else None
    if strategy.passes > 1 and not dropout and not cfg.model.get("_target_"):
        raise AlsegError(f"strategy {cfg.strategy.name} needs MC dropout: set model.dropout (e.g. 0.2)")
    return [build_model(cfg.model, num_classes, dropout).to(device)]


def _query(cycle, cfg, strategy, random_strategy, models, images, labels, pool, regions, costs, generator, num_classes):
    """Choose this cycle's regions: random in cycle 0, the strategy afterwards."""
    active = cycle > 0 and strategy.needs_model
    s = cfg.strategy
    scored = query.score_pool(
        strategy if active else random_strategy, models if active else [], images, labels,
        torch.from_numpy(pool.revealed).to(images.device),
        regions, generator, cfg.train.eval_batch_size, num_classes, aggregate=s.aggregate,
        exclude_void=s.exclude_void, class_balance=active and s.class_balance,
        pixel_candidates=int(s.get("pixel_candidates", 1024)),
    )
    scores = scored.scores
    if scored.classes is not None:
        scores = query.balance_classes(scores, scored.classes, num_classes)
    if cycle > 0 and s.top_percent is not None:
        scores = query.sample_top_percent(scores, float(s.top_percent), generator)
    amount = cfg.budget.initial if cycle == 0 else cfg.budget.per_cycle
    per_image = cfg.budget.name == "per_image"
    if active and strategy.uses_embeddings:
        scored.scores = scores
        multiple = s.get("candidates") if s.name == "hybrid" else None
        scores = query.diverse_scores(scored, int(amount) if per_image else None, None if per_image else math.ceil(amount), multiple)
    if per_image:
        return query.select_per_image(scores, int(amount))
    return query.select_by_clicks(scores, costs, float(amount))


def _metrics_row(cycle: int, pool: Pool, data, cm: np.ndarray, train_s: float, query_s: float) -> dict:
    labelled = int(pool.labelled_mask().sum())
    row = {
        "cycle": cycle,
        "clicks": pool.clicks,
        "regions": pool.regions,
        "labelled_pixels": labelled,
        "labelled_fraction": labelled / pool.revealed.size,
        "miou": miou(cm),
        "pixel_acc": pixel_accuracy(cm),
        "label_noise": pool.label_noise(data.train.labels),
        "train_s": round(train_s, 3),
        "query_s": round(query_s, 3),
    }
    names = [name.replace(" ", "_") for name in data.class_names]  # column names without spaces
    row.update({f"iou_{name}": v * 100 for name, v in zip(names, iou_per_class(cm))})
    row.update({f"revealed_{name}": int(v) for name, v in zip(names, pool.class_counts(data.num_classes))})
    return row
