"""The active-learning loop: train -> score the pool -> ask the oracle -> retrain.

`run(cfg, out_dir)` takes a plain config (no Hydra runtime needed), so tests and notebooks
call it directly. Everything a run writes is described in README.md ("Outputs").
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alseg import query, selection
from alseg.callbacks import Callbacks, RunInfo, user_callbacks
from alseg.config import check_config
from alseg.data import load_dataset
from alseg.device import device_generator, resolve_device, tune_convolutions
from alseg.errors import AlsegError, Refused
from alseg.metrics import iou_per_class, miou, pixel_accuracy
from alseg.model import build_model, check_model
from alseg.oracle import Oracle
from alseg.overlay import save_query_overlay
from alseg.placement import Placement, Streamed, choose_placement, data_bytes
from alseg.pool import Pool, record_selection
from alseg.regions import Regions, build_regions
from alseg.rundir import RunFiles
from alseg.strategies import STRATEGIES, build_strategy, check_strategy
from alseg.selection import Budget, Selection
from alseg.train import evaluate, make_teacher, train_cycle

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: str | Path, record: Callable[[Path], None] | None = None) -> dict:
    """Run one experiment into `out_dir`, which it holds (locked) until it ends; returns the
    summary. Raises AlsegError for user errors, after recording `"status": "failed"` and the
    message in summary.json, or Refused, having changed nothing, when the directory is not
    this run's to use. A KeyboardInterrupt (or SIGTERM, through the CLI) records
    `"status": "interrupted"`. `record(out_dir)` is called before the run's first write."""
    out = Path(out_dir)
    info = {
        "dataset": cfg.dataset.name, "region": cfg.region.name, "annotation": cfg.annotation.name,
        "strategy": cfg.strategy.name, "budget": cfg.budget.name, "seed": cfg.seed,  # checked in _run
    }
    rows: list[dict] = []
    with RunFiles(out, cfg, info, record) as files:
        start_cycle = files.prepare(rows)  # reads only: a refused run changes nothing
        if start_cycle is None:
            return json.loads((files.out / "summary.json").read_text())
        hooks = Callbacks(user_callbacks(cfg.get("callbacks")))
        try:
            return _run(cfg, files, rows, start_cycle, hooks)
        except Refused:
            raise
        except BaseException as exc:
            error = files.end(exc, rows)
            if (files.out / "summary.json").exists():
                summary = json.loads((files.out / "summary.json").read_text())
                hooks.on_run_end(RunInfo(cfg, out, info), summary["status"], summary)
            if error is exc:
                raise
            raise error from exc


@dataclass
class Loop:
    """What every cycle of a run uses, set up once (`_setup`)."""

    cfg: DictConfig
    files: RunFiles
    hooks: Callbacks
    run: RunInfo
    data: object
    regions: Regions
    oracle: Oracle
    strategy: object
    models: list[torch.nn.Module]
    initial_weights: list[dict]
    placement: Placement
    tensors: dict[str, torch.Tensor | Streamed]  # train_images, train_labels, val_images, val_labels (see placement)
    costs: torch.Tensor | None
    pool: Pool
    generator: torch.Generator
    rng: np.random.Generator


def _run(cfg: DictConfig, files: RunFiles, rows: list[dict], start_cycle: int, hooks: Callbacks) -> dict:
    check_config(cfg)
    device = resolve_device(cfg.device)
    tune_convolutions(device)
    loop = _setup(cfg, files, rows, hooks, device)
    if start_cycle > 0:
        files.restore(loop.pool, loop.models, loop.generator, loop.rng)
    cycles = 0 if cfg.budget.name == "full" else int(cfg.budget.cycles)
    hooks.on_run_start(loop.run, start_cycle)
    exhausted = None
    for cycle in range(start_cycle, cycles + 1):
        chosen, query_s = _ask(loop, cycle)
        if chosen is None:
            exhausted = f"the pool has no askable region left before cycle {cycle}; stopped after {cycle} cycles"
            log.warning("warning: %s", exhausted)
            break
        rows.append(_learn(loop, cycle, query_s))
        hooks.on_cycle_end(loop.run, cycle, rows[-1], rows)  # before it is written: a hook may add columns
        _save_cycle(loop, cycle, chosen, rows)
        log.info("cycle %d/%d  clicks %d  mIoU %.2f  pixel acc %.2f  (train %.1fs, query %.1fs)", cycle, cycles,
                 loop.pool.clicks, rows[-1]["miou"], rows[-1]["pixel_acc"], rows[-1]["train_s"], query_s)
    files.write_curve(rows)
    if cfg.save_model in ("last", "every") and rows:
        files.copy_model(rows[-1]["cycle"], files.out / "model.pt")
    files.write_summary("completed", rows, exhausted, budget_exhausted=exhausted is not None)
    summary = json.loads((files.out / "summary.json").read_text())
    hooks.on_run_end(loop.run, "completed", summary)
    return summary


def _setup(cfg: DictConfig, files: RunFiles, rows: list[dict], hooks: Callbacks, device: torch.device) -> Loop:
    """Data, regions, oracle, strategy and models of a run, its arrays placed (alseg.placement), an empty
    pool; the run's first write (summary.json, "running") once the data is known to be the
    saved run's."""
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
    check_strategy(strategy, c)
    models = _build_models(cfg, strategy, c, device)
    for model in models:
        _check_member(model, cfg, strategy, c, (h, w), device)
    splits = {"train": data.train, "val": data.val}
    arrays = {f"{split}_{kind}": getattr(d, kind) for split, d in splits.items() for kind in ("images", "labels")}
    needed = data_bytes([*arrays.values(), data.train.labels, regions.maps])  # + the revealed map, as large as the labels
    where = choose_placement(cfg.placement, float(cfg.placement_fraction), needed, device)
    tensors = {name: where.put(array) for name, array in arrays.items()}
    costs = oracle.costs()
    log.info("%s: %d train / %d val images of %dx%d, %d classes, %s regions, strategy %s, budget %s on %s",
             cfg.dataset.name, n, len(data.val), h, w, c, regions.name, strategy.cfg.name, cfg.budget.name, device)
    return Loop(cfg, files, hooks, RunInfo(cfg, files.out, files.info), data, regions, oracle, strategy, models,
                [copy.deepcopy(m.state_dict()) for m in models], where, tensors,
                None if costs is None else torch.from_numpy(costs).to(device), Pool.empty(n, h, w, c), generator, rng)


def _ask(loop: Loop, cycle: int) -> tuple[Selection | None, float]:
    """Choose this cycle's regions and reveal their labels (every label with budget=full);
    None when nothing is left to ask. Returns the selection and the seconds it took."""
    t0 = time.perf_counter()
    pool = loop.pool
    if loop.cfg.budget.name == "full":
        chosen = Selection.empty()
        spent = loop.oracle.reveal_all(pool)
        pool.regions += int(loop.regions.counts.sum())
    else:
        chosen = _query(loop, cycle)
        if len(chosen) == 0:
            return None, 0.0
        spent = loop.oracle.reveal(pool, chosen.images, chosen.regions)
        pool.regions += len(chosen)
    pool.clicks += spent
    record_selection(loop.files.state, cycle, chosen.images, chosen.regions)
    query_s = time.perf_counter() - t0
    if cycle > 0:
        log.info("  asked %d regions (%d clicks) in %.1fs", len(chosen), spent, query_s)
    return chosen, query_s


def _learn(loop: Loop, cycle: int, query_s: float) -> dict:
    """Train every model on what is revealed (from the initial weights with train.reinit),
    evaluate the first; returns the cycle's metrics row."""
    t0 = time.perf_counter()
    report = lambda step, steps, loss, lr: loop.hooks.on_train_report(loop.run, cycle, step, steps, loss, lr)  # noqa: E731
    revealed = loop.placement.put(loop.pool.revealed)
    for model, weights in zip(loop.models, loop.initial_weights):
        teacher = make_teacher(model, loop.cfg.train, cycle)  # the previous cycle's model, before reinit
        if loop.cfg.train.reinit:
            model.load_state_dict(weights)
        steps = train_cycle(model, loop.tensors["train_images"], revealed, loop.cfg.train, loop.generator,
                            cycle, report=report, teacher=teacher)
    train_s = time.perf_counter() - t0
    cm = evaluate(loop.models[0], loop.tensors["val_images"], loop.tensors["val_labels"], loop.data.num_classes,
                  loop.cfg.train.eval_batch_size, loop.data.val.native)
    return _metrics_row(cycle, loop.pool, loop.data, cm, steps, train_s, query_s)


def _save_cycle(loop: Loop, cycle: int, chosen: Selection, rows: list[dict]) -> None:
    """metrics.csv, the state a resume needs, checkpoints, the query overlay, summary.json."""
    files, cfg = loop.files, loop.cfg
    files.write_metrics(rows)
    files.save_state(cycle, loop.pool, loop.models, loop.generator, loop.rng)
    if cfg.save_model == "every":
        files.copy_model(cycle, files.out / "checkpoints" / f"cycle_{cycle:02d}.pt")
    save_query_overlay(files.out / "queries" / f"cycle_{cycle:02d}.png", loop.data.train.images, loop.pool.revealed,
                       loop.regions, (chosen.images, chosen.regions), loop.data.palette, int(cfg.overlay_images))
    files.write_summary("running", rows)


def _train_regions(cfg: DictConfig, data) -> Regions:
    """The train split's region maps, cached under what the pool depends on (not where
    caches live, nor which split is evaluated); a decoded cache's file name hashes every
    source file's size and time, so edited data never meets stale superpixels."""
    data_key = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
                if k not in ("cache_dir", "eval_split", "eval_size")}
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
    """The model (the same network whatever the strategy: `model.dropout` is part of it), or a
    committee of `strategy.members` models from different initialisations."""
    members = strategy.members
    if members == 1:
        return [build_model(cfg.model, num_classes).to(device)]
    models = []
    for m in range(members):
        torch.manual_seed(int(cfg.seed) + 1000 * m)
        models.append(build_model(cfg.model, num_classes).to(device))
    return models


def _query(loop: Loop, cycle: int) -> Selection:
    """Choose this cycle's regions: random in cycle 0, the strategy afterwards."""
    cfg, images = loop.cfg, loop.tensors["train_images"]
    active = cycle > 0 and loop.strategy.needs_model
    chooser = loop.strategy if active else STRATEGIES["random"](cfg.strategy)
    revealed = loop.placement.put(loop.pool.revealed)
    scored = query.score_pool(chooser, loop.models if active else [], images, loop.tensors["train_labels"], revealed,
                              loop.regions, loop.generator, cfg.train.eval_batch_size, loop.data.num_classes)
    amount = cfg.budget.initial if cycle == 0 else cfg.budget.per_cycle
    budget = Budget(float(amount), cfg.budget.name == "per_image", loop.costs)
    return selection.choose(chooser, scored, budget, device_generator(loop.generator, images.device), loop.data.num_classes)


def _metrics_row(cycle: int, pool: Pool, data, cm: np.ndarray, train_steps: int, train_s: float, query_s: float) -> dict:
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
        "train_steps": train_steps,
        "train_s": round(train_s, 3),
        "query_s": round(query_s, 3),
    }
    names = [name.replace(" ", "_") for name in data.class_names]  # column names without spaces
    row.update({f"iou_{name}": v * 100 for name, v in zip(names, iou_per_class(cm))})
    row.update({f"revealed_{name}": int(v) for name, v in zip(names, pool.class_counts(data.num_classes))})
    return row
