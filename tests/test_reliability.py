"""Resuming after a kill or a signal, exhausted pools, save_model, weights files, errors a user can cause."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from alseg.errors import AlsegError, Interrupted, check_interrupted, clear_interrupted, interrupt
from alseg.experiment import run
from conftest import TINY

TIMING = ["train_s", "query_s"]
SLOW = [*TINY, "train.epochs=3", "budget.cycles=3", "strategy=margin"]
# `python -m alseg.cli` with SIGINT acting again: a suite started in the background of a shell
# script (`make test &`, nohup) hands its children SIGINT ignored, and alseg rightly leaves an
# ignored signal ignored, so the SIGINT case would otherwise run to its end and exit 0.
INTERRUPTIBLE = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('alseg.cli', run_name='__main__', alter_sys=True)")


def alseg_run(tmp_path, out, *overrides, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, "run", *SLOW, f"hydra.run.dir={out}", *overrides],
                            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The metrics of an uninterrupted run of SLOW."""
    root = tmp_path_factory.mktemp("whole")
    assert alseg_run(root, "whole").wait(timeout=600) == 0
    return pd.read_csv(root / "whole" / "metrics.csv").drop(columns=TIMING)


@pytest.mark.parametrize("sig,code,status", [(signal.SIGKILL, -9, "running"), (signal.SIGTERM, 143, "interrupted"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_run_then_resume_gives_the_uninterrupted_metrics(tmp_path, whole, sig, code, status):
    log = tmp_path / "console.txt"
    with open(log, "w") as console:
        job = alseg_run(tmp_path, "stopped", stdout=console, stderr=subprocess.STDOUT)
        metrics = tmp_path / "stopped" / "metrics.csv"
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.1)  # cycle 1 is done: cycles 2 and 3 are still to come
        assert job.poll() is None, "the run ended before it could be stopped"
        job.send_signal(sig)
        assert job.wait(timeout=300) == code, log.read_text()[-2000:]
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["status"] == status
    if sig != signal.SIGKILL:  # one line says so, no traceback
        out = log.read_text()
        assert f"error: interrupted by {sig.name}" in out and "continue with resume=true" in out
        assert "Traceback" not in out and out.count("error") == 1
        assert f"interrupted by {sig.name}" in summary["message"]
    assert alseg_run(tmp_path, "stopped", "resume=true").wait(timeout=600) == 0
    pd.testing.assert_frame_equal(whole, pd.read_csv(metrics).drop(columns=TIMING))
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "completed"


class Finalised:
    """An object whose finaliser takes a signal: Python prints and swallows what it raises."""

    def __del__(self):
        interrupt(signal.SIGINT)


class SignalledWhileWriting:
    """A file whose second write brings a signal, handled while a C extension (torch.save) is
    calling back into Python: before alseg shielded its writes, torch turned the exception into
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos" and the run crashed."""

    def __init__(self, file, sig):
        self.file, self.sig, self.writes = file, sig, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            os.kill(os.getpid(), self.sig)
        return self.file.write(data)

    def flush(self):
        self.file.flush()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_file_is_written_completes_the_file_then_stops(tmp_path, sig):
    from alseg.cli import _signals_interrupt
    from alseg.pool import atomic_write

    weights = {"w": torch.arange(100_000.0)}
    inherited = signal.signal(sig, signal.SIG_DFL)  # watched even where the suite was started with it ignored
    try:
        with _signals_interrupt(), pytest.raises(Interrupted, match=sig.name):  # not torch's RuntimeError
            atomic_write(tmp_path / "model.pt", lambda f: torch.save(weights, SignalledWhileWriting(f, sig)))
    finally:
        signal.signal(sig, inherited)
        clear_interrupted()
    assert torch.equal(torch.load(tmp_path / "model.pt")["w"], weights["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed exception
def test_a_signal_swallowed_by_a_finaliser_still_stops_the_run(tmp_path):
    from test_rundir import SMALL, compose_cfg
    Finalised()  # collected at once: the signal's exception is lost, as when it lands in a closing generator
    try:
        with pytest.raises(Interrupted):
            run(compose_cfg(*SMALL), tmp_path / "run")
    finally:
        clear_interrupted()
    check_interrupted()  # cleared: nothing pending for the next run
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"


def test_a_budget_larger_than_the_pool_finishes_what_it_can(make_cfg, tmp_path):
    # 32x48 = 1536 pixels per image: 1000 + ~500 fill the pool, the third cycle finds nothing
    summary = run(make_cfg("budget.initial=1000", "budget.per_cycle=1000", "budget.cycles=3"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["budget_exhausted"]
    assert "no askable region left" in summary["message"]
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 2 and metrics["labelled_fraction"].iloc[-1] > 0.9


@pytest.mark.parametrize("mode,files", [("never", []), ("last", ["model.pt"]),
                                        ("every", ["model.pt", "checkpoints/cycle_00.pt", "checkpoints/cycle_01.pt"])])
def test_save_model(make_cfg, tmp_path, mode, files):
    run(make_cfg(f"save_model={mode}", "budget.cycles=1"), tmp_path)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt") if "state" not in p.parts)
    assert found == sorted(files)


def test_encoder_weights_from_a_local_file(make_cfg, tmp_path):
    from alseg.model import build_model

    cfg = make_cfg()
    source = build_model(cfg.model, 9)
    torch.save(source.net.encoder.state_dict(), tmp_path / "encoder.pth")
    loaded = build_model(make_cfg(f"model.encoder_weights={tmp_path}/encoder.pth").model, 9)
    for a, b in zip(source.net.encoder.state_dict().values(), loaded.net.encoder.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AlsegError, match="no such file"):
        build_model(make_cfg(f"model.encoder_weights={tmp_path}/missing.pth").model, 9)


def test_unreachable_pretrained_weights_say_how_to_use_a_local_file(make_cfg, monkeypatch):
    import segmentation_models_pytorch as smp

    from alseg.model import build_model

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(AlsegError, match=r"model.encoder_weights=/path/to/"):
        build_model(make_cfg("model.encoder_weights=imagenet").model, 9)


@pytest.mark.parametrize("overrides,message", [
    (["strategy=coreset", "budget=clicks"], "use budget=per_image"),
    (["strategy=bald", "model.dropout=null"], "model.dropout"),
    (["strategy=random", "strategy.class_balance=true"], "model-based strategy"),
    (["strategy=margin", "strategy.aggregate=median"], "mean, sum or max"),
    (["device=tpu"], "device must be"),
])
def test_impossible_combinations_fail_before_any_work(make_cfg, tmp_path, overrides, message):
    with pytest.raises(AlsegError, match=message):
        run(make_cfg(*overrides), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "state").exists()


def test_a_second_run_into_the_same_directory_is_refused(make_cfg, tmp_path):
    run(make_cfg("budget.cycles=0"), tmp_path)
    with pytest.raises(AlsegError, match="resume=true"):
        run(make_cfg("budget.cycles=0"), tmp_path)


def test_a_frozen_encoder_stays_as_loaded_and_only_the_decoder_and_head_train(make_cfg, tmp_path):
    from alseg.model import build_model
    from alseg.train import make_optimiser

    source = build_model(make_cfg().model, 9)
    torch.save(source.net.encoder.state_dict(), tmp_path / "encoder.pth")
    cfg = make_cfg(f"model.encoder_weights={tmp_path}/encoder.pth", "model.freeze_encoder=true", "budget.cycles=1",
                   "save_model=last")
    frozen = build_model(cfg.model, 9).train()
    assert not frozen.net.encoder.training and frozen.net.decoder.training
    trained = {id(p) for group in make_optimiser(frozen, cfg.train).param_groups for p in group["params"]}
    assert trained == {id(p) for p in frozen.parameters()} - {id(p) for p in frozen.net.encoder.parameters()}
    run(cfg, tmp_path / "run")
    final = torch.load(tmp_path / "run" / "model.pt")
    encoder = [k for k in final if k.startswith("net.encoder.")]
    assert any("running_mean" in k for k in encoder)  # batch-norm statistics: also as loaded
    for key in encoder:
        assert torch.equal(final[key], source.net.encoder.state_dict()[key.removeprefix("net.encoder.")]), key
