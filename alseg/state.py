"""The state a run saves after each cycle, and reading it back as a whole.

`state/cycle_NN/` holds what resuming after cycle NN needs (revealed labels, clicks, RNG
states, the weights, the config and a fingerprint of the data); `state/latest.json`, written
last, names the newest complete one, and the folder before it is kept as a fallback.
`load_state` reads and checks every file before anything is restored, so a damaged state ends
in one message naming the file, never in a half-restored run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from alseg.config import ADDED_KEYS, RESULT_NEUTRAL_KEYS
from alseg.errors import AlsegError, Refused, uninterrupted
from alseg.pool import Pool, atomic_write
from alseg.results import flatten_config

# Keys that may change between a run and its resumption without changing its results.
RESUME_FREE_KEYS = set(RESULT_NEUTRAL_KEYS)
META_KEYS = ("cycle", "clicks", "regions", "numpy_rng")


class Damaged(Exception):
    """A file of the saved state is missing or cannot be read (the message names it)."""


@dataclass
class SavedState:
    """Everything read back from the state saved after `cycle`."""

    cycle: int
    config: dict
    data: dict | None
    rows: list[dict]
    meta: dict
    revealed: np.ndarray
    torch_rng: dict
    weights: list[tuple[str, dict]]  # (file, state dict): model.pt, member_1.pt, ...
    label_sets: np.ndarray | None = None  # multi-class label sets (alseg.pool.Pool.sets), if any


@uninterrupted()  # a signal meanwhile stops the run after the whole state is saved
def save_state(state: Path, cycle: int, pool: Pool, models: list, generators: dict[str, torch.Generator],
               rng: np.random.Generator, config: dict, data: dict | None) -> None:
    """State of a completed cycle in its own folder; `latest.json`, written last and
    atomically, points at it, so a kill at any moment leaves a consistent state. The previous
    cycle's folder stays, to resume from when the newest is damaged."""
    folder = state / f"cycle_{cycle:02d}"
    if folder.exists():
        shutil.rmtree(folder)
    pool.save(folder, {"cycle": cycle, "numpy_rng": rng.bit_generator.state, "config": config, "data": data})
    for name, model in zip(_weight_files(len(models)), models):
        atomic_write(folder / name, lambda f, model=model: torch.save(model.state_dict(), f))
    # every generator the run draws from: its own (CPU; the selection's and the training's, see
    # train.seed), torch's global CPU one and, for dropout on a GPU, each GPU's (the run's device
    # generators are seeded from its own)
    rng_states = {**{name: g.get_state() for name, g in generators.items()}, "global": torch.get_rng_state(),
                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}
    atomic_write(folder / "torch_rng.pt", lambda f: torch.save(rng_states, f))
    latest = {"cycle": cycle, "config": config, "data": data}
    atomic_write(state / "latest.json", lambda f: json.dump(latest, f, allow_nan=False), "w")
    keep = {folder.name, f"cycle_{cycle - 1:02d}"}
    for old in state.glob("cycle_*"):
        if old.name not in keep:
            shutil.rmtree(old)


def newest_complete(out: Path, below: int | None = None) -> int | None:
    """The newest cycle (below `below`) whose saved state is complete on disk, or None."""
    found = (int(p.name[6:]) for p in (out / "state").glob("cycle_*") if p.name[6:].isdigit())
    for cycle in sorted((c for c in found if below is None or c < below), reverse=True):
        try:
            _load(out, cycle)
        except Damaged:
            continue
        return cycle
    return None


def load_state(out: Path, cycle: int | None = None) -> SavedState:
    """The state saved after `cycle` (None: the one state/latest.json names), every file read and
    checked. A damaged state is Refused, naming the file and, when an older cycle's state is
    complete, how to resume from it."""
    try:
        return _load(out, _latest_cycle(out) if cycle is None else cycle)
    except Damaged as exc:
        raise Refused(f"cannot resume {out}: {exc}; {_fallback(out, cycle)}") from None


def restore(saved: SavedState, pool: Pool, models: list, generators: dict[str, torch.Generator],
            rng: np.random.Generator) -> None:
    """Put the loaded state into a fresh pool, models and generators."""
    folder = f"state/cycle_{saved.cycle:02d}"
    if saved.revealed.shape != pool.revealed.shape:
        raise AlsegError(f"{folder}/revealed.npy holds a pool of shape {saved.revealed.shape}, "
                         f"the data give {pool.revealed.shape}: start again in another hydra.run.dir")
    if len(saved.weights) != len(models):
        raise AlsegError(f"{folder} holds {len(saved.weights)} model(s), this run trains {len(models)} (strategy.members, train.ensemble): "
                         "start again in another hydra.run.dir")
    pool.revealed[:] = saved.revealed
    pool.sets = saved.label_sets
    pool.clicks, pool.regions = saved.meta["clicks"], saved.meta["regions"]
    rng.bit_generator.state = saved.meta["numpy_rng"]
    for name, generator in generators.items():  # a state saved before train.seed has "generator" only
        generator.set_state(saved.torch_rng.get(name, saved.torch_rng["generator"]))
    torch.set_rng_state(saved.torch_rng["global"])
    if saved.torch_rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved.torch_rng["cuda"])
    for (name, weights), model in zip(saved.weights, models):
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise AlsegError(f"{folder}/{name} does not fit the model ({_first_line(exc)}): "
                             "start again in another hydra.run.dir") from None


def data_fingerprint(data) -> dict[str, str]:
    """Shape, type and digest of the decoded train and val images and labels: what a resumed
    run must find again, wherever the files now lie."""
    out = {}
    for split in ("train", "val"):
        for part in ("images", "labels"):
            array = np.ascontiguousarray(getattr(getattr(data, split), part))
            digest = hashlib.sha1(array, usedforsecurity=False).hexdigest()  # a checksum: ~1 GB/s
            out[f"{split}.{part}"] = f"{'x'.join(map(str, array.shape))} {array.dtype} {digest}"
    return out


def data_differences(saved: dict, current: dict) -> list[str]:
    """What differs between two data fingerprints, e.g. 'train.labels (other content)'."""
    diff = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "? ?"), current.get(key, "? ?")
        if a != b:
            shapes = a.rsplit(" ", 1)[0], b.rsplit(" ", 1)[0]
            diff.append(f"{key} ({shapes[0]} -> {shapes[1]})" if shapes[0] != shapes[1] else f"{key} (other content)")
    return diff


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between a saved and the current config, ignoring RESUME_FREE_KEYS;
    a key added since the run was saved counts as its ADDED_KEYS value."""
    a, b = flatten_config(saved), flatten_config(current)
    differ = []
    for k in sorted((set(a) | set(b)) - RESUME_FREE_KEYS):
        if k not in a and k in ADDED_KEYS:
            if b[k] != ADDED_KEYS[k]:
                differ.append(f"{k}: not in the saved run, which ran as {ADDED_KEYS[k]!r} -> {b[k]!r}")
        elif a.get(k) != b.get(k):
            differ.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return differ


def _load(out: Path, cycle: int) -> SavedState:
    folder = out / "state" / f"cycle_{cycle:02d}"
    meta = _read(out, folder / "meta.json", _json)
    if not isinstance(meta, dict) or meta.get("cycle") != cycle or any(k not in meta for k in META_KEYS):
        raise Damaged(f"{_name(out, folder / 'meta.json')} is damaged (not the meta data of cycle {cycle})")
    revealed = _read(out, folder / "revealed.npy", np.load)
    if revealed.dtype != np.uint8 or revealed.ndim != 3:
        raise Damaged(f"{_name(out, folder / 'revealed.npy')} is damaged (not a uint8 [N, H, W] map)")
    sets_file = folder / "label_sets.npy"
    label_sets = _read(out, sets_file, np.load) if sets_file.exists() else None
    torch_rng = _read(out, folder / "torch_rng.pt", _torch)
    members = len(list(folder.glob("member_*.pt")))
    weights = [(name, _read(out, folder / name, _torch)) for name in _weight_files(members + 1)]
    metrics = _read(out, out / "metrics.csv", pd.read_csv)
    if "cycle" not in metrics or list(metrics["cycle"][: cycle + 1]) != list(range(cycle + 1)):
        raise Damaged(f"metrics.csv is damaged (it lacks the rows of cycles 0-{cycle})")
    for c in range(cycle + 1):
        _read(out, out / "state" / "selections" / f"cycle_{c:02d}.npz", _npz)
    config = meta.get("config") or _read(out, out / "state" / "latest.json", _json).get("config")
    if not isinstance(config, dict):
        raise Damaged(f"{_name(out, folder / 'meta.json')} is damaged (no config)")
    rows = metrics.iloc[: cycle + 1].to_dict("records")
    return SavedState(cycle, config, meta.get("data"), rows, meta, revealed, torch_rng, weights, label_sets)


def _latest_cycle(out: Path) -> int:
    latest = _read(out, out / "state" / "latest.json", _json)
    cycle = latest.get("cycle") if isinstance(latest, dict) else None
    if not isinstance(cycle, int):
        raise Damaged("state/latest.json is damaged (no cycle number)")
    return cycle


def _fallback(out: Path, damaged: int | None) -> str:
    """How to go on: resume from the newest complete cycle older than the damaged one."""
    cycle = newest_complete(out, damaged)
    if cycle is None:
        return "no complete earlier state is left: start again in another hydra.run.dir"
    return f"the state after cycle {cycle} is complete: continue from it with resume={cycle} (later cycles run again)"


def _read(out: Path, path: Path, reader: Callable[[Path], Any]) -> Any:
    """`reader(path)`, any failure turned into Damaged naming the file."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise Damaged(f"{_name(out, path)} is missing") from None
    except Exception as exc:
        raise Damaged(f"{_name(out, path)} is damaged ({type(exc).__name__}: {_first_line(exc)})") from None


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {key: arrays[key] for key in ("images", "regions")}


def _weight_files(count: int) -> list[str]:
    return ["model.pt", *(f"member_{m}.pt" for m in range(1, count))]


def _name(out: Path, path: Path) -> str:
    return str(path.relative_to(out))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
