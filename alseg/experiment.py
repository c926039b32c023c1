"""The active-learning loop: train -> score the pool -> ask the oracle -> retrain.

`run(cfg, out_dir)` takes a plain config (no Hydra runtime needed), so tests and notebooks
call it directly. Everything a run writes is described in README.md ("Outputs").
"""
from __future__ import annotations

import copy
import json
import math
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from alseg import query, selection
from alseg.callbacks import Callbacks, RunInfo, user_callbacks
from alseg.config import RESULT_NEUTRAL_KEYS, check_config
from alseg.data import load_dataset
from alseg.device import device_generator, resolve_device, tune_convolutions
from alseg.errors import AlsegError
from alseg.metrics import iou_per_class, miou, pixel_accuracy
from alseg.model import build_model, check_model
from alseg.oracle import Oracle
from alseg.overlay import save_query_overlay
from alseg.pool import Pool, atomic_write, record_selection
from alseg.regions import Regions, build_regions
from alseg.strategies import STRATEGIES, build_strategy, check_strategy
from alseg.selection import Budget, Selection
from alseg.train import evaluate, make_teacher, train_cycle

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing its results.
RESUME_FREE_KEYS = set(RESULT_NEUTRAL_KEYS)


class RunFiles:
    """metrics.csv, summary.json, curve.png and state/ of one run directory."""

    def __init__(self, out: Path, cfg: DictConfig, info: dict):
        self.out, self.cfg, self.info = out, cfg, info
        self.state = out / "state"

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write(self.out / "metrics.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False), "w")

    def write_summary(self, status: str, rows: list[dict], message: str | None = None, **extra) -> None:
        from alseg.results import auc

        x = [r["clicks"] for r in rows]
        y = [r["miou"] for r in rows]
        summary = {
            "status": status,
            "message": message,
            **self.info,
            "cycles_done": len(rows),
            "final_miou": y[-1] if y else None,
            "auc": auc(x, y) if len(rows) > 1 else None,
            **extra,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_write(self.out / "summary.json", lambda f: json.dump(summary, f, indent=1), "w")

    def write_curve(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["clicks"] for r in rows], [r["miou"] for r in rows], "o-")
        ax.set(xlabel="clicks", ylabel="mIoU (%)", title=f"{self.info['strategy']}, {self.info['region']}, seed {self.info['seed']}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / "curve.png", dpi=100)
        plt.close(fig)

    def save_state(self, cycle: int, pool: Pool, models: list, generator: torch.Generator, rng: np.random.Generator) -> None:
        """State of a completed cycle in its own folder; `latest.json`, written last and
        atomically, points at it, so a kill at any moment leaves a consistent state."""
        folder = self.state / f"cycle_{cycle:02d}"
        if folder.exists():
            shutil.rmtree(folder)
        pool.save(folder, {"cycle": cycle, "numpy_rng": rng.bit_generator.state})
        atomic_write(folder / "model.pt", lambda f: torch.save(models[0].state_dict(), f))
        for m, member in enumerate(models[1:], start=1):
            atomic_write(folder / f"member_{m}.pt", lambda f, member=member: torch.save(member.state_dict(), f))
        rng_states = {"generator": generator.get_state(), "global": torch.get_rng_state()}
        atomic_write(folder / "torch_rng.pt", lambda f: torch.save(rng_states, f))
        config = OmegaConf.to_container(self.cfg, resolve=True)
        atomic_write(self.state / "latest.json", lambda f: json.dump({"cycle": cycle, "config": config}, f), "w")
        for old in self.state.glob("cycle_*"):
            if old != folder:
                shutil.rmtree(old)


    def copy_model(self, cycle: int, target: Path) -> None:
        """Keep the weights trained in `cycle` as `target` (for save_model=last|every)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.state / f"cycle_{cycle:02d}" / "model.pt", target)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two configs, ignoring RESUME_FREE_KEYS."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k)]


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run one experiment into `out_dir`; returns the summary. Raises AlsegError for user errors
    (after recording `"status": "failed"` and the message in summary.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "dataset": cfg.dataset.name, "region": cfg.region.name, "annotation": cfg.annotation.name,
        "strategy": cfg.strategy.name, "budget": cfg.budget.name, "seed": cfg.seed,  # checked in _run
    }
    files = RunFiles(out, cfg, info)
    rows: list[dict] = []
    start_cycle = _prepare_output(cfg, files, rows)  # reads only: a refused resume changes nothing
    if start_cycle is None:
        return json.loads((files.out / "summary.json").read_text())
    hooks = Callbacks(user_callbacks(cfg.get("callbacks")))
    try:
        return _run(cfg, files, rows, start_cycle, hooks)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, AlsegError) else f"{type(exc).__name__}: {exc}"
        files.write_summary("failed", rows, message)
        hooks.on_run_end(RunInfo(cfg, out, info), "failed", json.loads((out / "summary.json").read_text()))
        raise


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
    tensors: dict[str, torch.Tensor]  # train_images, train_labels, val_images, val_labels on the device
    costs: torch.Tensor | None
    pool: Pool
    generator: torch.Generator
    rng: np.random.Generator


def _run(cfg: DictConfig, files: RunFiles, rows: list[dict], start_cycle: int, hooks: Callbacks) -> dict:
    check_config(cfg)
    device = resolve_device(cfg.device)
    tune_convolutions(device)
    files.write_summary("running", rows)
    loop = _setup(cfg, files, hooks, device)
    if start_cycle > 0:
        _restore(files, start_cycle - 1, loop.pool, loop.models, loop.generator, loop.rng, device)
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
        _save_cycle(loop, cycle, chosen, rows)
        hooks.on_cycle_end(loop.run, cycle, rows[-1], rows)
        log.info("cycle %d/%d  clicks %d  mIoU %.2f  pixel acc %.2f  (train %.1fs, query %.1fs)", cycle, cycles,
                 loop.pool.clicks, rows[-1]["miou"], rows[-1]["pixel_acc"], rows[-1]["train_s"], query_s)
    files.write_curve(rows)
    if cfg.save_model in ("last", "every") and rows:
        files.copy_model(rows[-1]["cycle"], files.out / "model.pt")
    files.write_summary("completed", rows, exhausted, budget_exhausted=exhausted is not None)
    summary = json.loads((files.out / "summary.json").read_text())
    hooks.on_run_end(loop.run, "completed", summary)
    return summary


def _setup(cfg: DictConfig, files: RunFiles, hooks: Callbacks, device: torch.device) -> Loop:
    """Data, regions, oracle, strategy and models of a run, its tensors on the device, an empty pool."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    data = load_dataset(cfg.dataset)
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
    tensors = {f"{split}_{kind}": torch.from_numpy(np.asarray(getattr(d, kind))).to(device)
               for split, d in splits.items() for kind in ("images", "labels")}
    costs = oracle.costs()
    log.info("%s: %d train / %d val images of %dx%d, %d classes, %s regions, strategy %s, budget %s on %s",
             cfg.dataset.name, n, len(data.val), h, w, c, regions.name, strategy.cfg.name, cfg.budget.name, device)
    return Loop(cfg, files, hooks, RunInfo(cfg, files.out, files.info), data, regions, oracle, strategy, models,
                [copy.deepcopy(m.state_dict()) for m in models], tensors,
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
    for model, weights in zip(loop.models, loop.initial_weights):
        teacher = make_teacher(model, loop.cfg.train, cycle)  # the previous cycle's model, before reinit
        if loop.cfg.train.reinit:
            model.load_state_dict(weights)
        steps = train_cycle(model, loop.tensors["train_images"], loop.pool.revealed, loop.cfg.train, loop.generator,
                            cycle, report=report, teacher=teacher)
    train_s = time.perf_counter() - t0
    cm = evaluate(loop.models[0], loop.tensors["val_images"], loop.tensors["val_labels"], loop.data.num_classes,
                  loop.cfg.train.eval_batch_size)
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
    """The model (the same network whatever the strategy: `model.dropout` is part of it), or a
    committee of `strategy.members` models from different initialisations."""
    members = strategy.members
    if members == 1:
        return [build_model(cfg.model, num_classes).to(device)]
    if members < 2:
        raise AlsegError("strategy.committee=models needs strategy.members >= 2")
    models = []
    for m in range(members):
        torch.manual_seed(int(cfg.seed) + 1000 * m)
        models.append(build_model(cfg.model, num_classes).to(device))
    return models


def _prepare_output(cfg: DictConfig, files: RunFiles, rows: list[dict]) -> int | None:
    """The cycle to start from (0 for a new run), or None when a resumed run is complete."""
    latest = files.state / "latest.json"
    if not cfg.resume:
        if (files.out / "metrics.csv").exists():
            raise AlsegError(f"{files.out} already holds a run; add resume=true to continue it, or choose another hydra.run.dir")
        return 0
    if not latest.exists():
        log.info("resume=true but %s has no saved state: starting from cycle 0", files.out)
        return 0
    saved = json.loads(latest.read_text())
    diff = config_differences(saved["config"], OmegaConf.to_container(cfg, resolve=True))
    if diff:
        raise AlsegError("cannot resume: the config differs from the saved run:\n  " + "\n  ".join(diff))
    rows.extend(pd.read_csv(files.out / "metrics.csv").to_dict("records")[: saved["cycle"] + 1])
    summary = json.loads((files.out / "summary.json").read_text()) if (files.out / "summary.json").exists() else {}
    if summary.get("status") == "completed":
        log.info("%s is already complete (%d cycles); nothing to do", files.out, len(rows))
        return None
    log.info("resuming %s after cycle %d", files.out, saved["cycle"])
    return saved["cycle"] + 1


def _restore(files: RunFiles, cycle: int, pool: Pool, models, generator, rng, device) -> None:
    """Load the state saved after `cycle`."""
    folder = files.state / f"cycle_{cycle:02d}"
    meta = json.loads((folder / "meta.json").read_text())
    pool.revealed[:] = np.load(folder / "revealed.npy")
    pool.clicks, pool.regions = meta["clicks"], meta["regions"]
    rng.bit_generator.state = meta["numpy_rng"]
    rng_states = torch.load(folder / "torch_rng.pt")
    generator.set_state(rng_states["generator"])
    torch.set_rng_state(rng_states["global"])
    for m, model in enumerate(models):
        name = "model.pt" if m == 0 else f"member_{m}.pt"
        model.load_state_dict(torch.load(folder / name, map_location=device))


def _query(loop: Loop, cycle: int) -> Selection:
    """Choose this cycle's regions: random in cycle 0, the strategy afterwards."""
    cfg, images = loop.cfg, loop.tensors["train_images"]
    active = cycle > 0 and loop.strategy.needs_model
    chooser = loop.strategy if active else STRATEGIES["random"](cfg.strategy)
    revealed = torch.from_numpy(loop.pool.revealed).to(images.device)
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
