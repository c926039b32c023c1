"""mIoU of each member of a train.ensemble run and of their ensemble, at the cycles whose state
the run keeps (the last two), on the split the run evaluates (docs/results.md, "An ensemble of
five networks").

Usage: python benchmarks/ensemble_members.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from alseg.data import load_dataset
from alseg.metrics import miou
from alseg.model import build_model, ensemble
from alseg.state import load_state
from alseg.train import evaluate


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        cycles = sorted(int(folder.name.split("_")[1]) for folder in (run / "state").glob("cycle_*"))
        states = [load_state(run, cycle) for cycle in cycles]  # checked, members in order: model.pt, member_1.pt, ...
        cfg = OmegaConf.create(states[-1].config)
        data = load_dataset(cfg.dataset)
        truth = [torch.from_numpy(a) for a in (data.val.images, data.val.labels)]  # the split a run evaluates

        def score(model):
            return miou(evaluate(model, *truth, data.num_classes, cfg.train.eval_batch_size, data.val.native))

        for cycle, saved in zip(cycles, states):
            members = [build_model(cfg.model, data.num_classes) for _ in saved.weights]
            for member, (_, weights) in zip(members, saved.weights):
                member.load_state_dict(weights)
            each = [score(m) for m in members]
            whole = score(ensemble(members))
            print(f"{run.name} cycle_{cycle:02d}: members {', '.join(f'{v:.1f}' for v in each)} "
                  f"(mean {sum(each) / len(each):.1f}), ensemble {whole:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
