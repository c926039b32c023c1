"""Live progress: bars only on a terminal (forced here with ALSEG_PROGRESS=bar), the plain log
lines otherwise, and a per-cycle line with the time left in both modes."""
from __future__ import annotations

import logging
import re

import pytest

from alseg import progress
from alseg.experiment import run
from alseg.progress import Progress, duration

QUICK = ["budget.cycles=1", "train.epochs=null", "train.iterations=2"]
BAR = re.compile(r"\r|%\||it/s|s/it|█")  # what tqdm draws


def test_without_a_terminal_the_log_has_plain_lines_and_no_bar(make_cfg, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("ALSEG_PROGRESS", "plain")
    with caplog.at_level(logging.INFO):
        run(make_cfg(*QUICK), tmp_path / "run")
    err, lines = capsys.readouterr().err, [r.getMessage() for r in caplog.records]
    assert not BAR.search(err) and not any(BAR.search(line) for line in lines)
    assert sum(line.startswith("  step 2/2") for line in lines) == 2  # the training lines, as before
    assert [line.split(",")[0] for line in lines if line.startswith("progress:")] == [
        "progress: 1/2 cycles done", "progress: 2/2 cycles done"]
    assert re.search(r"progress: 2/2 cycles done, \d+s elapsed, about 0s left", "\n".join(lines))


def test_on_a_terminal_bars_show_training_and_scoring_and_the_time_left_stays_plain(make_cfg, tmp_path, monkeypatch,
                                                                                    capsys, caplog):
    monkeypatch.setenv("ALSEG_PROGRESS", "bar")
    with caplog.at_level(logging.INFO):
        run(make_cfg(*QUICK), tmp_path / "run")
    err, lines = capsys.readouterr().err, [r.getMessage() for r in caplog.records]
    assert "cycle 0 training" in err and "cycle 1 training" in err and "scoring the pool" in err and BAR.search(err)
    assert sum(line.startswith("progress: ") for line in lines) == 2 and not any(BAR.search(line) for line in lines)


@pytest.mark.parametrize("mode", ["plain", "bar"])
def test_a_long_job_logs_periodic_lines_only_without_a_bar(monkeypatch, capsys, caplog, mode):
    monkeypatch.setenv("ALSEG_PROGRESS", mode)
    with caplog.at_level(logging.INFO), Progress("superpixels", 3, every=0.0) as bar:
        for _ in range(3):
            bar.tick()
    lines = [r.getMessage() for r in caplog.records]
    if mode == "plain":
        assert len(lines) == 2 and all(re.fullmatch(r"superpixels: [12]/3 images \(\d+s, about \d+s left\)", m)
                                       for m in lines)
        assert not bar.drawn and capsys.readouterr().err == ""
    else:
        assert lines == [] and bar.drawn and "superpixels" in capsys.readouterr().err


def test_bars_follow_whether_stderr_is_a_terminal(monkeypatch):
    class Terminal:
        def __init__(self, tty: bool):
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("ALSEG_PROGRESS", raising=False)
    for tty in (True, False):
        monkeypatch.setattr("sys.stderr", Terminal(tty))
        assert progress.on_terminal() is tty


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0.4, 42, 200, 7500)] == ["0s", "42s", "3m20s", "2h05m"]


def test_plot_names_each_group_with_its_runs_and_seeds(tmp_path, capsys):
    from alseg import plot
    from test_results_plot import make_run

    for strategy, seed in [("margin", 0), ("margin", 1), ("random", 0)]:
        make_run(tmp_path, f"{strategy}{seed}", strategy=strategy, seed=seed)
    assert plot.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "3 runs in 2 groups" in printed
    assert "alseg plot:   margin: 2 runs (seed 0, 1)" in printed and "alseg plot:   random: 1 run (seed 0)" in printed
