"""`make bench`: alseg's costs as ratios against the hardware floor, measured in one run.

On real CamVid (../shared/data/camvid or --root): data loading from the cache vs decoding the
PNGs; a training epoch through alseg vs bare forward+backward+step on tensors already in
memory; the same epoch with the data streamed from the memory-mapped cache (placement=host)
vs kept on the device, and the peak memory of both; scoring the pool (scores, region reduction, selection; top-k and power sampling) vs a bare forward pass over
the same pool; SEEDS build time per image; memory of the labelled state for a
Cityscapes-sized pool. Writes outputs/bench/bench.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_module

from alseg import query, selection
from alseg.data import decode_split, load_split
from alseg.device import device_generator, resolve_device, tune_convolutions
from alseg.model import autocast, build_model, to_input
from alseg.placement import Placement, data_bytes
from alseg.pool import Pool
from alseg.regions import build_regions
from alseg.strategies import build_strategy
from alseg.train import train_cycle

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    """Seconds taken by fn() (after synchronising a GPU)."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(names: tuple[str, str, str], alseg, floor, rounds: int) -> dict:
    """alseg's time against the floor's, interleaved over `rounds` (alternating which goes
    first, after one warm-up of each) so that drift on a shared machine hits both alike.
    `names` are the keys of alseg's time, the floor's and their ratio (of the medians);
    `<ratio>_spread` holds the lowest and highest per-round ratio."""
    alseg(), floor()
    times = {"alseg": [], "floor": []}
    for i in range(rounds):
        order = [("alseg", alseg), ("floor", floor)][:: 1 if i % 2 == 0 else -1]
        for key, fn in order:
            times[key].append(timed(fn))
    a, f = np.median(times["alseg"]), np.median(times["floor"])
    per_round = np.array(times["alseg"]) / np.array(times["floor"])
    alseg_key, floor_key, ratio_key = names
    return {alseg_key: float(a), floor_key: float(f), ratio_key: float(a / f),
            f"{ratio_key}_spread": [round(float(per_round.min()), 3), round(float(per_round.max()), 3)]}


def compose_cfg(args) -> object:
    overrides = [
        "dataset=camvid", f"dataset.root={args.root}", f"dataset.size=[{args.size[0]},{args.size[1]}]",
        f"dataset.cache_dir={args.cache_dir}", f"model={args.model}", "model.encoder_weights=null",
        f"device={args.device}", f"train.batch_size={args.batch_size}", f"train.eval_batch_size={args.batch_size}",
        "train.epochs=1",
    ]
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def bench_data(cfg) -> dict:
    """Decoding the PNGs vs reading the decoded cache (the train split)."""
    decode_s = timed(lambda: decode_split(cfg.dataset, "train"))
    load_split(cfg.dataset, "train")  # builds the cache if missing
    read_s = min(timed(lambda: np.array(load_split(cfg.dataset, "train").images)) for _ in range(3))
    return {"decode_s": decode_s, "cache_read_s": read_s, "cache_vs_decode_ratio": read_s / decode_s}


def train_pair(cfg, model, images, labels, device):
    """One epoch through alseg, and the same batches as ready tensors: forward, backward, step."""
    generator = torch.Generator().manual_seed(0)
    batches = [(to_input(images[i : i + cfg.train.batch_size]), torch.from_numpy(labels[i : i + cfg.train.batch_size]).long().to(device))
               for i in range(0, len(images), cfg.train.batch_size)]
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def bare():
        model.train()
        for x, y in batches:
            with autocast(device):
                loss = loss_fn(model(x).float(), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    def alseg():
        train_cycle(model, images, labels, cfg.train, generator)

    return alseg, bare


def stream_pair(cfg, model, split, count: int, device):
    """One training epoch on the first `count` images kept on the device (placement=device)
    vs streamed from the memory-mapped cache (placement=host), the same batches."""
    arrays = (split.images[:count], split.labels[:count])

    def epoch(resident: bool):
        sources = [Placement(device, resident).put(a) for a in arrays]
        return lambda: train_cycle(model, *sources, cfg.train, torch.Generator().manual_seed(0))

    return epoch(False), epoch(True)


def peak_memory(cfg, model, split, count: int, device) -> dict:
    """Peak memory of one epoch, data kept on the device vs streamed. On a GPU, measured:
    torch.cuda.max_memory_allocated over the epoch (placing the data included) above what was
    allocated before it. On the CPU, counted: the bytes of the data arrays held as tensors
    (resident) vs of the two batches in flight (streamed); model and activations excluded."""
    result = {}
    for name, resident in (("resident", True), ("streamed", False)):
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            stream_pair(cfg, model, split, count, device)[int(resident)]()
            result[f"peak_memory_{name}_bytes"] = torch.cuda.max_memory_allocated(device) - base
        else:
            held = count if resident else 2 * min(count, int(cfg.train.batch_size))
            result[f"peak_memory_{name}_bytes"] = data_bytes([split.images[:held], split.labels[:held]])
    result["peak_memory_measure"] = ("cuda max_memory_allocated over one epoch, above the model" if device.type == "cuda"
                                     else "cpu: bytes of images + labels held (all, or two batches), counted")
    return result


def bench_stream(cfg, model, split, count: int, device, rounds: int) -> dict:
    """stream_epoch_ratio (interleaved rounds) and the peak memory of both placements."""
    streamed, resident = stream_pair(cfg, model, split, count, device)
    result = paired(("stream_epoch_s", "resident_epoch_s", "stream_epoch_ratio"), streamed, resident, rounds)
    result.update(peak_memory(cfg, model, split, count, device))
    print(f"stream_epoch_ratio: {result['stream_epoch_ratio']:.3f}", flush=True)
    return result


def make_model(cfg, device) -> torch.nn.Module:
    model = build_model(cfg.model, 11).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def scoring_pair(cfg, strategy_overrides, model, images, labels, regions, device, budget):
    """alseg's scoring of the pool + selection, and a bare forward pass over the same pool."""
    strategy = build_strategy(compose_strategy(strategy_overrides))
    revealed = np.full(labels.shape, 255, np.uint8)
    generator = torch.Generator().manual_seed(0)
    n = len(images)
    # as a run holds them: labels on the device once (region maps go there on first use),
    # the revealed map each cycle
    device_labels = torch.from_numpy(labels).to(device)

    def alseg():
        scored = query.score_pool(strategy, [model], images, device_labels, torch.from_numpy(revealed).to(device),
                                  regions, generator, cfg.train.eval_batch_size, 11)
        amount = selection.Budget(10.0, True) if regions.maps is None else selection.Budget(float(budget), False)
        selection.choose(strategy, scored, amount, device_generator(generator, device), 11)

    inputs = [to_input(images[i : i + cfg.train.eval_batch_size]) for i in range(0, n, cfg.train.eval_batch_size)]

    @torch.inference_mode()
    def bare():
        model.eval()
        for x in inputs:
            with autocast(device):
                model(x)

    return alseg, bare


def profile(alseg, bare, device) -> None:
    """Print the operators that take most time in one run of each (`--profile`)."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, fn in (("alseg", alseg), ("floor", bare)):
        with torch.profiler.profile(activities=activities) as prof:
            timed(fn)
        print(f"--- {name}\n{prof.key_averages().table(sort_by=sort, row_limit=15)}", flush=True)


def compose_strategy(overrides: list[str]):
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides).strategy


def state_bytes_per_pixel() -> float:
    """Memory held by the labelled state of a Cityscapes-sized pool (2975 images of 256x512),
    after 10 cycles of 10 pixels per image."""
    n, h, w = 2975, 256, 512
    pool = Pool.empty(n, h, w)
    rng = np.random.default_rng(0)
    for _ in range(10):
        idx = rng.integers(0, h * w, size=(n, 10))
        pool.revealed.reshape(n, -1)[np.arange(n)[:, None], idx] = rng.integers(0, 19, size=(n, 10))
    held = sum(v.nbytes if isinstance(v, np.ndarray) else 8 for v in vars(pool).values())
    return held / (n * h * w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared/data/camvid"))
    parser.add_argument("--size", type=int, nargs=2, default=[180, 240], metavar=("H", "W"))
    parser.add_argument("--model", default="deeplabv3plus_mobilenetv2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=96, help="use the first N train images (0: all 367)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timings of alseg and the floor")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of training and of each scoring")
    parser.add_argument("--cache-dir", default=os.environ.get("ALSEG_CACHE", str(Path.home() / ".cache/alseg")))
    parser.add_argument("--out", default=str(REPO / "outputs/bench/bench.json"))
    parser.add_argument("--stream-only", action="store_true", help="measure only stream_epoch_ratio and peak memory")
    args = parser.parse_args()
    if not Path(args.root, "train").is_dir():
        raise SystemExit(f"error: no CamVid at {args.root}; pass --root PATH (the folder holding train/ and trainannot/)")

    cfg = compose_cfg(args)
    device = resolve_device(cfg.device)
    tune_convolutions(device)
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "model": f"{cfg.model.arch}/{cfg.model.encoder}",
              "size": list(args.size), "batch_size": args.batch_size}
    if args.stream_only:
        train = load_split(cfg.dataset, "train")
        count = args.images or len(train.images)
        result.update(images=count, **bench_stream(cfg, make_model(cfg, device), train, count, device, args.rounds))
        return write_result(result, Path(args.out))
    result.update(bench_data(cfg))
    print(f"data: {result['cache_vs_decode_ratio']:.3f}", flush=True)
    train = load_split(cfg.dataset, "train")
    count = args.images or len(train.images)
    labels = np.ascontiguousarray(train.labels[:count])
    images = torch.from_numpy(np.ascontiguousarray(train.images[:count])).to(device)
    result["images"] = count

    start = time.perf_counter()
    seeds = None
    if hasattr(cv2, "ximgproc"):
        with tempfile.TemporaryDirectory() as tmp:
            seeds = build_regions(compose_strategy_region(), train.images[:count], tmp, {"bench": count})
        result["superpixel_ms_per_image"] = (time.perf_counter() - start) / count * 1000
        result["superpixels_per_image"] = float(seeds.counts.mean())
    else:
        print("SEEDS skipped: this OpenCV has no cv2.ximgproc (install opencv-contrib-python-headless)")
    pixels = build_regions(compose_cfg(args).region, train.images[:count], args.cache_dir, {})

    model = make_model(cfg, device)
    alseg, bare = train_pair(cfg, model, images, labels, device)
    result.update(paired(("train_epoch_s", "train_floor_s", "train_epoch_ratio"), alseg, bare, args.rounds))
    print(f"train_epoch_ratio: {result['train_epoch_ratio']:.3f}", flush=True)
    if args.profile:
        profile(alseg, bare, device)
    result.update(bench_stream(cfg, model, train, count, device, args.rounds))
    budget = 10 * count
    scorings = [("margin_pixel", ["strategy=margin"], pixels),
                ("power_margin_pixel", ["strategy=margin", "strategy.sampling=power"], pixels)]
    if seeds is not None:
        scorings += [("margin_seeds", ["strategy=margin"], seeds), ("bald8_seeds", ["strategy=bald", "strategy.passes=8"], seeds)]
    for name, overrides, regions in scorings:
        alseg, bare = scoring_pair(cfg, overrides, model, images, labels, regions, device, budget)
        result.update(paired((f"scoring_s_{name}", f"forward_s_{name}", f"scoring_ratio_{name}"), alseg, bare, args.rounds))
        print(f"scoring_ratio_{name}: {result[f'scoring_ratio_{name}']:.3f}", flush=True)
        if args.profile:
            profile(alseg, bare, device)
    result["state_bytes_per_pixel"] = state_bytes_per_pixel()
    write_result(result, Path(args.out))


def write_result(result: dict, out: Path) -> None:
    """bench.json, and a table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"wrote {out}")


def compose_strategy_region():
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=["region=seeds"]).region


if __name__ == "__main__":
    main()
