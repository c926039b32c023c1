"""Paired comparison over seeds: alseg.compare on a hand-made table and `alseg plot --baseline`
on real (tiny) runs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from scipy import stats

from alseg import plot, results
from alseg.compare import paired_comparison
from alseg.errors import AlsegError
from alseg.experiment import run

TINY = ["dataset.size=[32,48]", "dataset.num_train=12", "dataset.num_val=4", "model=small",
        "train.epochs=1", "train.batch_size=6", "budget.initial=3", "budget.per_cycle=3",
        "budget.cycles=1", "device=cpu", "overlay_images=0", "save_model=never"]
SEEDS = (0, 1, 2)


# --------------------------------------------------------------------------- pairing by hand

def hand_runs() -> pd.DataFrame:
    """random: seeds 0-3; margin: seed 1 twice, seed 2, seed 3 stopped after cycle 1, seed 4;
    entropy: seed 9 only."""
    runs = [("random", s, f"r{s}", [10 + s, 20 + s, 30 + s]) for s in range(4)]
    runs += [("margin", 1, "m1a", [11, 23, 35]), ("margin", 1, "m1b", [11, 25, 37]),
             ("margin", 2, "m2", [12, 24, 31]), ("margin", 3, "m3", [13, 27]),
             ("margin", 4, "m4", [14, 30, 40]), ("entropy", 9, "e9", [5, 6, 7])]
    rows = [{"strategy.name": name, "seed": seed, "run_dir": run_dir, "cycle": c, "clicks": 10 * c, "miou": m}
            for name, seed, run_dir, miou in runs for c, m in enumerate(miou)]
    return pd.DataFrame(rows)


def test_pairs_by_seed_and_cycle():
    comp = paired_comparison(hand_runs(), ["strategy.name"], "random")
    assert set(comp["baseline"]) == {"random"}
    margin = comp[comp["group"] == "margin"].set_index("cycle", drop=False)
    miou = margin[margin["metric"] == "miou"]
    # seed 1: the two runs averaged (11, 24, 36); deltas vs random (11, 21, 31) etc.; seed 4 unpaired
    assert miou["n"].tolist() == [3, 3, 2]
    assert miou["mean_delta"].tolist() == pytest.approx([0, 3, 2])
    assert (miou.loc[1, "wins"], miou.loc[1, "losses"]) == (3, 0)
    assert (miou.loc[2, "wins"], miou.loc[2, "losses"]) == (1, 1)
    assert miou.loc[1, "p_ttest"] == pytest.approx(stats.ttest_rel([24, 24, 27], [21, 22, 23]).pvalue)
    assert np.isnan(miou.loc[2, "p_wilcoxon"])  # 2 seeds: no signed-rank test

    area = margin[margin["metric"] == "auc"].iloc[0]
    # per seed over the cycles both runs reached: (23.75, 21), (22.75, 22), (20, 18)
    deltas = np.array([2.75, 0.75, 2.0])
    assert area["n"] == 3 and area["mean_delta"] == pytest.approx(deltas.mean())
    half = stats.t.ppf(0.975, 2) * deltas.std(ddof=1) / np.sqrt(3)
    assert (area["ci_low"], area["ci_high"]) == pytest.approx((deltas.mean() - half, deltas.mean() + half))
    assert area["p_ttest"] == pytest.approx(stats.ttest_1samp(deltas, 0).pvalue)
    assert area["p_wilcoxon"] == pytest.approx(stats.wilcoxon(deltas).pvalue)

    entropy = comp[comp["group"] == "entropy"]
    assert entropy["n"].tolist() == [0] and entropy["metric"].tolist() == ["auc"]


def test_baseline_names_one_group():
    df = hand_runs()
    assert paired_comparison(df, ["strategy.name"], "margin")["baseline"].iloc[0] == "margin"
    with pytest.raises(AlsegError, match="'entropy'; 'margin'; 'random'"):
        paired_comparison(df, ["strategy.name"], "bald")
    df["region.name"] = ["seeds" if d.startswith("r") else "box" for d in df["run_dir"]]
    keys = ["strategy.name", "region.name"]
    for value in ("random, SEEDS", "random", "seeds"):  # the label, or a value only it has
        assert paired_comparison(df, keys, value)["baseline"].iloc[0] == "random, SEEDS"
    with pytest.raises(AlsegError, match="several groups"):
        paired_comparison(df, keys, "box")
    with pytest.raises(AlsegError, match="only one group"):
        paired_comparison(df[df["strategy.name"] == "random"], ["strategy.name"], "random")


# --------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """random and margin x seeds 0-2, plus entropy with seed 7 (shares no seed): real runs."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp, \
            initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        mp.setenv("ALSEG_CACHE", str(root / "cache"))
        for strategy, seed in [*((s, k) for s in ("random", "margin") for k in SEEDS), ("entropy", 7)]:
            cfg = compose(config_name="config", overrides=[*TINY, f"strategy={strategy}", f"seed={seed}"])
            run(cfg, root / "runs" / f"{strategy}_{seed}")
    return root / "runs"


def metrics(sweep, strategy: str) -> list[pd.DataFrame]:
    return [pd.read_csv(sweep / f"{strategy}_{seed}" / "metrics.csv") for seed in SEEDS]


def test_plot_baseline_on_real_runs(sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot.main([str(sweep), "--baseline", "random", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("compare.md", "compare.csv", "compare.tex", "compare.png"):
        assert (out / name).stat().st_size > 0, name
    comp = pd.read_csv(out / "compare.csv")
    assert "p_ttest" in comp

    margin, random = metrics(sweep, "margin"), metrics(sweep, "random")
    row = comp[(comp["group"] == "margin") & (comp["metric"] == "auc")].iloc[0]
    ours = [results.auc(m["clicks"], m["miou"]) for m in margin]
    theirs = [results.auc(m["clicks"], m["miou"]) for m in random]
    assert row["n"] == 3 and row["mean_delta"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(ours, theirs).pvalue, nan_ok=True)
    for cycle in (0, 1):
        row = comp[(comp["group"] == "margin") & (comp["cycle"] == cycle)].iloc[0]
        ours = [m.loc[cycle, "miou"] for m in margin]
        theirs = [m.loc[cycle, "miou"] for m in random]
        assert row["clicks"] == margin[0].loc[cycle, "clicks"]
        assert row["p_ttest"] == pytest.approx(stats.ttest_rel(ours, theirs).pvalue, nan_ok=True)
        assert row["wins"] == sum(a > b for a, b in zip(ours, theirs))

    # entropy ran only with seed 7: named and left out
    entropy = comp[comp["group"] == "entropy"]
    assert entropy["n"].tolist() == [0]
    md = (out / "compare.md").read_text()
    assert "no seed shared with random: entropy" in md and "no seed shared with random: entropy" in printed
    assert "| entropy |" not in md
    assert "Student t interval" in md and "ttest_rel" in md
    assert "no conclusion" not in md


def test_plot_baseline_with_two_seeds(sweep, tmp_path, capsys):
    two = tmp_path / "two"
    for strategy in ("random", "margin"):
        for seed in SEEDS[:2]:
            shutil.copytree(sweep / f"{strategy}_{seed}", two / f"{strategy}_{seed}")
    assert plot.main([str(two), "--baseline", "random"]) == 0
    assert "no conclusion can be drawn for margin" in capsys.readouterr().out
    assert "no conclusion can be drawn for margin" in (two / "compare.md").read_text()
    comp = pd.read_csv(two / "compare.csv")
    assert set(comp["n"]) == {2} and (two / "compare.png").exists()


def test_plot_unknown_baseline_is_one_line(sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot.main([str(sweep), "--baseline", "bald", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'random'" in err and "'margin'" in err
    assert not out.exists()  # nothing half-written
