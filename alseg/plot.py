"""``alseg plot``: learning curves, tables, per-class views and paired comparisons of runs.

Usage::

    alseg plot PATH [PATH ...] [--out DIR] [--group-by k1,k2]
               [--x clicks|labelled_fraction|pixels_per_image] [--logx] [--full PATH]
               [--baseline VALUE] [--include-incomplete]

Every ``metrics.csv`` below the PATHs is one run; runs that are not completed
(unless ``--include-incomplete``) or whose files do not parse are left out, one
line each saying why.  Runs are grouped by the config keys that differ between
them (or by ``--group-by``) and averaged over seeds.  A fully supervised run
(``budget=full``) found below the PATHs or under ``--full`` gives the reference
lines and ``clicks_to_95``.

Table columns: ``miou@<x>`` when every run has the same x at each cycle;
otherwise ``cycle_<k>`` with cells ``mean ± std @ mean x``.  Cells hold the
mean ± std of mIoU over the group's runs (std with ddof=1, 0 for one run) and
``(n=k)`` where fewer runs than the group's n reached that cycle.
``auc`` is the mean ± std over runs of the normalised AUC (mean mIoU over the
x range), ``clicks_to_95`` the clicks at which the group's mean curve reaches
95% of full supervision.  ``--baseline`` compares every group with one group,
paired by seed (see :mod:`alseg.compare`): compare.md/.csv/.tex/.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from alseg.compare import MIN_SEEDS, paired_comparison
from alseg.errors import AlsegError
from alseg.results import (
    aggregate, auc, clicks_to, config_columns, differing_keys, final_miou, full_reference,
    group_label, groups, is_full, scan_runs,
)

X_LABELS = {
    "clicks": "clicks (cumulative)",
    "labelled_fraction": "labelled fraction of training pixels",
    "pixels_per_image": "labelled pixels per training image",
}
COLORS = [f"C{i}" for i in range(10)]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
FULL_LABEL = "full supervision"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alseg plot", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories or folders above them")
    parser.add_argument("--out", type=Path, help="output folder (default: the first PATH)")
    parser.add_argument("--group-by", help="comma-separated config keys, e.g. strategy.name,region")
    parser.add_argument("--x", choices=list(X_LABELS), default="clicks", help="x axis")
    parser.add_argument("--logx", action="store_true", help="logarithmic x axis")
    parser.add_argument("--full", action="append", default=[], metavar="PATH",
                        help="where to find the fully supervised reference run")
    parser.add_argument("--baseline", metavar="VALUE",
                        help="compare every group with this one, paired by seed: a group label as the "
                             "table shows it, or a value such as a strategy name (compare.md/.csv/.tex/.png)")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="also use runs that did not complete (running, failed, interrupted): "
                             "the cycles they finished")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- data

def resolve_keys(df: pd.DataFrame, names: str) -> list[str]:
    """``"strategy,budget.per_cycle"`` -> ``["strategy.name", "budget.per_cycle"]``."""
    known, keys = config_columns(df), []
    for name in filter(None, (n.strip() for n in names.split(","))):
        key = name if name in known else f"{name}.name"
        if key not in known:
            raise AlsegError(f"unknown --group-by key {name!r}; known: {', '.join(known)}")
        keys.append(key)
    return keys


def label_groups(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` with a ``group`` column naming each run's group in words."""
    df = df.copy()
    for _, rows in groups(df, keys):
        df.loc[rows.index, "group"] = group_label(rows.iloc[0], keys)
    return df


def reference_runs(al: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """The fully supervised runs on the AL runs' dataset, labelled ``full supervision``."""
    datasets = set(al.get("dataset.name", pd.Series(dtype=object)).dropna())
    if len(datasets) == 1 and "dataset.name" in full:
        full = full[full["dataset.name"].isin(datasets)]
    return full.assign(group=FULL_LABEL)


def fmt(mean: float, std: float, n: int, digits: int = 1) -> str:
    """``"61.2 ± 0.8"``, or just the mean for a single run."""
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


# --------------------------------------------------------------------------- tables

def cycle_stats(al: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per group and cycle: mean/std/n of mIoU over runs and mean x."""
    stats = al.groupby(["group", "cycle"]).agg(
        mean=("miou", "mean"), std=("miou", "std"), n=("miou", "count"), x=(x, "mean"))
    stats["std"] = stats["std"].fillna(0.0)
    return stats.reset_index()


def shared_x(al: pd.DataFrame, x: str) -> bool:
    """True when every run has the same x value at each cycle."""
    spread = al.groupby("cycle")[x].agg(["min", "max"])
    return bool(np.allclose(spread["min"], spread["max"]))


def x_text(value: float) -> str:
    """A budget as tables write it: ``1200``, ``36``, ``0.025``."""
    return f"{value:.0f}" if value >= 100 else f"{value:.4g}"


def cycle_cells(al: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per group, one ``miou@<x>`` or ``cycle_<k>`` column per cycle; a cell says
    ``(n=k)`` when fewer of the group's runs reached that cycle (incomplete runs)."""
    stats = cycle_stats(al, x)
    runs = al.groupby("group")["run_dir"].nunique()
    stats["cell"] = [fmt(r.mean, r.std, r.n) + ("" if r.n == runs[r.group] else f" (n={r.n})")
                     for r in stats.itertuples()]
    if shared_x(al, x):
        stats["column"] = [f"miou@{x_text(v)}" for v in stats["x"]]
    else:
        stats["column"] = [f"cycle_{c}" for c in stats["cycle"]]
        stats["cell"] = [f"{cell} @ {x_text(v)}" for cell, v in zip(stats["cell"], stats["x"])]
    columns = list(dict.fromkeys(stats.sort_values("cycle")["column"]))
    return stats.pivot(index="group", columns="column", values="cell")[columns].fillna("")


def summary_table(al: pd.DataFrame, x: str, ref: float | None) -> pd.DataFrame:
    """Group, n runs, mIoU per cycle, AUC and clicks to 95% of full supervision."""
    table = al.groupby("group")["run_dir"].nunique().rename("n").to_frame()
    table = table.join(cycle_cells(al, x))
    run_auc = al.groupby(["group", "run_dir"])[[x, "miou"]].apply(lambda r: auc(r[x], r["miou"]))
    run_auc = run_auc.groupby("group")
    table["auc"] = [fmt(m, s, n) for m, s, n in zip(run_auc.mean(), run_auc.std().fillna(0), run_auc.count())]
    table["clicks_to_95"] = np.nan
    if ref is not None:
        curves = aggregate(al, ["group"], "clicks")
        for label, c in curves.groupby("group"):
            reached = clicks_to(c["clicks"], c["miou_mean"], 0.95 * ref)
            table.loc[label, "clicks_to_95"] = np.nan if reached is None else round(reached)
    return table.reset_index()


def per_class_table(df: pd.DataFrame) -> pd.DataFrame:
    """IoU per class at each run's last cycle, mean over the runs of each group."""
    columns = [c for c in df.columns if c.startswith("iou_")]
    last = df.sort_values("cycle").groupby("run_dir").tail(1)
    table = last.groupby("group", sort=False)[columns].mean()
    table.columns = [c[len("iou_"):] for c in columns]
    order = sorted(set(table.index) - {FULL_LABEL}) + ([FULL_LABEL] if FULL_LABEL in table.index else [])
    return table.loc[order]


def to_markdown(table: pd.DataFrame) -> str:
    cells = table.astype(str)
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    def esc(text) -> str:
        for char in "\\&%$#_{}":
            text = str(text).replace(char, "\\" + char)
        return text.replace("±", "$\\pm$").replace("Δ", "$\\Delta$")

    lines = [f"\\begin{{tabular}}{{l{'r' * (len(table.columns) - 1)}}}", "\\hline",
             " & ".join(map(esc, table.columns)) + " \\\\", "\\hline"]
    lines += [" & ".join(map(esc, row)) + " \\\\" for row in table.astype(str).itertuples(index=False)]
    return "\n".join(lines + ["\\hline", "\\end{tabular}"]) + "\n"


def write_tables(table: pd.DataFrame, ref: float | None, out: Path) -> list[Path]:
    """table.csv (numbers, empty when not reached), table.md and table.tex."""
    table.to_csv(out / "table.csv", index=False)
    missing = "not reached" if ref is not None else ""
    shown = table.assign(clicks_to_95=[missing if np.isnan(v) else f"{v:.0f}" for v in table["clicks_to_95"]])
    (out / "table.md").write_text(to_markdown(shown))
    (out / "table.tex").write_text(to_latex(shown))
    return [out / "table.md", out / "table.csv", out / "table.tex"]


def write_per_class(table: pd.DataFrame, out: Path) -> list[Path]:
    table.round(2).to_csv(out / "per_class.csv", index_label="group")
    shown = table.map(lambda v: "n/a" if np.isnan(v) else f"{v:.1f}").reset_index(names="group")
    (out / "per_class.md").write_text(to_markdown(shown))
    return [out / "per_class.md", out / "per_class.csv"]


# --------------------------------------------------------------------------- figures

def save(fig: Figure, out: Path, name: str, exts=("png",)) -> list[Path]:
    paths = [out / f"{name}.{ext}" for ext in exts]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def plot_curves(al: pd.DataFrame, x: str, ref: float | None, logx: bool, out: Path) -> list[Path]:
    """Mean mIoU per group with a ±1 std band, plus the full-supervision lines."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    curves = aggregate(al, ["group"], x)
    for i, (label, c) in enumerate(curves.groupby("group")):
        style = dict(color=COLORS[i % 10], linestyle=LINESTYLES[i % 4], marker=MARKERS[i % 8])
        ax.plot(c[x], c["miou_mean"], markersize=4, label=f"{label} (n={c['n'].iloc[0]})", **style)
        ax.fill_between(c[x], c["miou_mean"] - c["miou_std"], c["miou_mean"] + c["miou_std"],
                        color=style["color"], alpha=0.15, linewidth=0)
    if ref is not None:
        ax.axhline(ref, color="black", linewidth=1, label=f"{FULL_LABEL} ({ref:.1f})")
        ax.axhline(0.95 * ref, color="grey", linewidth=1, linestyle="--", label=f"95% of full ({0.95 * ref:.1f})")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return save(fig, out, "curves", ("png", "svg"))


def plot_per_class(table: pd.DataFrame, out: Path) -> list[Path]:
    """Heatmap of IoU per class (columns) and group (rows), values written in."""
    values = table.to_numpy(float)
    fig = Figure(figsize=(max(6.0, 0.7 * values.shape[1] + 3), 0.45 * values.shape[0] + 2))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if np.isnan(v) else f"{v:.0f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if np.isnan(v) or v < 60 else "black")
    ax.set_xticks(range(values.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), table.index)
    ax.set_title("IoU per class at the last cycle (mean over seeds)")
    fig.colorbar(image, ax=ax, label="IoU (%)")
    return save(fig, out, "per_class")


def revealed_shares(al: pd.DataFrame) -> pd.DataFrame:
    """Per group and cycle: mean over runs of each class's share of revealed pixels."""
    columns = [c for c in al.columns if c.startswith("revealed_")]
    counts = al[columns].astype(float)
    shares = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    shares.columns = [c[len("revealed_"):] for c in columns]
    return shares.join(al[["group", "cycle"]]).groupby(["group", "cycle"]).mean()


def plot_revealed(al: pd.DataFrame, out: Path) -> list[Path]:
    """One panel per group: stacked bars of revealed-pixel shares per class and cycle."""
    shares = revealed_shares(al)
    labels = sorted(shares.index.get_level_values("group").unique())
    ncols = min(3, len(labels))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(4.2 * ncols + 1.5, 3.2 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    palette = colormaps["tab10" if len(shares.columns) <= 10 else "tab20"]
    colors = [palette(i % palette.N) for i in range(len(shares.columns))]
    for ax, label in zip(axes, labels):
        group = shares.loc[label]
        bottom = np.zeros(len(group))
        for cls, color in zip(group.columns, colors):
            ax.bar(group.index, group[cls], bottom=bottom, color=color, label=cls, width=0.8)
            bottom += group[cls].fillna(0).to_numpy()
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("cycle")
        ax.set_xticks(group.index)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    axes[0].set_ylabel("share of revealed pixels (cumulative)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="class")
    fig.tight_layout()
    return save(fig, out, "revealed_classes")


# --------------------------------------------------------------------------- comparison

INTERVAL_TEXT = (
    "Δ = group − baseline in mIoU points, paired by seed (the runs of one seed share the cycle-0 "
    "selection and the initial weights), at each budget (cycle; clicks: mean over the pairs) and "
    "for the AUC (mean mIoU over the clicks both runs of a seed reached). 95% CI: Student t "
    "interval over the per-seed differences (mean ± t(0.975, n−1)·sd/√n). p (t-test): two-sided "
    "paired t-test (scipy.stats.ttest_rel). p (Wilcoxon): two-sided Wilcoxon signed-rank test "
    f"(scipy.stats.wilcoxon), from {MIN_SEEDS} seeds on. wins/losses: seeds on which the group is "
    "above/below the baseline."
)


def p_text(p: float) -> str:
    return "n/a" if np.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    """The rows of compare.md/.tex: one per group and budget plus the AUC, numbers as text."""
    shown = comp[comp["n"] > 0]
    return pd.DataFrame({
        "group": shown["group"],
        "budget": ["AUC" if m == "auc" else f"{x_text(c)} clicks" for m, c in zip(shown["metric"], shown["clicks"])],
        "n": shown["n"],
        "Δ mIoU": [f"{d:+.2f}" for d in shown["mean_delta"]],
        "95% CI (t)": ["n/a" if np.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
                       for lo, hi in zip(shown["ci_low"], shown["ci_high"])],
        "p (t-test)": [p_text(p) for p in shown["p_ttest"]],
        "p (Wilcoxon)": [p_text(p) for p in shown["p_wilcoxon"]],
        "wins/losses": [f"{w}/{lost}" for w, lost in zip(shown["wins"], shown["losses"])],
    })


def comparison_notes(comp: pd.DataFrame, baseline: str) -> list[str]:
    """One line per AUC result, groups left out, and groups too few seeds for a conclusion."""
    areas = comp[comp["metric"] == "auc"]
    lines = [f"{r.group} vs {baseline}: AUC Δ {r.mean_delta:+.2f} mIoU, 95% CI (t) "
             f"{'n/a' if np.isnan(r.ci_low) else f'[{r.ci_low:+.2f}, {r.ci_high:+.2f}]'}, "
             f"paired t-test p {'' if p_text(r.p_ttest).startswith('<') else '= '}{p_text(r.p_ttest)}, wins/losses {r.wins}/{r.losses} over {r.n} seeds"
             for r in areas[areas["n"] > 0].itertuples()]
    lines += [f"no conclusion can be drawn for {r.group}: {r.n} seed(s) shared with {baseline}, "
              f"at least {MIN_SEEDS} needed" for r in areas[areas["n"].between(1, MIN_SEEDS - 1)].itertuples()]
    left_out = areas.loc[areas["n"] == 0, "group"]
    if len(left_out):
        lines.append(f"left out, no seed shared with {baseline}: {'; '.join(left_out)}")
    return lines


def plot_comparison(comp: pd.DataFrame, baseline: str, logx: bool, out: Path) -> list[Path]:
    """Mean Δ mIoU vs clicks per group with its 95% t interval band and a zero line."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    points = comp[(comp["metric"] == "miou") & (comp["n"] > 0)]
    for i, (label, g) in enumerate(points.groupby("group", sort=False)):
        style = dict(color=COLORS[i % 10], linestyle=LINESTYLES[i % 4], marker=MARKERS[i % 8])
        ax.plot(g["clicks"], g["mean_delta"], markersize=4, label=f"{label} (n={g['n'].max()})", **style)
        ax.fill_between(g["clicks"], g["ci_low"], g["ci_high"], color=style["color"], alpha=0.15, linewidth=0)
    ax.axhline(0, color="black", linewidth=1)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS["clicks"])
    ax.set_ylabel(f"Δ mIoU vs {baseline} (points)")
    ax.set_title("paired by seed; band: 95% t interval", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return save(fig, out, "compare")


def write_comparison(comp: pd.DataFrame, logx: bool, out: Path) -> list[Path]:
    """compare.csv (all numbers), compare.md (explanation, notes, table), compare.tex, compare.png."""
    baseline = comp["baseline"].iloc[0]
    comp.to_csv(out / "compare.csv", index=False)
    table = comparison_table(comp)
    notes = "".join(f"- {line}\n" for line in comparison_notes(comp, baseline))
    (out / "compare.md").write_text(
        f"# Paired comparison with the baseline {baseline}\n\n{INTERVAL_TEXT}\n\n{notes}\n{to_markdown(table)}")
    (out / "compare.tex").write_text(to_latex(table))
    paths = [out / f"compare.{ext}" for ext in ("md", "csv", "tex")]
    return paths + plot_comparison(comp, baseline, logx, out)


# --------------------------------------------------------------------------- main

def output_dir(args: argparse.Namespace) -> Path:
    """--out (default: the first PATH when it is a folder), created; AlsegError when it cannot be."""
    out = args.out or (Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path("."))
    if out.exists() and not out.is_dir():
        raise AlsegError(f"--out {out} is a file, not a folder: give a folder to write the plots into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AlsegError(f"cannot create the --out folder {out} ({err.strerror}): give another --out") from None
    if not os.access(out, os.W_OK):
        raise AlsegError(f"cannot write into the --out folder {out}: give another --out")
    return out


def write_plots(al: pd.DataFrame, full: pd.DataFrame, ref: float | None, args, out: Path) -> list[Path]:
    """curves, table, per-class and revealed-class files of the AL runs ``al``."""
    written = plot_curves(al, args.x, ref, args.logx, out)
    written += write_tables(summary_table(al, args.x, ref), ref, out)
    if any(c.startswith("iou_") for c in al.columns):
        per_class = per_class_table(pd.concat([al, full]))
        written += write_per_class(per_class, out) + plot_per_class(per_class, out)
    if any(c.startswith("revealed_") for c in al.columns):
        written += plot_revealed(al, out)
    return written


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def make_plots(args: argparse.Namespace) -> None:
    """Load, group and compare the runs, then write every file; AlsegError for user errors."""
    found, skipped = scan_runs(*args.paths, include_incomplete=args.include_incomplete)
    extra, extra_skipped = scan_runs(*args.full, include_incomplete=args.include_incomplete)
    skipped += extra_skipped
    for line in skipped:
        print(f"alseg plot: left out {line}")
    al = found[~is_full(found)]
    if al.empty and len(found):
        final = final_miou(found)
        raise AlsegError(f"only fully supervised runs (budget=full) under {', '.join(args.paths)}: "
                         f"{plural(len(final), 'run')}, final mIoU {fmt(final.mean(), final.std(), len(final))}"
                         f" (min {final.min():.1f}, max {final.max():.1f}); alseg plot draws them as the "
                         "reference of AL runs: give folders of AL runs beside them")
    if al.empty:
        raise AlsegError(f"no usable runs found under: {', '.join(args.paths)}; give folders that "
                         "hold completed runs (metrics.csv and summary.json)")
    keys = resolve_keys(al, args.group_by) if args.group_by else differing_keys(al)
    al = label_groups(al, keys)
    comparison = paired_comparison(al, keys, args.baseline) if args.baseline else None
    both = pd.concat([found, extra], ignore_index=True) if len(extra) else found
    full = reference_runs(al, both[is_full(both)].drop_duplicates(["run_dir", "cycle"]))
    ref = full_reference(full)
    out = output_dir(args)

    print(f"alseg plot: {plural(al['run_dir'].nunique(), 'run')} in {plural(al['group'].nunique(), 'group')}"
          + (f" ({len(skipped)} left out, see above)" if skipped else "")
          + (f", full supervision {ref:.1f} mIoU" if ref is not None else ", no full-supervision reference"))
    for label, runs in al.groupby("group"):
        seeds = sorted(runs.drop_duplicates("run_dir")["seed"]) if "seed" in runs else []
        print(f"alseg plot:   {label}: {plural(runs['run_dir'].nunique(), 'run')}"
              + (f" (seed {', '.join(map(str, seeds))})" if seeds else ""))
    written = write_plots(al, full, ref, args, out)
    if comparison is not None:
        written += write_comparison(comparison, args.logx, out)
        for line in comparison_notes(comparison, comparison["baseline"].iloc[0]):
            print(f"alseg plot: {line}")
    print("wrote:\n" + "\n".join(f"  {p}" for p in written))


def main(argv: list[str] | None = None) -> int:
    """Run ``alseg plot``; returns the exit code (2, after one line on stderr, for a user error)."""
    args = parse_args(argv)
    try:
        make_plots(args)
    except AlsegError as err:
        print(f"alseg plot: {err}", file=sys.stderr)
        return 2
    return 0
