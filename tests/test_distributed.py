"""One run over two gloo processes on the CPU (devices=2): it completes and rank 0 alone writes
its files; sharded pool scoring equals one process's exactly; a stopped run resumes."""
from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alseg import distributed, query
from alseg.callbacks import Callback
from alseg.cpus import usable_cpus
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.model import build_model
from alseg.regions import Regions
from alseg.strategies import build_strategy
from test_rundir import SMALL, TIMING, compose_cfg, interrupted_run

TWO = [*SMALL, "devices=2", "strategy=entropy", "budget.cycles=1"]


class SeeProcesses(Callback):
    """Records how many processes the run (rank 0, where hooks run) had."""

    seen: list[int] = []

    def on_run_start(self, run, start_cycle):
        SeeProcesses.seen.append(distributed.world())


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A whole 2-process run, and the overrides that made it."""
    root = tmp_path_factory.mktemp("ddp")
    overrides = [*TWO, f"dataset.cache_dir={root / 'cache'}", "callbacks=[test_distributed.SeeProcesses]"]
    SeeProcesses.seen.clear()
    summary = run(compose_cfg(*overrides), root / "whole")
    return root, overrides, summary


def test_two_processes_complete_and_rank_0_writes_each_file_once(whole):
    root, overrides, summary = whole
    out = root / "whole"
    assert summary["status"] == "completed" and SeeProcesses.seen == [2]
    assert distributed.world() == 1 and torch.get_num_threads() >= 1  # the group is gone
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["cycle"].tolist() == [0, 1]  # one row per cycle, no second writer's rows
    assert json.loads((out / "summary.json").read_text())["cycles_done"] == 2
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith(".tmp")]
    # the same files as the same run in one process: no rank writes a file of its own
    single = run(compose_cfg(*[o for o in overrides if o != "devices=2"]), root / "single")
    assert names == sorted(str(p.relative_to(root / "single")) for p in (root / "single").rglob("*") if p.is_file())
    assert single["status"] == "completed"


def test_a_stopped_two_process_run_resumes_to_the_same_results(whole):
    root, overrides, _ = whole
    out = root / "stopped"
    interrupted_run(compose_cfg(*overrides), out, after_cycle=0)
    assert pd.read_csv(out / "metrics.csv")["cycle"].tolist() == [0]
    summary = run(compose_cfg(*overrides, "resume=true"), out)
    assert summary["status"] == "completed" and summary["cycles_done"] == 2
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(root / "whole" / "metrics.csv").drop(columns=TIMING))


STRATEGIES = {"random": [], "entropy": ["strategy.class_balance=true"], "bald": ["strategy.passes=3"],
              "coreset": [], "hybrid": []}


def score_all(cfg) -> list:
    """Every strategy of cfg.strategies scores the same pool with the same weights, each
    process its shard; rank 0 gets the whole pool's scores (a run of one: all of them)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    g = torch.Generator().manual_seed(1)
    n, h, w = 10, 32, 48
    images = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n, h, w), dtype=torch.uint8, generator=g)
    revealed = torch.where(torch.rand(n, h, w, generator=g) < 0.1, labels, torch.full_like(labels, 255))
    maps = torch.randint(0, 20, (n, h, w), generator=g).numpy().astype(np.uint16)
    regions = Regions("test", maps, np.full(n, 20))
    out = []
    for strategy_cfg in cfg.strategies:
        strategy = build_strategy(strategy_cfg)
        generator = torch.Generator().manual_seed(2)
        scores = query.score_pool(strategy, [model] if strategy.needs_model else [], images, labels, revealed,
                                  regions, generator, 3, 4, distributed.shard(n, 3))
        out.append(distributed.gather_rows(scores, n, 3))
    return out


def test_sharded_scoring_equals_one_process_scoring():
    strategies = [compose_cfg(f"strategy={name}", *extra).strategy for name, extra in STRATEGIES.items()]
    cfg = OmegaConf.create({"devices": 2, "device": "cpu", "model": compose_cfg().model, "strategies": strategies})
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, usable_cpus() // 2))  # as each of the 2 processes: sums then add up alike
    try:
        single = score_all(cfg)
    finally:
        torch.set_num_threads(threads)
    with distributed.processes(cfg, score_all) as main:
        assert main and distributed.world() == 2
        assert distributed.shard(10, 3) == slice(0, 6)  # batches 0-1 here, 2-3 in rank 1
        sharded = score_all(cfg)
    for name, a, b in zip(STRATEGIES, single, sharded):
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert (x is None) == (y is None), (name, f.name)
            if x is not None:
                assert torch.equal(x, y), (name, f.name)
    assert single[3].embeddings is not None and single[1].classes is not None


def test_devices_must_fit_the_batch_and_the_machine():
    with pytest.raises(AlsegError, match="train.batch_size=6 does not divide into devices=4"):
        from alseg.config import check_config
        check_config(compose_cfg(*TWO, "devices=4"))
    with pytest.raises(AlsegError, match="device=cuda:0 names one GPU"):
        with distributed.processes(OmegaConf.create({"devices": 2, "device": "cuda:0"}), print):
            pass


def share_state(cfg) -> list:
    """Rank 0 holds a multi-class label set and weights of ones, rank 1 nothing and zeros; after
    share_pool and same_weights, whether each rank has rank 0's (gathered everywhere)."""
    import torch.distributed as dist
    from alseg.pool import Pool
    pool, model = Pool.empty(2, 2, 2, 3), torch.nn.Linear(2, 2)
    if distributed.rank() == 0:
        pool.reveal_sets(0, (np.array([0, 0]), np.array([0, 1])), np.array([[True, True, False]]), np.zeros(2, int))
    torch.nn.init.constant_(model.weight, float(distributed.rank() == 0))
    distributed.share_pool(pool, {"generator": torch.Generator()}, True)
    distributed.same_weights(model)
    table = pool.label_table()
    ok = table is not None and pool.revealed[0, 0, 1] == 3 and bool(table[0, 3, :2].all()) and bool((model.weight == 1).all())
    seen = [None] * distributed.world()
    dist.all_gather_object(seen, bool(ok))
    return seen


def test_other_ranks_get_the_label_sets_and_rank_0s_weights():
    cfg = OmegaConf.create({"devices": 2, "device": "cpu"})
    with distributed.processes(cfg, share_state) as main:
        assert main
        assert share_state(cfg) == [True, True]
