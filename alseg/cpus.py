"""How many CPU cores this process may use, for every thread pool in alseg."""
from __future__ import annotations

import os


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
