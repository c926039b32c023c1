"""Load finished runs and summarise them: groups, mean/std over seeds, AUC, paired tests.

Every run directory holds ``metrics.csv`` (one row per AL cycle) and
``summary.json`` (status and the full resolved config).  This module turns any
number of such directories, or folders above them, into one table.

Use from a notebook::

    from alseg.results import load_runs, differing_keys, group_label, aggregate, paired_comparison

    df = load_runs("outputs/multirun/2024-05-01")     # every completed run below the path
    keys = differing_keys(df)                          # e.g. ["strategy.name", "region.name"]
    curves = aggregate(df[df["budget.name"] != "full"], keys, x="clicks")
    curves["label"] = [group_label(row, keys) for _, row in curves.iterrows()]
    for label, g in curves.groupby("label"):
        plt.plot(g["clicks"], g["miou_mean"], label=label)

    # each group against random, paired by seed: mean delta, 95% t interval, p-values
    stats = paired_comparison(df, keys, baseline="random")
    stats[stats["metric"] == "auc"][["group", "n", "mean_delta", "ci_low", "ci_high", "p_ttest"]]

``df`` has one row per run and cycle: the metrics.csv columns, ``run_dir``,
``status``, ``num_train_images``, ``pixels_per_image`` (labelled pixels per
training image), ``config_keys`` (the names of the run's config columns) and the
config flattened to dotted names (``strategy.name``, ``budget.per_cycle``,
``seed`` ...).  Lists in the config become tuples.  Config columns are exactly
the keys of summary.json's config (:func:`config_columns`); every metrics.csv
column is a metric, so a new metric never splits groups.

Runs whose status is not "completed" are left out unless
``load_runs(..., include_incomplete=True)``; runs whose files do not parse are
always left out; each with a warning naming the file (:func:`scan_runs` returns
those lines instead).  ``paired_comparison`` lives in :mod:`alseg.compare`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from alseg.config import ADDED_KEYS, RESULT_NEUTRAL_KEYS

REQUIRED_COLUMNS = ("cycle", "clicks", "miou")  # a metrics.csv row without them is unusable
IGNORED_KEYS = ("seed", *RESULT_NEUTRAL_KEYS)  # seeds are averaged over
ACRONYMS = ("seeds", "slic", "bald", "ceal", "unet")
SUMMARY_GROUPS = ("dataset", "region", "annotation", "strategy", "budget")
LABEL_ORDER = ("strategy", "region", "annotation", "budget", "dataset", "model", "train")


# --------------------------------------------------------------------------- loading

class Unusable(Exception):
    """A run that cannot count; the message names its file (or folder) and says why."""


RUN_FILES = ("metrics.csv", "summary.json")


def find_run_dirs(*paths) -> list[Path]:
    """Directories below (or equal to) ``paths`` holding metrics.csv or summary.json.

    A file stands for the run whose folder holds it; any other file (a sweep's log or
    multirun.yaml, which a shell glob picks up) stands for no run, not for the runs beside it."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_file():
            if not any((path.parent / name).is_file() for name in RUN_FILES):
                continue
            path = path.parent
        for name in RUN_FILES:
            for file in sorted(path.rglob(name)) if path.is_dir() else ():
                found[file.parent.resolve()] = None
    return sorted(found)


def flatten_config(cfg: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = _hashable(value)
    return flat


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def read_summary(run_dir: Path) -> dict:
    """summary.json as a dict; raises Unusable when it is missing or not valid JSON."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except OSError as err:
        raise Unusable(f"{path}: missing or unreadable ({err.strerror})") from None
    except ValueError as err:
        raise Unusable(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise Unusable(f"{path}: not a JSON object")
    return summary


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv; raises Unusable unless every row is whole and has cycle, clicks and mIoU.

    A file cut mid-line (no final line end, or a row with too few or too many
    fields) would otherwise bring NaN or a wrong number into means and AUCs.
    """
    path = run_dir / "metrics.csv"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise Unusable(f"{path}: missing or unreadable ({getattr(err, 'strerror', None) or err})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise Unusable(f"{path}: no rows")
    if not text.endswith("\n"):
        raise Unusable(f"{path}: cut off mid-line (no line end after row {len(rows) - 1})")
    for number, row in enumerate(rows[1:], 1):
        if len(row) != len(rows[0]):
            raise Unusable(f"{path}: row {number} has {len(row)} fields, the header {len(rows[0])}")
    metrics = pd.read_csv(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics]
    if missing:
        raise Unusable(f"{path}: no column {', '.join(missing)}")
    numbers = metrics[list(REQUIRED_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if numbers.isna().any(axis=None):
        row = int(numbers.isna().any(axis=1).to_numpy().argmax()) + 1
        raise Unusable(f"{path}: row {row} has an empty or non-numeric {', '.join(REQUIRED_COLUMNS)} field")
    return metrics


def read_run(run_dir: Path, include_incomplete: bool = False) -> pd.DataFrame:
    """One run as a DataFrame; raises Unusable (saying why) when it cannot count.

    Runs whose status is not "completed" (running, failed, interrupted) count only
    with ``include_incomplete``, and then with the cycles their metrics.csv holds.
    """
    summary = read_summary(run_dir)
    status = summary.get("status")
    if status != "completed" and not include_incomplete:
        why = f": {summary['message']}" if summary.get("message") else ""
        raise Unusable(f"{run_dir}: status {status!r}, not completed{why} "
                       "(counts with --include-incomplete, include_incomplete=True)")
    metrics = read_metrics(run_dir)

    config = flatten_config(summary.get("config") or {})
    if config:  # a run made before a key existed ran as that key's ADDED_KEYS value
        config = {**ADDED_KEYS, **config}
    for group in SUMMARY_GROUPS:
        if group in summary:
            config.setdefault(f"{group}.name", summary[group])
    if "seed" in summary:
        config.setdefault("seed", summary["seed"])

    n_train = summary.get("num_train_images")
    metrics["run_dir"] = str(run_dir)
    metrics["status"] = status
    metrics["num_train_images"] = n_train
    metrics["pixels_per_image"] = metrics["labelled_pixels"] / n_train if n_train else np.nan
    metrics["config_keys"] = [tuple(config)] * len(metrics)
    extra = pd.DataFrame({k: [v] * len(metrics) for k, v in config.items()}, index=metrics.index)
    return pd.concat([metrics, extra], axis=1)


def scan_runs(*paths, include_incomplete: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The usable runs below ``paths`` (see :func:`load_runs`) and one line per run or
    path left out, naming its file or folder and why."""
    below = {path: find_run_dirs(path) for path in paths}
    skipped = [f"{p}: {_why_no_run(Path(p))}" for p, run_dirs in below.items() if not run_dirs]
    frames = []
    for run_dir in sorted(set().union(*below.values())):
        try:
            frames.append(read_run(run_dir, include_incomplete))
        except Unusable as why:
            skipped.append(str(why))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), skipped


def _why_no_run(path: Path) -> str:
    if path.is_file():
        return "a file outside any run folder (give run folders, or a run's metrics.csv or summary.json)"
    return "no run below it" if path.exists() else "no such file or folder"


def load_runs(*paths, include_incomplete: bool = False) -> pd.DataFrame:
    """All usable runs below ``paths`` as one DataFrame (one row per run and cycle).

    Left out, with a warning naming the file and why: runs whose status is not
    "completed" (unless ``include_incomplete``), whose summary.json is missing or
    not valid JSON, or whose metrics.csv is missing, empty or cut off.
    """
    df, skipped = scan_runs(*paths, include_incomplete=include_incomplete)
    for line in skipped:
        warnings.warn(f"skipping {line}", stacklevel=2)
    return df


# --------------------------------------------------------------------------- groups

def is_full(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of fully supervised reference rows (``budget.name == full``)."""
    if "budget.name" not in df:
        return pd.Series(False, index=df.index)
    return df["budget.name"] == "full"


def config_columns(df: pd.DataFrame) -> list[str]:
    """Columns that hold the runs' config: exactly the keys of their summary.json config.

    Every metrics.csv column is a metric, so a new metric never becomes a config key.
    """
    if "config_keys" not in df:
        return []
    keys = set().union(*df["config_keys"].drop_duplicates())
    return [c for c in df.columns if c in keys]


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.split(".")[-1] in IGNORED_KEYS or key.endswith("dir")


def _norm(value):
    """NaN -> None so that missing values compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def differing_keys(df: pd.DataFrame) -> list[str]:
    """Config keys whose values differ between runs: what tells groups apart.

    Seeds, paths, the device and other bookkeeping are ignored, and so are the
    fully supervised reference runs (``budget.name == full``).
    Keys whose value follows from keys ranked before them are left out too: the
    SEEDS parameters of a SEEDS-vs-box comparison follow from ``region.name``,
    ``strategy.passes`` from ``strategy.name`` (``*.name`` keys are always kept).
    """
    runs = df[~is_full(df)].drop_duplicates("run_dir")
    keys = sorted((
        key for key in config_columns(runs)
        if not _ignored(key) and len({_norm(v) for v in runs[key]}) > 1
    ), key=_key_rank)
    kept: list[str] = []
    for key in keys:
        determined = kept and all(
            len({_norm(v) for v in rows[key]}) == 1 for _, rows in runs.groupby(
                [runs[k].map(lambda v: repr(_norm(v))) for k in kept], sort=False)
        )
        if key.endswith(".name") or not determined:  # names always say what ran
            kept.append(key)
    return kept


def _key_rank(key: str) -> int:
    """Strategy, region, annotation ... first, in the order of LABEL_ORDER."""
    top = key.split(".")[0]
    return LABEL_ORDER.index(top) if top in LABEL_ORDER else len(LABEL_ORDER)


def groups(df: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Split ``df`` into groups of runs that share the values of ``keys``.

    Returns ``[(values, rows), ...]`` in order of first appearance, where
    ``values`` maps each key to the group's value.
    """
    run_key = {
        run: tuple(_norm(row[k]) for k in keys)
        for run, row in df.drop_duplicates("run_dir").set_index("run_dir").iterrows()
    }
    order = list(dict.fromkeys(run_key.values()))
    tags = df["run_dir"].map(run_key)
    return [(dict(zip(keys, values)), df[[t == values for t in tags]]) for values in order]


def _word(value) -> str:
    parts = str(value).split("_")
    return "_".join(p.upper() if p.lower() in ACRONYMS else p for p in parts)


def value_text(value) -> str:
    """A config value as labels write it: ``(64, 96)`` -> ``64x96``, ``20.0`` -> ``20``."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def group_label(row, keys: list[str]) -> str:
    """Name a group in words, e.g. ``"margin, SEEDS, dominant, per_cycle=20"``.

    Values of ``*.name`` keys are written as they are (known acronyms upper-cased),
    true booleans as the short key (``class_balance``), anything else as
    ``short_key=value``.  False booleans are left out unless nothing else
    is left (then ``no class_balance``).  Without keys the label names the
    strategy, region and annotation of the row.
    """
    if not keys:
        keys = [f"{g}.name" for g in LABEL_ORDER[:3] if f"{g}.name" in row]
    parts, negatives = [], []
    for key in keys:
        value, short = _norm(row[key]), key.split(".")[-1]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue  # unset: nothing to say
        if isinstance(value, (bool, np.bool_)):
            if value:
                parts.append(short)
            else:
                negatives.append(f"no {short}")
        elif short == "name" and isinstance(value, str):
            parts.append(_word(value))
        else:
            parts.append(f"{short}={value_text(value)}")
    return ", ".join(parts or negatives) or "all runs"


# --------------------------------------------------------------------------- curves

def run_curves(df: pd.DataFrame, x: str = "clicks") -> list[tuple[np.ndarray, np.ndarray]]:
    """``(x, miou)`` of each run in ``df``, sorted by x, NaN rows dropped."""
    curves = []
    for _, run in df.groupby("run_dir", sort=False):
        run = run[[x, "miou"]].dropna().sort_values(x)
        if len(run):
            curves.append((run[x].to_numpy(float), run["miou"].to_numpy(float)))
    return curves


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean, std and x of several runs' curves.

    Each run's mIoU is interpolated (``np.interp``) onto the union of all runs'
    x values inside the x range common to all runs; when the runs share their x
    values this changes nothing.  The std uses ddof=1 (sample std) when there
    is more than one run and is 0 for a single run.
    Returns ``(x, mean, std)``.
    """
    lo = max(c[0][0] for c in curves)
    hi = min(c[0][-1] for c in curves)
    xs = np.unique(np.concatenate([c[0] for c in curves]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    ys = np.array([np.interp(xs, cx, cy) for cx, cy in curves])
    std = ys.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(xs))
    return xs, ys.mean(axis=0), std


def aggregate(df: pd.DataFrame, keys: list[str], x: str = "clicks") -> pd.DataFrame:
    """Mean and std of mIoU over the runs (seeds) of each group, per x value.

    Columns: the ``keys``, ``x``, ``miou_mean``, ``miou_std`` (ddof=1 when
    n > 1, else 0) and ``n`` (runs in the group).  Runs whose x values differ
    are interpolated onto a shared grid first, see :func:`mean_curve`.
    """
    rows = []
    for values, rows_of_group in groups(df, keys):
        curves = run_curves(rows_of_group, x)
        if not curves:
            continue
        xs, mean, std = mean_curve(curves)
        for xv, m, s in zip(xs, mean, std):
            rows.append({**values, x: xv, "miou_mean": m, "miou_std": s, "n": len(curves)})
    return pd.DataFrame(rows, columns=[*keys, x, "miou_mean", "miou_std", "n"])


def auc(x, y) -> float:
    """Normalised area under the mIoU curve: the mean mIoU over the x range.

    Trapezoid area divided by ``max(x) - min(x)``, so it stays in the units of
    ``y`` (mIoU %) and runs with different budgets stay comparable.  A single
    point gives its own value; no points give NaN.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    order = np.argsort(x[keep])
    x, y = x[keep][order], y[keep][order]
    if len(x) == 0:
        return float("nan")
    if x[-1] == x[0]:
        return float(y.mean())
    area = np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))
    return float(area / (x[-1] - x[0]))


def clicks_to(x, y, target: float) -> float | None:
    """Smallest x where the piecewise-linear curve first reaches ``target``.

    Interpolates linearly between the two points around the crossing; returns
    None when the curve never reaches ``target``.
    """
    points = sorted((a, b) for a, b in zip(x, y) if not (np.isnan(a) or np.isnan(b)))
    if points and points[0][1] >= target:
        return float(points[0][0])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return None


def final_miou(df: pd.DataFrame) -> pd.Series:
    """Each run's mIoU at its last cycle, indexed by run_dir (runs without one left out)."""
    return df.sort_values("cycle").groupby("run_dir")["miou"].last().dropna()


def full_reference(df: pd.DataFrame, dataset: str | None = None) -> float | None:
    """Mean final mIoU of the fully supervised runs (``budget.name == full``).

    Only runs on ``dataset`` count; by default, the dataset of the other (AL)
    runs in ``df`` when they all use one.  None when there is no such run.
    """
    if dataset is None and "dataset.name" in df:
        names = set(df.loc[~is_full(df), "dataset.name"].dropna())
        dataset = names.pop() if len(names) == 1 else None
    full = df[is_full(df)]
    if dataset is not None and "dataset.name" in full:
        full = full[full["dataset.name"] == dataset]
    if full.empty:
        return None
    final = final_miou(full)
    return float(final.mean()) if len(final) else None


def __getattr__(name: str):
    """``alseg.results.paired_comparison`` is :func:`alseg.compare.paired_comparison`
    (imported on first use: compare builds on this module)."""
    if name == "paired_comparison":
        from alseg.compare import paired_comparison

        return paired_comparison
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
