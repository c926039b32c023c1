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

from alseg import distributed, query, selection
from alseg.callbacks import Callbacks, RunInfo, user_callbacks
from alseg.config import check_config
from alseg.data import load_dataset
from alseg.device import device_generator, tune_convolutions
from alseg.errors import AlsegError, Refused, check_interrupted
from alseg.loggers import build_loggers
from alseg.metrics import iou_per_class, miou, pixel_accuracy
from alseg.model import build_model, check_model, ensemble
from alseg.oracle import Oracle
from alseg.overlay import save_query_overlay
from alseg.placement import Placement, Streamed, choose_placement, data_bytes
from alseg.pool import Pool, record_selection
from alseg.progress import RunProgress, console
from alseg.prototypes import prototype_labels
from alseg.regions import Regions, build_regions
from alseg.rundir import RunFiles
from alseg.sieve import sieve
from alseg.strategies import STRATEGIES, build_strategy, check_strategy
from alseg.selection import Budget, Selection
from alseg.train import evaluate, make_teacher, train_cycle

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: str | Path, record: Callable[[Path], None] | None = None) -> dict:
    """Run one experiment into `out_dir`, which it holds (locked) until it ends; returns the
    summary. Raises AlsegError for user errors, after recording `"status": "failed"` and the
    message in summary.json, or Refused, having changed nothing, when the directory is not
    this run's to use. A KeyboardInterrupt (or SIGTERM, through the CLI) records
    `"status": "interrupted"`. `record(out_dir)` is called before the run's first write.
    With `devices: N` the run takes N processes (alseg.distributed): this one is rank 0 and
    the only one to write; under torchrun the other ranks return {} here."""
    with distributed.processes(cfg, _follow) as main:
        if not main:
            distributed.follow(_follow, cfg)
            return {}
        return _lead(cfg, Path(out_dir), record)


def _lead(cfg: DictConfig, out: Path, record: Callable[[Path], None] | None) -> dict:
    """The run in rank 0 (the only one with one process): see `run`."""
    info = {
        "dataset": cfg.dataset.name, "region": cfg.region.name, "annotation": cfg.annotation.name,
        "strategy": cfg.strategy.name, "budget": cfg.budget.name, "seed": cfg.seed,  # checked in _run
    }
    rows: list[dict] = []
    with RunFiles(out, cfg, info, record) as files:
        start_cycle = None
        try:
            start_cycle = files.prepare(rows)  # reads only: a refused run changes nothing
        finally:
            distributed.share(start_cycle)  # the other ranks start there (None: they stop)
        if start_cycle is None:
            return json.loads((files.out / "summary.json").read_text())
        hooks = Callbacks([*build_loggers(cfg), RunProgress(), *user_callbacks(cfg.get("callbacks"))])
        try:
            with console():  # bars on a terminal, log lines between them
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
    predictor: torch.nn.Module  # what is evaluated and scored: the model, or the mean of an ensemble's
    initial_weights: list[dict]
    placement: Placement
    tensors: dict[str, torch.Tensor | Streamed]  # train_images, train_labels, val_images, val_labels (see placement)
    costs: torch.Tensor | None
    pool: Pool
    generator: torch.Generator  # the selection's (and the training's, unless train.seed is set)
    train_generator: torch.Generator
    rng: np.random.Generator

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The torch generators a resume restores and a run over several processes shares."""
        return {"generator": self.generator, "train_generator": self.train_generator}


def _run(cfg: DictConfig, files: RunFiles, rows: list[dict], start_cycle: int, hooks: Callbacks) -> dict:
    check_config(cfg)
    device = distributed.run_device(cfg)
    tune_convolutions(device)
    loop = _setup(cfg, files, rows, hooks, device)
    if start_cycle > 0:
        files.restore(loop.pool, loop.models, loop.generators, loop.rng)
        loop.regions.restore(files.state, start_cycle - 1)
    distributed.share_pool(loop.pool, loop.generators, True, loop.models if start_cycle > 0 else None)
    cycles = _cycles(cfg)
    hooks.on_run_start(loop.run, start_cycle)
    exhausted = None
    for cycle in range(start_cycle, cycles + 1):
        check_interrupted()
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


def _follow(cfg: DictConfig) -> None:
    """Rank 1.. of a run over several processes: set up as rank 0 does, start where it says,
    then each cycle score a share of the pool, take rank 0's pool and train."""
    start_cycle = distributed.share(None)
    if start_cycle is None:
        return
    check_config(cfg)
    device = distributed.run_device(cfg)
    tune_convolutions(device)
    loop = _setup(cfg, None, [], Callbacks([]), device)
    distributed.share_pool(loop.pool, loop.generators, True, loop.models if start_cycle > 0 else None)
    for cycle in range(start_cycle, _cycles(cfg) + 1):
        if _ask(loop, cycle)[0] is None:
            return
        _train(loop, cycle)


def _cycles(cfg: DictConfig) -> int:
    """The active cycles after cycle 0."""
    return 0 if cfg.budget.name == "full" else int(cfg.budget.cycles)


def _setup(cfg: DictConfig, files: RunFiles | None, rows: list[dict], hooks: Callbacks, device: torch.device) -> Loop:
    """Data, regions, oracle, strategy and models of a run, its arrays placed (alseg.placement), an empty
    pool; the run's first write (summary.json, "running") once the data is known to be the
    saved run's. `files` is None in the ranks > 0 of a run over several processes."""
    torch.manual_seed(_training_seed(cfg))  # initial weights, dropout masks
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    train_generator = generator if cfg.train.get("seed") is None else torch.Generator().manual_seed(int(cfg.train.seed))
    data = load_dataset(cfg.dataset)
    n, (h, w), c = len(data.train), data.train.size, data.num_classes
    if files is not None:
        files.check_data(data)
        files.write_summary("running", rows)
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
    needed = data_bytes([*arrays.values(), data.train.labels, regions.stored_maps])  # + the revealed map, as large as the labels
    where = choose_placement(cfg.placement, float(cfg.placement_fraction), needed, device)
    tensors = {name: where.put(array) for name, array in arrays.items()}
    costs = oracle.costs()
    log.info("%s: %d train / %d val images of %dx%d, %d classes, %s regions, strategy %s, budget %s on %s",
             cfg.dataset.name, n, len(data.val), h, w, c, regions.name, strategy.cfg.name, cfg.budget.name, device)
    run = RunInfo(cfg, files.out, files.info) if files is not None else RunInfo(cfg, None)
    return Loop(cfg, files, hooks, run, data, regions, oracle, strategy, models, ensemble(models),
                [copy.deepcopy(m.state_dict()) for m in models], where, tensors,
                None if costs is None else torch.from_numpy(costs).to(device), Pool.empty(n, h, w, c), generator, train_generator, rng)


def _ask(loop: Loop, cycle: int) -> tuple[Selection | None, float]:
    """Choose this cycle's regions and reveal their labels (every label with budget=full);
    None when nothing is left to ask. Returns the selection and the seconds it took. Over
    several processes all score, rank 0 chooses and reveals, and the others take its pool
    (their selection is empty)."""
    t0 = time.perf_counter()
    main, full = loop.files is not None, loop.cfg.budget.name == "full"
    chosen = Selection.empty() if full else _query(loop, cycle)  # None in ranks > 0
    go_on = full or chosen is None or len(chosen) > 0  # rank 0's says
    if main and go_on:
        spent = _reveal(loop, cycle, chosen, full)
    if not distributed.share_pool(loop.pool, loop.generators, go_on):
        return None, 0.0
    query_s = time.perf_counter() - t0
    if not main:
        return Selection.empty(), query_s
    if cycle > 0:
        log.info("  asked %d regions (%d clicks) in %.1fs", len(chosen), spent, query_s)
    return chosen, query_s


def _reveal(loop: Loop, cycle: int, chosen: Selection, full: bool) -> float:
    """The oracle reveals the chosen regions' labels (all with budget=full), the selection is
    recorded; returns the clicks spent."""
    pool = loop.pool
    if full:
        spent = loop.oracle.reveal_all(pool)
        pool.regions += int(loop.regions.counts.sum())
    else:
        spent = loop.oracle.reveal(pool, chosen.images, chosen.regions)
        pool.regions += len(chosen)
    pool.clicks += spent
    record_selection(loop.files.state, cycle, chosen.images, chosen.regions)
    return spent


def _learn(loop: Loop, cycle: int, query_s: float) -> dict:
    """Train every model, evaluate the predictor; returns the cycle's metrics row."""
    t0 = time.perf_counter()
    steps = _train(loop, cycle)
    train_s = time.perf_counter() - t0
    cm = evaluate(loop.predictor, loop.tensors["val_images"], loop.tensors["val_labels"], loop.data.num_classes,
                  loop.cfg.train.eval_batch_size, loop.data.val.native)
    return _metrics_row(cycle, loop.pool, loop.data, cm, steps, train_s, query_s)


def _train(loop: Loop, cycle: int) -> int:
    """Train every model on what is revealed (from the initial weights with train.reinit);
    returns the steps taken."""
    report = lambda step, steps, loss, lr: loop.hooks.on_train_report(loop.run, cycle, step, steps, loss, lr)  # noqa: E731
    label_sets = loop.pool.label_table()  # multi-class labels (annotation=multiclass), else None
    stage2 = label_sets is not None and loop.cfg.annotation.get("prototypes", False)
    images = loop.tensors["train_images"]
    for model, weights in zip(loop.models, loop.initial_weights):
        teacher = make_teacher(model, loop.cfg.train, cycle)  # the previous cycle's model, before reinit
        targets = loop.pool.revealed
        if cycle > 0 and loop.cfg.annotation.get("sieve", False):  # judged by the previous cycle's model
            targets = sieve(model, images, targets, loop.regions, loop.cfg.train.eval_batch_size)
        if loop.cfg.train.reinit:
            model.load_state_dict(weights)
        steps = train_cycle(model, images, loop.placement.put(targets), loop.cfg.train, loop.train_generator,
                            cycle, report=report, teacher=teacher, label_sets=label_sets)
        if stage2:  # Hwang et al.'s stage 2: train again on the prototypes' pixel labels
            pseudo = prototype_labels(model, images, loop.pool.revealed, label_sets, loop.regions,
                                      loop.cfg.train.eval_batch_size)
            if loop.cfg.train.reinit:
                model.load_state_dict(weights)
            steps += train_cycle(model, images, loop.placement.put(pseudo), loop.cfg.train, loop.train_generator, cycle,
                                 report=report,
                                 teacher=teacher)
    return steps


def _save_cycle(loop: Loop, cycle: int, chosen: Selection, rows: list[dict]) -> None:
    """metrics.csv, the state a resume needs, checkpoints, the query overlay, summary.json."""
    files, cfg = loop.files, loop.cfg
    files.write_metrics(rows)
    loop.regions.save(files.state, cycle)  # before the state that points at it
    files.save_state(cycle, loop.pool, loop.models, loop.generators, loop.rng)
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
    if cfg.annotation.get("prototypes") and not (hasattr(model, "features") and hasattr(model, "head")):
        raise AlsegError("annotation.prototypes needs a model with features(x) and head(features, size): "
                         "use a built-in model, or set annotation.prototypes=false")
    if strategy.uses_embeddings and not (hasattr(model, "features") and hasattr(model, "head")):
        raise AlsegError(f"strategy {cfg.strategy.name} needs embeddings: model {type(model).__name__} "
                         "must have features(x) and head(features, size)")


def _build_models(cfg: DictConfig, strategy, num_classes: int, device: torch.device) -> list[torch.nn.Module]:
    """The model (the same network whatever the strategy: `model.dropout` is part of it), or
    `train.ensemble` models, or a committee of `strategy.members` models, from different
    initialisations (check_config makes the two counts agree when both exceed 1)."""
    members = max(int(cfg.train.get("ensemble", 1)), strategy.members)
    if members == 1:
        return [build_model(cfg.model, num_classes).to(device)]
    models = []
    for m in range(members):
        torch.manual_seed(_training_seed(cfg) + 1000 * m)
        models.append(build_model(cfg.model, num_classes).to(device))
    return models


def _training_seed(cfg: DictConfig) -> int:
    """What seeds the initial weights, the batches, the augmentation and the dropout masks:
    `train.seed`, or `seed` when it is null (then one stream serves selection and training)."""
    return int(cfg.seed if cfg.train.get("seed") is None else cfg.train.seed)


def _query(loop: Loop, cycle: int) -> Selection | None:
    """Choose this cycle's regions: random in cycle 0, the strategy afterwards. Over several
    processes each scores its share of the pool, and rank 0 chooses (None in the others)."""
    cfg, images = loop.cfg, loop.tensors["train_images"]
    active = cycle > 0 and loop.strategy.needs_model
    chooser = loop.strategy if active else STRATEGIES["random"](cfg.strategy)
    revealed = loop.placement.put(loop.pool.revealed)
    if cycle > 0:  # region=adaptive merges its superpixels from the current model
        loop.regions.refresh(loop.predictor, images, revealed, cfg.train.eval_batch_size)
    size = int(cfg.train.eval_batch_size)
    scorers = (loop.models if loop.strategy.members > 1 else [loop.predictor]) if active else []  # a committee: its members
    scored = query.score_pool(chooser, scorers, images, loop.tensors["train_labels"], revealed,
                              loop.regions, loop.generator, size, loop.data.num_classes,
                              distributed.shard(len(images), size))
    scored = distributed.gather_rows(scored, len(images), size)
    if scored is None:
        return None
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
