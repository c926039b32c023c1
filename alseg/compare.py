"""Paired statistics over seeds: each group of runs against a baseline group.

Runs with the same seed share the cycle-0 selection and the initial weights, so a
group's run and the baseline's run of one seed form a pair, and the comparison is
made on the per-seed differences (group - baseline, in mIoU points): at each budget
point (cycle; its clicks are the mean over the pairs) and of the normalised AUC
(:func:`alseg.results.auc` over the cycles both runs of a seed reached).

For each difference: its mean, a 95% Student t confidence interval over the seeds
(mean +- t(0.975, n-1) * sd / sqrt(n), as ``scipy.stats.ttest_rel`` gives it), the
two-sided paired t-test p-value (``scipy.stats.ttest_rel``), the two-sided Wilcoxon
signed-rank p-value (``scipy.stats.wilcoxon``, from MIN_SEEDS seeds on), and the
seeds on which the group wins (above the baseline) or loses.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from alseg.errors import AlsegError
from alseg.results import auc, group_label, groups, value_text

CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer shared seeds: the table is written, but no conclusion can be drawn
COLUMNS = ["group", "baseline", "metric", "cycle", "clicks", "n", "mean_delta", "ci_low", "ci_high",
           "p_ttest", "p_wilcoxon", "wins", "losses"]


def paired_stats(values, base) -> dict:
    """n, mean difference, its 95% t interval, paired t-test and Wilcoxon p, wins, losses.

    NaN where the statistic is undefined (one seed; all differences zero; Wilcoxon
    with fewer than MIN_SEEDS seeds).
    """
    a, b = np.asarray(values, float), np.asarray(base, float)
    delta = a - b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n < 2 or constant differences: scipy says NaN
        test = stats.ttest_rel(a, b)
        low, high = test.confidence_interval(CONFIDENCE)
        signed_rank = stats.wilcoxon(a, b).pvalue if len(a) >= MIN_SEEDS and delta.any() else np.nan
    return {"n": len(a), "mean_delta": delta.mean(), "ci_low": low, "ci_high": high,
            "p_ttest": test.pvalue, "p_wilcoxon": signed_rank,
            "wins": int((delta > 0).sum()), "losses": int((delta < 0).sum())}


def baseline_label(labelled: dict[str, pd.DataFrame], keys: list[str], value: str) -> str:
    """The group ``value`` names: a group label as tables show it, or a value of one of
    the grouping keys (``random`` for ``strategy.name``) that only one group has."""
    if value in labelled:
        return value
    hits = [label for label, rows in labelled.items()
            if any(value_text(rows[k].iloc[0]) == value for k in keys)]
    if len(hits) == 1:
        return hits[0]
    names = "; ".join(repr(label) for label in sorted(hits or labelled))
    raise AlsegError(f"baseline {value!r} matches {'several groups' if hits else 'no group'}: "
                     f"give one of {names}")


def by_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """Clicks and mIoU per (seed, cycle); a group's runs with the same seed are averaged."""
    return rows.groupby(["seed", "cycle"])[["clicks", "miou"]].mean()


def compare_pairs(pairs: pd.DataFrame) -> list[dict]:
    """Rows for each cycle and the AUC from the joined (seed, cycle) table of one group."""
    rows = []
    for cycle, at in pairs.groupby(level="cycle"):
        clicks = float(np.mean([at["clicks"], at["clicks_base"]]))
        rows.append({"metric": "miou", "cycle": cycle, "clicks": clicks,
                     **paired_stats(at["miou"], at["miou_base"])})
    areas = [(auc(s["clicks"], s["miou"]), auc(s["clicks_base"], s["miou_base"]))
             for _, s in pairs.groupby(level="seed")]
    group, base = zip(*areas)
    rows.append({"metric": "auc", "cycle": np.nan, "clicks": np.nan, **paired_stats(group, base)})
    return rows


def paired_comparison(df: pd.DataFrame, keys: list[str], baseline: str) -> pd.DataFrame:
    """Every group of ``df`` (split by ``keys``) against the ``baseline`` group, paired by seed.

    One row per group and cycle (``metric == "miou"``) plus one per group for the
    AUC (``metric == "auc"``); columns COLUMNS, see the module docstring.  A group
    that shares no seed with the baseline has a single row with ``n == 0``.
    Raises AlsegError when ``baseline`` names no group (or several), or when there
    is only one group.
    """
    if "seed" not in df:
        raise AlsegError("the runs have no seed: they cannot be paired")
    labelled = {group_label(rows.iloc[0], keys): rows for _, rows in groups(df, keys)}
    if len(labelled) < 2:
        raise AlsegError(f"only one group of runs ({', '.join(map(repr, labelled))}): "
                         "nothing to compare with a baseline")
    base_label = baseline_label(labelled, keys, baseline)
    base = by_seed(labelled[base_label])
    rows = []
    for label, group_rows in labelled.items():
        if label == base_label:
            continue
        pairs = by_seed(group_rows).join(base.add_suffix("_base"), how="inner")
        found = compare_pairs(pairs) if len(pairs) else [{"metric": "auc", "n": 0, "wins": 0, "losses": 0}]
        rows += [{"group": label, "baseline": base_label, **row} for row in found]
    return pd.DataFrame(rows, columns=COLUMNS).astype({"cycle": "Int64", "n": int})
