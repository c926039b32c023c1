import json

import numpy as np
import pandas as pd
import pytest

from alseg.errors import AlsegError
from alseg.experiment import run

TIMING = ["train_s", "query_s"]


from alseg.pool import load_selections as selections


def test_per_image_budget_is_respected_and_nothing_is_asked_twice(make_cfg, tmp_path):
    cfg = make_cfg("strategy=margin")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["cycles_done"] == 3
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["cycle"].tolist() == [0, 1, 2]
    assert metrics["clicks"].tolist() == [3 * 12, 6 * 12, 9 * 12]
    seen = set()
    for images, regions in selections(tmp_path / "run"):
        assert np.bincount(images, minlength=12).tolist() == [3] * 12  # the quota, every image
        pairs = set(zip(images.tolist(), regions.tolist()))
        assert len(pairs) == len(images) and not pairs & seen
        seen |= pairs
    assert (metrics["label_noise"] == 0).all()
    for name in ("summary.json", "curve.png", "model.pt", "queries/cycle_02.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_click_budget_with_seeds_superpixels(make_cfg, tmp_path):
    cfg = make_cfg("region=seeds", "region.num_superpixels=40", "budget=clicks", "budget.initial=30",
                   "budget.per_cycle=20", "budget.cycles=2", "strategy=entropy", "strategy.class_balance=true")
    run(cfg, tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["clicks"].tolist() == [30, 50, 70]  # dominant labels cost one click per region
    assert metrics["regions"].tolist() == [30, 50, 70]
    assert (metrics["label_noise"] > 0).all()  # superpixels straddle class boundaries
    pairs = [p for images, regions in selections(tmp_path / "run") for p in zip(images, regions)]
    assert len(pairs) == len(set(pairs)) == 70


def test_same_seed_same_selections_and_metrics(make_cfg, tmp_path):
    cfg = make_cfg("strategy=entropy", "seed=3")
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "metrics.csv").drop(columns=TIMING)
    b = pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)
    for (ia, ra), (ib, rb) in zip(selections(tmp_path / "a"), selections(tmp_path / "b")):
        assert (ia == ib).all() and (ra == rb).all()
    run(make_cfg("strategy=entropy", "seed=4"), tmp_path / "c")
    assert not (selections(tmp_path / "c")[0][1] == selections(tmp_path / "a")[0][1]).all()


def test_bad_config_fails_with_a_message_and_a_failed_summary(make_cfg, tmp_path):
    with pytest.raises(AlsegError, match="top_percent"):
        run(make_cfg("strategy=margin", "strategy.top_percent=2"), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "top_percent" in summary["message"]
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_resume_of_a_completed_run_does_nothing(make_cfg, tmp_path):
    run(make_cfg(), tmp_path / "run")
    before = (tmp_path / "run" / "metrics.csv").read_text()
    summary = run(make_cfg("resume=true"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert (tmp_path / "run" / "metrics.csv").read_text() == before
    with pytest.raises(AlsegError, match="strategy.name"):
        run(make_cfg("resume=true", "strategy=margin"), tmp_path / "run")


@pytest.mark.parametrize("strategy", ["ratio", "bald", "variation_ratio", "vote_entropy", "kl_consensus", "coreset", "hybrid"])
def test_every_strategy_runs_with_pixels_and_superpixels(make_cfg, tmp_path, strategy):
    extra = ["strategy.passes=2"] if strategy in ("bald", "variation_ratio", "vote_entropy", "kl_consensus") else []
    run(make_cfg(f"strategy={strategy}", "budget.cycles=1", *extra), tmp_path / "pixel")
    run(make_cfg(f"strategy={strategy}", "budget.cycles=1", "region=seeds", "region.num_superpixels=30",
                 "budget=clicks", "budget.initial=20", "budget.per_cycle=15", *extra), tmp_path / "seeds")
    pixel = pd.read_csv(tmp_path / "pixel" / "metrics.csv")
    seeds = pd.read_csv(tmp_path / "seeds" / "metrics.csv")
    assert pixel["clicks"].tolist() == [36, 72] and seeds["clicks"].tolist() == [20, 35]
    for out in ("pixel", "seeds"):
        pairs = [p for images, regions in selections(tmp_path / out) for p in zip(images, regions)]
        assert len(pairs) == len(set(pairs))


def test_committee_of_models(make_cfg, tmp_path):
    cfg = make_cfg("strategy=vote_entropy", "strategy.committee=models", "strategy.members=2", "budget.cycles=1")
    run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "state" / "cycle_01" / "member_1.pt").exists()
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 2
