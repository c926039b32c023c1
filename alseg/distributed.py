"""One run over several processes (`devices: N`): one per GPU, or N gloo processes on a CPU.

Rank 0 is the run: it holds the run directory, selects, reveals and writes every file. The
other ranks train their slice of every batch under DistributedDataParallel, score their share
of the pool and receive the pool from rank 0 after each query; they write nothing. alseg starts
the processes itself (`processes`), or torchrun does (RANK, WORLD_SIZE and LOCAL_RANK in the
environment). With one process every helper here is the identity, and no group exists.
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import timedelta
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alseg.cpus import usable_cpus
from alseg.device import resolve_device
from alseg.errors import AlsegError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
JOIN_TIMEOUT = timedelta(minutes=5)  # every process must have joined the group by then
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # the longest a rank waits for the others (rank 0 writes, selects)
EXIT_WAIT_S = 30  # how long rank 0 waits for the processes it started to end, before it stops them
_threads: int | None = None  # the CPU threads this process had before it joined a gloo group


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank()))


def run_device(cfg) -> torch.device:
    """The device of this process: `device` as resolve_device says, on GPU its own GPU."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world() > 1:
        return torch.device("cuda", _local_rank())
    return device


def _check(cfg) -> int:
    """The number of processes `devices` asks for, checked against the device and torchrun."""
    n = cfg.get("devices", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise AlsegError(f"devices must be an integer >= 1, got {n!r}")
    if _torchrun() and n != int(os.environ["WORLD_SIZE"]):
        raise AlsegError(f"torchrun started {os.environ['WORLD_SIZE']} processes but devices={n}: "
                         f"add devices={os.environ['WORLD_SIZE']}")
    if n > 1:
        if str(cfg.device).startswith("cuda:"):
            raise AlsegError(f"device={cfg.device} names one GPU but devices={n}: use device=cuda (each process takes its own GPU)")
        gpus = torch.cuda.device_count()
        if resolve_device(cfg.device).type == "cuda" and n > gpus:
            raise AlsegError(f"devices={n} but {gpus} GPU(s) are visible: use devices={gpus} or fewer")
    return n


@contextmanager
def processes(cfg, step: Callable[[Any], None]) -> Iterator[bool]:
    """The run's processes, for the life of the block: yields True in rank 0 and False in the
    other ranks under torchrun. With devices=N > 1 and no torchrun, starts ranks 1..N-1 here,
    each running `step(cfg)` (see `follow`), and waits for them (a bounded time) at the end."""
    n = _check(cfg)
    if n == 1:
        yield True
        return
    backend = "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"
    if _torchrun():
        _join_group(backend, None, int(os.environ["RANK"]), n)
        try:
            yield rank() == 0
        finally:
            _leave_group()
        return
    store = dist.TCPStore(HOST, 0, n, is_master=True, timeout=JOIN_TIMEOUT, wait_for_workers=False)
    children = mp.start_processes(_follower, args=(cfg, backend, store.port, n, step), nprocs=n - 1,
                                  join=False, start_method="spawn")
    try:
        _join_group(backend, store, 0, n)
        yield True
    finally:
        _leave_group()
        for child in children.processes:
            child.join(EXIT_WAIT_S)
            if child.is_alive():
                child.terminate()
                child.join()


def _follower(index: int, cfg, backend: str, port: int, n: int, step: Callable[[Any], None]) -> None:
    """Rank index + 1 of a run whose processes alseg started."""
    os.environ["LOCAL_RANK"] = str(index + 1)
    try:
        store = dist.TCPStore(HOST, port, n, is_master=False, timeout=JOIN_TIMEOUT)
        _join_group(backend, store, index + 1, n)
        follow(step, cfg)
    finally:
        _leave_group()


def follow(step: Callable[[Any], None], cfg) -> None:
    """`step(cfg)` in a rank > 0. What goes wrong here rank 0 reports (the same user error, an
    interruption, or a rank that stopped), so this rank ends with at most one line, exit code 1."""
    try:
        step(cfg)
    except (AlsegError, KeyboardInterrupt):
        pass
    except Exception as exc:
        log.warning("process %d of %d stopped: %s", rank(), world(), str(exc).splitlines()[0] if str(exc) else exc)
        raise SystemExit(1) from None


def _join_group(backend: str, store, rank_: int, n: int) -> None:
    global _threads
    if backend == "nccl":
        torch.cuda.set_device(_local_rank())
    else:  # the N processes share the cores
        _threads = torch.get_num_threads()
        torch.set_num_threads(max(1, usable_cpus() // n))
    if rank_ != 0:
        logging.getLogger("alseg").setLevel(logging.WARNING)  # rank 0 logs the run
    dist.init_process_group(backend, store=store, rank=rank_, world_size=n, timeout=COLLECTIVE_TIMEOUT)


def _leave_group() -> None:
    global _threads
    if dist.is_initialized():
        dist.destroy_process_group()
    if _threads is not None:
        torch.set_num_threads(_threads)
        _threads = None


def share(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_pool(pool, generators: dict[str, torch.Generator], go_on: bool, models: list | None = None) -> bool:
    """Rank 0's pool (revealed map, clicks, regions), random states and `go_on` on every rank,
    and with `models`, rank 0's weights too (a resumed run). Returns rank 0's `go_on`."""
    if world() == 1:
        return go_on
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    state = share({
        "go_on": go_on, "clicks": pool.clicks, "regions": pool.regions, "sets": pool.sets,
        "generators": {name: g.get_state() for name, g in generators.items()},
        "global": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None,
        "weights": [m.state_dict() for m in models] if models is not None and rank() == 0 else None,
    })
    revealed = torch.from_numpy(pool.revealed)
    if dist.get_backend() == "nccl":
        revealed = revealed.cuda()
    dist.broadcast(revealed, src=0)
    if rank() != 0:
        pool.revealed[:] = revealed.cpu().numpy()
        pool.clicks, pool.regions, pool.sets = state["clicks"], state["regions"], state["sets"]
        for name, generator in generators.items():
            generator.set_state(state["generators"][name])
        torch.set_rng_state(state["global"])
        if state["cuda"] is not None and cuda:
            torch.cuda.set_rng_state(state["cuda"])
        for model, weights in zip(models or [], state["weights"] or []):
            model.load_state_dict(weights)
    return bool(state["go_on"])


def same_weights(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank: after training, the batch-norm statistics
    each process gathered from its own slice (CPUs have no SyncBatchNorm) become rank 0's, so
    that every shard of the pool is scored, and every merge judged, by the same model."""
    if world() > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def shard(n: int, batch_size: int, rank_: int | None = None) -> slice:
    """This rank's (or rank `rank_`'s) share of `n` items scored in batches of `batch_size`:
    whole batches, the same as one process makes, a consecutive block of them per rank."""
    per_rank = math.ceil(math.ceil(n / batch_size) / world())  # batches
    start = min(n, (rank() if rank_ is None else rank_) * per_rank * batch_size)
    return slice(start, min(n, start + per_rank * batch_size))


def part(size: int) -> slice:
    """This rank's slice of a batch of `size` items (batch_size divides by the processes)."""
    bounds = np.linspace(0, size, world() + 1).round().astype(int)
    return slice(int(bounds[rank()]), int(bounds[rank() + 1]))


def gather_rows(scores, n: int, batch_size: int):
    """Rank 0: every rank's rows of the dataclass `scores` (tensor fields of [rows, ...],
    `shard`'s rows of the pool) put together into the pool's [n, ...]; other ranks: None."""
    if world() == 1:
        return scores
    joined = {f.name: _gather(getattr(scores, f.name), n, batch_size) for f in fields(scores)}
    return replace(scores, **joined) if rank() == 0 else None


def _gather(t: torch.Tensor | None, n: int, batch_size: int) -> torch.Tensor | None:
    """One field's rows from every rank (None where no rank has it), on rank 0."""
    specs = [None] * world()
    dist.all_gather_object(specs, None if t is None else (tuple(t.shape[1:]), t.dtype))
    spec = next((s for s in specs if s is not None), None)
    if spec is None:
        return None
    tail, dtype = spec
    rows = [shard(n, batch_size, r) for r in range(world())]
    width = max(s.stop - s.start for s in rows)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.zeros((width, *tail), dtype=dtype, device=device)
    if t is not None:
        mine[: len(t)] = t
    parts = [torch.empty_like(mine) for _ in range(world())] if rank() == 0 else None
    dist.gather(mine, parts, dst=0)
    if rank() != 0:
        return None
    return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, rows)]).to(t.device if t is not None else device)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the ranks."""
    if world() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world()


def any_rank(flag: torch.Tensor) -> bool:
    """Whether `flag` (a bool tensor) is true on any rank."""
    if world() > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """`model` under DistributedDataParallel (its batch norms synchronised on GPUs), or itself
    in a run of one process. The wrapper shares the model's parameters."""
    if world() == 1:
        return model
    if dist.get_backend() == "nccl":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[_local_rank()])
    return torch.nn.parallel.DistributedDataParallel(model)
