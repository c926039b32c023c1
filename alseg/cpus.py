"""How many CPU cores this process may use, and the thread pool every parallel step of alseg
runs on."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator


def usable_cpus() -> int:
    """Cores in this process's affinity mask (taskset, cgroup cpusets, Slurm's binding), at most
    `SLURM_CPUS_PER_TASK` when Slurm sets it; never the whole node's `os.cpu_count()` when the
    job was given less."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        count = min(count, int(slurm))
    return max(1, count)


@contextmanager
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    """A pool of `usable_cpus()` threads whose queued tasks are dropped when the block ends in
    an error (a signal, a bad image): stopping then waits only for the tasks already running,
    not for the rest of a split's images."""
    pool = ThreadPoolExecutor(usable_cpus())
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()
