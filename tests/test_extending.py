"""docs/extending.md works exactly as written: its files are written, its commands run."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks():
    return [(lang, body) for lang, body in BLOCK.findall(DOC.read_text())]


def test_the_guide_runs_as_written(tmp_path):
    commands = []
    for lang, body in blocks():
        first, _, rest = body.partition("\n")
        if first.startswith("# file: "):
            path = tmp_path / first[len("# file: "):].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rest)
        elif lang == "bash":
            commands += [line for line in body.splitlines() if line.strip()]
    assert commands, "the guide shows no command"
    for command in commands:  # in the guide's order: `python` lines make data, `alseg` lines use it
        words = shlex.split(command)
        env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache")}
        while "=" in words[0]:  # leading VAR=value assignments
            key, _, value = words.pop(0).partition("=")
            env[key] = str(tmp_path / value) if value == "." else value
        assert words[0] in ("alseg", "python"), command
        program = [sys.executable] if words[0] == "python" else [sys.executable, "-m", "alseg.cli"]
        result = subprocess.run([*program, *words[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
        if words[0] != "alseg" or words[1] not in ("run", "data"):
            continue
        run_dir = next((w.split("=", 1)[1] for w in words if w.startswith("hydra.run.dir=")), None)
        if words[1] == "run":  # every run names its directory and completes 2 cycles
            assert run_dir, f"{command}: no hydra.run.dir=..."
            assert len(pd.read_csv(tmp_path / run_dir / "metrics.csv")) == 2
        elif run_dir:
            assert (tmp_path / run_dir / "dataset_stats.json").is_file()


def test_plugin_errors_name_the_class_and_what_is_expected(tmp_path):
    (tmp_path / "bad_plugins.py").write_text(
        "import torch\n"
        "from alseg.strategies import Strategy\n"
        "class NoScores(Strategy):\n    pass\n"
        "class WrongShape(Strategy):\n    def pixel_scores(self, probs):\n        return probs\n"
        "def flat_model(num_classes):\n    return torch.nn.Conv2d(3, num_classes + 1, 1)\n"
    )
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    cases = [
        (["strategy=custom", "strategy._target_=bad_plugins.NoScores"], "NoScores must implement pixel_scores"),
        (["strategy=custom", "strategy._target_=bad_plugins.WrongShape"], "WrongShape must return one score per pixel"),
        (["model=custom", "model._target_=bad_plugins.flat_model"], "Conv2d must return logits of shape [B, C, H, W]"),
        (["strategy=custom", "strategy._target_=bad_plugins.Missing"], "cannot import strategy._target_=bad_plugins.Missing"),
    ]
    for overrides, message in cases:
        result = subprocess.run([sys.executable, "-m", "alseg.cli", "run", *overrides, "dataset.num_train=8",
                                 "dataset.num_val=4", "hydra.run.dir=bad"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-1500:]
        assert message in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        subprocess.run(["rm", "-rf", str(tmp_path / "bad")])
