"""Pretrain the small model's encoder on alseg's synthetic street scenes (every label), for the
`variance` sweeps of docs/results.md: does a pretrained encoder steady cpu_camvid's seeds?

    python benchmarks/pretrain_synthetic.py OUT.pt [--scenes 2000] [--steps 3000]
    alseg run experiment=cpu_camvid model.encoder_weights=OUT.pt ...

Trains model=small (9 synthetic classes) at cpu_camvid's working size with its optimiser,
schedule and augmentation, on one thread, from fixed seeds (the same file on every run of a
machine), and saves the encoder's state dict. About 7 minutes on one CPU core.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from alseg.augment import augment
from alseg.data.base import IGNORE
from alseg.data.synthetic import CLASS_NAMES, generate
from alseg.model import build_model, normalise
from alseg.pool import atomic_write
from alseg.train import make_optimiser, make_schedule

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the encoder state dict to write (.pt)")
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    protocol = OmegaConf.load(CONF / "experiment" / "cpu_camvid.yaml")
    train = OmegaConf.merge(protocol.train, {"iterations": args.steps})
    height, width = protocol.dataset.size
    images, labels = (torch.from_numpy(a) for a in generate(args.scenes, height, width, seed=777))
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(CONF / "model" / "small.yaml"), len(CLASS_NAMES)).train()
    optimiser = make_optimiser(model, train)
    schedule = make_schedule(optimiser, train, args.steps, 1)
    generator, start = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, args.scenes, (int(train.batch_size),), generator=generator)
        x, y = augment(images[batch].permute(0, 3, 1, 2).float(), labels[batch].long(), train.augment, generator)
        loss = F.cross_entropy(model(normalise(x)), y, ignore_index=IGNORE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 500 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f}s)", flush=True)
    atomic_write(args.out, lambda f: torch.save(model.net.encoder.state_dict(), f))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
