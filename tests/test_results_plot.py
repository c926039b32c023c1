"""Tests for alseg.results and alseg.plot on hand-made run directories."""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest

from alseg import plot, results

CLASSES = ("road", "car", "sky")


def make_run(root, name, *, strategy="margin", seed=0, miou=(50, 60, 80), clicks=(0, 100, 200),
             budget="per_image", status="completed", dataset="synthetic", class_balance=False,
             fractions=None, write_metrics=True, extra=None, cycles=None):
    """Write a fake run directory (metrics.csv + summary.json) and return its path."""
    run = root / name
    run.mkdir(parents=True)
    rows = []
    for cycle, (c, m) in enumerate(zip(clicks, miou)):
        row = {"cycle": cycle, "clicks": c, "regions": c, "labelled_pixels": 10 * c,
               "labelled_fraction": fractions[cycle] if fractions else c / 1000, "miou": m,
               "pixel_acc": m + 10, "label_noise": 0.0, "train_s": 1.0, "query_s": 0.1}
        row.update({f"iou_{k}": m + i for i, k in enumerate(CLASSES)})
        row.update({f"revealed_{k}": (cycle + 1) * (i + 1) * 10 for i, k in enumerate(CLASSES)})
        row.update({k: v[cycle] for k, v in (extra or {}).items()})
        rows.append(row)
    if write_metrics:
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    config = {
        "seed": seed, "device": "auto",
        "dataset": {"name": dataset, "size": [64, 96], "root": None, "cache_dir": str(run / "cache"),
                    "num_train": 200, "num_val": 50},
        "region": {"name": "pixel"},
        "annotation": {"name": "dominant", "noise": 0.0},
        "strategy": {"name": strategy, "class_balance": class_balance, "top_percent": None, "aggregate": "mean"},
        "budget": {"name": budget, "initial": 10, "per_cycle": 10, "cycles": cycles or len(rows) - 1},
        "model": {"name": "unet_small", "arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "train": {"epochs": 20, "batch_size": 8, "lr": 0.001, "reinit": True},
    }
    summary = {"status": status, "message": None, "dataset": dataset, "region": "pixel",
               "annotation": "dominant", "strategy": strategy, "budget": budget, "seed": seed,
               "cycles_done": len(rows), "final_miou": miou[-1], "auc": None,
               "num_train_images": 200, "image_size": [64, 96], "config": config}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def quiet_load(*paths):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return results.load_runs(*paths)


# --------------------------------------------------------------------------- results

def test_load_runs_flattens_config(tmp_path):
    make_run(tmp_path / "multirun", "0", seed=3)
    df = quiet_load(tmp_path)
    assert len(df) == 3
    row = df.iloc[0]
    assert row["strategy.name"] == "margin"
    assert row["seed"] == 3
    assert row["budget.per_cycle"] == 10
    assert row["dataset.size"] == (64, 96)
    assert row["status"] == "completed"
    assert row["pixels_per_image"] == pytest.approx(0.0)
    assert df["pixels_per_image"].iloc[-1] == pytest.approx(2000 / 200)


def test_run_dir_itself_is_a_path(tmp_path):
    run = make_run(tmp_path, "single")
    assert quiet_load(run)["run_dir"].nunique() == 1


def test_a_file_stands_for_its_run_only(tmp_path, capsys):
    """A shell glob over a sweep folder also names its logs: they must not pull in the
    runs beside them (here the other group's), only a run's own files name it."""
    margin = make_run(tmp_path / "margin_sweep", "seed0", strategy="margin")
    make_run(tmp_path / "random_sweep", "seed0", strategy="random")
    (tmp_path / "random_sweep.log").write_text("sweep log")
    (tmp_path / "margin_sweep" / "multirun.yaml").write_text("hydra: {}")
    df, skipped = results.scan_runs(tmp_path / "margin_sweep", tmp_path / "random_sweep.log",
                                    tmp_path / "margin_sweep" / "multirun.yaml")
    assert set(df["strategy.name"]) == {"margin"}
    assert [line.split(":")[0] for line in skipped] == [str(tmp_path / "random_sweep.log"),
                                                        str(tmp_path / "margin_sweep" / "multirun.yaml")]
    assert all("a file outside any run folder" in line for line in skipped)
    assert set(quiet_load(margin / "metrics.csv")["run_dir"]) == {str(margin.resolve())}
    assert plot.main([str(tmp_path / "margin_sweep"), str(tmp_path / "random_sweep.log")]) == 0
    assert "left out " + str(tmp_path / "random_sweep.log") in capsys.readouterr().out


def test_mean_and_std_over_seeds(tmp_path):
    make_run(tmp_path, "s0", seed=0, miou=(40, 50, 60))
    make_run(tmp_path, "s1", seed=1, miou=(44, 54, 62))
    agg = results.aggregate(quiet_load(tmp_path), ["strategy.name"])
    assert list(agg["clicks"]) == [0, 100, 200]
    assert list(agg["miou_mean"]) == pytest.approx([42, 52, 61])
    assert list(agg["miou_std"]) == pytest.approx([math.sqrt(8), math.sqrt(8), math.sqrt(2)])  # ddof=1
    assert set(agg["n"]) == {2}


def test_single_run_has_zero_std(tmp_path):
    make_run(tmp_path, "s0")
    agg = results.aggregate(quiet_load(tmp_path), [])
    assert list(agg["miou_std"]) == [0, 0, 0]


def test_aggregate_interpolates_different_clicks(tmp_path):
    make_run(tmp_path, "s0", seed=0, clicks=(0, 100, 200), miou=(50, 60, 80))
    make_run(tmp_path, "s1", seed=1, clicks=(0, 150, 300), miou=(50, 70, 90))
    agg = results.aggregate(quiet_load(tmp_path), ["strategy.name"])
    # union of clicks inside the common range [0, 200]
    assert list(agg["clicks"]) == [0, 100, 150, 200]
    # run 0 at 150: 70; run 1 at 100: 50 + 20 * 100/150; at 200: 70 + 20 * 50/150
    expected = [50, (60 + 50 + 20 * 100 / 150) / 2, (70 + 70) / 2, (80 + 70 + 20 * 50 / 150) / 2]
    assert list(agg["miou_mean"]) == pytest.approx(expected)


def test_clicks_to_interpolates():
    assert results.clicks_to([0, 100, 200], [50, 60, 80], 70) == pytest.approx(150)
    assert results.clicks_to([0, 100, 200], [50, 60, 80], 50) == 0
    assert results.clicks_to([200, 0, 100], [80, 50, 60], 55) == pytest.approx(50)
    assert results.clicks_to([0, 100, 200], [50, 60, 80], 81) is None


def test_clicks_to_first_crossing():
    # crosses 70 between 100 and 200, dips, crosses again later: the first one counts
    assert results.clicks_to([0, 100, 200, 300, 400], [50, 60, 80, 60, 90], 70) == pytest.approx(150)


def test_auc_is_mean_miou_over_range():
    assert results.auc([0, 100, 200], [50, 60, 80]) == pytest.approx((55 * 100 + 70 * 100) / 200)
    assert results.auc([100, 300], [40, 60]) == pytest.approx(50)
    assert results.auc([5], [42]) == 42


def test_groups_from_differing_config(tmp_path):
    for strategy in ("margin", "entropy"):
        for seed in (0, 1):
            make_run(tmp_path, f"{strategy}_{seed}", strategy=strategy, seed=seed)
    make_run(tmp_path, "full", budget="full", strategy="random", miou=(90,), clicks=(5000,))
    df = quiet_load(tmp_path)
    keys = results.differing_keys(df)
    assert keys == ["strategy.name"]  # not seed, not cache_dir, not the full run's values
    found = results.groups(df[~results.is_full(df)], keys)
    assert len(found) == 2
    assert sorted(results.group_label(rows.iloc[0], keys) for _, rows in found) == ["entropy", "margin"]


def test_a_run_made_before_a_key_existed_groups_with_runs_that_give_it_the_old_value(tmp_path):
    make_run(tmp_path, "old", seed=0)  # its config predates train.ensemble and train.ema
    for name, seed, ensemble in [("new", 1, 1), ("ensemble", 0, 5)]:
        run = make_run(tmp_path, name, seed=seed) / "summary.json"
        summary = json.loads(run.read_text())
        summary["config"]["train"].update(ensemble=ensemble, ema=None)
        run.write_text(json.dumps(summary))
    df = quiet_load(tmp_path)
    keys = results.differing_keys(df)
    assert keys == ["train.ensemble"]
    found = {results.group_label(rows.iloc[0], keys): sorted(rows["run_dir"].map(lambda p: p.split("/")[-1]).unique())
             for _, rows in results.groups(df, keys)}
    assert found == {"ensemble=1": ["new", "old"], "ensemble=5": ["ensemble"]}


def test_differing_keys_strategy_first(tmp_path):
    make_run(tmp_path, "a", strategy="margin")
    make_run(tmp_path, "b", strategy="entropy", class_balance=True)
    run = tmp_path / "b" / "summary.json"
    summary = json.loads(run.read_text())
    summary["config"]["region"]["name"] = "seeds"
    run.write_text(json.dumps(summary))
    df = quiet_load(tmp_path)
    keys = results.differing_keys(df)
    # class_balance follows from strategy.name here (only entropy has it): left out
    assert keys == ["strategy.name", "region.name"]
    labels = {results.group_label(rows.iloc[0], keys) for _, rows in results.groups(df, keys)}
    assert labels == {"margin, pixel", "entropy, SEEDS"}
    make_run(tmp_path, "c", strategy="margin", class_balance=True)  # now it tells runs apart
    df = quiet_load(tmp_path)
    keys = results.differing_keys(df)
    assert keys == ["strategy.name", "strategy.class_balance", "region.name"]
    labels = {results.group_label(rows.iloc[0], keys) for _, rows in results.groups(df, keys)}
    assert labels == {"margin, pixel", "margin, class_balance, pixel", "entropy, class_balance, SEEDS"}


def test_group_label_words():
    row = pd.Series({"strategy.name": "margin", "region.name": "seeds", "annotation.name": "dominant",
                     "strategy.class_balance": True, "budget.per_cycle": 20.0, "dataset.size": (64, 96)})
    keys = list(row.index)
    assert results.group_label(row, keys) == "margin, SEEDS, dominant, class_balance, per_cycle=20, size=64x96"
    row["strategy.class_balance"] = False
    assert results.group_label(row, keys) == "margin, SEEDS, dominant, per_cycle=20, size=64x96"
    assert results.group_label(row, ["strategy.class_balance"]) == "no class_balance"
    assert results.group_label(row, []) == "margin, SEEDS, dominant"


def test_bad_runs_are_skipped_with_warning(tmp_path):
    make_run(tmp_path, "good")
    make_run(tmp_path, "failed", status="failed")
    make_run(tmp_path, "no_metrics", write_metrics=False)
    empty = make_run(tmp_path, "empty")
    (empty / "metrics.csv").write_text("")
    broken = make_run(tmp_path, "broken")
    (broken / "summary.json").write_text("{not json")
    with pytest.warns(UserWarning) as caught:
        df = results.load_runs(tmp_path)
    assert [p.split("/")[-1] for p in df["run_dir"].unique()] == ["good"]
    messages = " ".join(str(w.message) for w in caught)
    for name in ("failed", "no_metrics", "empty", "broken"):
        assert str(tmp_path / name) in messages


def test_full_reference_matches_dataset(tmp_path):
    make_run(tmp_path, "al", miou=(50, 60, 70))
    make_run(tmp_path, "full0", budget="full", seed=0, miou=(78,), clicks=(9999,))
    make_run(tmp_path, "full1", budget="full", seed=1, miou=(82,), clicks=(9999,))
    make_run(tmp_path, "other", budget="full", dataset="camvid", miou=(40,), clicks=(9999,))
    assert results.full_reference(quiet_load(tmp_path)) == pytest.approx(80)
    assert results.full_reference(quiet_load(tmp_path / "al")) is None


# --------------------------------------------------------------------------- plot

OUTPUTS = ("curves.png", "curves.svg", "table.md", "table.csv", "table.tex",
           "per_class.png", "per_class.md", "per_class.csv", "revealed_classes.png")


def md_rows(path):
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    return lines[2:]  # without header and separator


def test_main_writes_every_file(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    make_run(sweep, "0", strategy="margin", seed=0, miou=(40, 50, 60))
    make_run(sweep, "1", strategy="margin", seed=1, miou=(44, 54, 62))
    make_run(sweep, "2", strategy="random", seed=0, miou=(40, 45, 50))
    make_run(sweep, "3", strategy="random", seed=1, miou=(40, 47, 52))
    assert plot.main([str(sweep)]) == 0
    for name in OUTPUTS:
        assert (sweep / name).stat().st_size > 0, name
    assert "curves.png" in capsys.readouterr().out

    rows = md_rows(sweep / "table.md")
    assert len(rows) == 2
    table = pd.read_csv(sweep / "table.csv")
    assert list(table.columns) == ["group", "n", "miou@0", "miou@100", "miou@200", "auc", "clicks_to_95"]
    margin = table.set_index("group").loc["margin"]
    assert margin["n"] == 2
    assert margin["miou@100"] == f"52.0 ± {math.sqrt(8):.1f}"
    assert margin["auc"].startswith(f"{results.auc([0, 100, 200], [42, 52, 61]):.1f} ± ")
    assert table["clicks_to_95"].isna().all()  # no reference
    per_class = pd.read_csv(sweep / "per_class.csv", index_col="group")
    assert per_class.loc["margin", "car"] == pytest.approx(62)  # mean of 61 and 63
    assert len(md_rows(sweep / "per_class.md")) == 2


def test_main_with_full_reference(tmp_path):
    make_run(tmp_path, "margin", strategy="margin", miou=(50, 60, 80))
    make_run(tmp_path, "random", strategy="random", miou=(50, 55, 60))
    ref_dir = tmp_path.parent / f"{tmp_path.name}_ref"
    make_run(ref_dir, "full", budget="full", miou=(80,), clicks=(50000,))
    out = tmp_path / "plots"
    assert plot.main([str(tmp_path), "--full", str(ref_dir), "--out", str(out)]) == 0
    table = pd.read_csv(out / "table.csv").set_index("group")
    # 95% of 80 = 76, reached between (100, 60) and (200, 80): 100 + 16/20 * 100
    assert table.loc["margin", "clicks_to_95"] == pytest.approx(180)
    assert math.isnan(table.loc["random", "clicks_to_95"])
    md = (out / "table.md").read_text()
    assert "| 180 |" in md and "not reached" in md
    per_class = pd.read_csv(out / "per_class.csv", index_col="group")
    assert "full supervision" in per_class.index
    assert "95% of full" in (out / "curves.svg").read_text()


def test_main_full_run_among_paths_is_reference_not_group(tmp_path):
    make_run(tmp_path, "margin", strategy="margin", miou=(50, 60, 80))
    make_run(tmp_path, "full", budget="full", strategy="random", miou=(80,), clicks=(50000,))
    assert plot.main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table["group"]) == ["margin, pixel, dominant"]  # no differing keys: default label
    assert table["clicks_to_95"].iloc[0] == pytest.approx(180)


def test_main_cycle_columns_when_x_differs(tmp_path):
    make_run(tmp_path, "s0", seed=0, fractions=(0.01, 0.02, 0.03))
    make_run(tmp_path, "s1", seed=1, fractions=(0.01, 0.03, 0.05))
    assert plot.main([str(tmp_path), "--x", "labelled_fraction", "--logx"]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table.columns[2:5]) == ["cycle_0", "cycle_1", "cycle_2"]
    assert table["cycle_1"].iloc[0] == "60.0 ± 0.0 @ 0.025"


def test_cycle_cells_write_large_budgets_in_full(tmp_path):
    make_run(tmp_path, "s0", seed=0, clicks=(2000, 4001, 10004))
    make_run(tmp_path, "s1", seed=1, clicks=(2000, 4003, 10006))
    assert plot.main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    assert table["cycle_2"].iloc[0] == "80.0 ± 0.0 @ 10005"  # not 1e+04


def test_main_group_by(tmp_path):
    make_run(tmp_path, "a", strategy="margin", class_balance=True)
    make_run(tmp_path, "b", strategy="margin", class_balance=False)
    assert plot.main([str(tmp_path), "--group-by", "strategy,strategy.class_balance"]) == 0
    labels = sorted(pd.read_csv(tmp_path / "table.csv")["group"])
    assert labels == ["margin", "margin, class_balance"]
    assert plot.main([str(tmp_path), "--group-by", "nonsense"]) == 2


def test_main_without_runs_returns_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no usable runs" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err


def test_main_with_only_full_runs_names_them(tmp_path, capsys):
    make_run(tmp_path, "full0", budget="full", seed=0, miou=(78,), clicks=(9999,))
    make_run(tmp_path, "full1", budget="full", seed=1, miou=(82,), clicks=(9999,))
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only fully supervised runs" in err and "2 runs, final mIoU 80.0 ± 2.8" in err
    assert "min 78.0, max 82.0" in err and "Traceback" not in err


# --------------------------------------------------------------------------- robust loading

def test_metric_columns_never_group(tmp_path):
    make_run(tmp_path, "a", seed=0, extra={"train_steps": [10, 20, 30]})
    make_run(tmp_path, "b", seed=1, extra={"train_steps": [15, 25, 35]})
    make_run(tmp_path, "old", seed=2)  # written before the column existed
    df = quiet_load(tmp_path)
    assert "train_steps" in df and "train_steps" not in results.config_columns(df)
    assert results.differing_keys(df) == []
    assert "strategy.name" in results.config_columns(df) and "miou" not in results.config_columns(df)


def test_incomplete_runs_left_out_unless_asked(tmp_path, capsys):
    make_run(tmp_path, "done", seed=0, miou=(40, 50, 60))
    make_run(tmp_path, "running", seed=1, miou=(44, 54), clicks=(0, 100), status="running", cycles=2)
    make_run(tmp_path, "stopped", seed=2, miou=(42, 52, 62), status="interrupted")
    out = tmp_path / "plots"
    assert plot.main([str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 run" in printed
    for name, status in (("running", "running"), ("stopped", "interrupted")):
        line = next(ln for ln in printed.splitlines() if str(tmp_path / name) in ln)
        assert status in line
    table = pd.read_csv(out / "table.csv", dtype=str)
    assert table["n"].tolist() == ["1"] and table["miou@200"].tolist() == ["60.0"]

    assert plot.main([str(tmp_path), "--out", str(out), "--include-incomplete"]) == 0
    table = pd.read_csv(out / "table.csv", dtype=str)
    assert table["n"].tolist() == ["3"]
    assert table["miou@100"].tolist() == ["52.0 ± 2.0"]  # all three runs: no n in the cell
    assert table["miou@200"].tolist() == [f"61.0 ± {math.sqrt(2):.1f} (n=2)"]


def cut(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("damage", ["cut_mid_line", "short_row", "long_row", "empty_miou"])
def test_unparsable_metrics_are_skipped(tmp_path, capsys, damage):
    make_run(tmp_path, "good", seed=0, miou=(40, 50, 60))
    bad = make_run(tmp_path, "bad", seed=1, miou=(10, 20, 30))
    metrics = bad / "metrics.csv"
    text = metrics.read_text()
    header, *lines = text.splitlines()
    if damage == "cut_mid_line":
        cut(metrics, text[: len(text) - len(lines[-1]) // 2])
    elif damage == "short_row":  # the last row lost its last fields, line end kept
        cut(metrics, "\n".join([header, *lines[:-1], ",".join(lines[-1].split(",")[:5])]) + "\n")
    elif damage == "long_row":
        cut(metrics, "\n".join([header, *lines, lines[-1] + ",7,8"]) + "\n")
    else:
        miou_at = header.split(",").index("miou")
        fields = lines[1].split(",")
        fields[miou_at] = ""
        cut(metrics, "\n".join([header, lines[0], ",".join(fields), lines[2]]) + "\n")
    with pytest.warns(UserWarning, match="metrics.csv"):
        df = results.load_runs(tmp_path)
    assert df["run_dir"].unique().tolist() == [str(tmp_path / "good")]

    out = tmp_path / "plots"
    assert plot.main([str(tmp_path), "--out", str(out)]) == 0
    assert str(metrics) in capsys.readouterr().out
    table = pd.read_csv(out / "table.csv", dtype=str)
    assert table["miou@100"].tolist() == ["50.0"]
    assert table["auc"].tolist() == [f"{results.auc([0, 100, 200], [40, 50, 60]):.1f}"]


def test_out_that_cannot_be_a_folder(tmp_path, capsys):
    make_run(tmp_path, "run")
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for out in (file, file / "plots"):
        assert plot.main([str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(out) in err and "Traceback" not in err
    assert file.read_text() == "mine"
    assert not (tmp_path / "curves.png").exists()


def test_main_reports_skipped_runs(tmp_path, capsys):
    make_run(tmp_path, "a", seed=0)
    make_run(tmp_path, "b", seed=1, status="failed")
    (make_run(tmp_path, "c", seed=2) / "summary.json").write_text('{"status": "compl')
    assert plot.main([str(tmp_path), str(tmp_path / "typo")]) == 0
    printed = capsys.readouterr().out
    assert "1 run " in printed and "1 group" in printed and "3 left out" in printed
    assert str(tmp_path / "b") in printed and str(tmp_path / "c" / "summary.json") in printed
    assert str(tmp_path / "typo") in printed
