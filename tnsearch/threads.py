"""How many CPU threads tnsearch's work uses: what this process may run on, not the machine's size.

PyTorch and the BLAS under numpy (tensorly's decompositions) start one thread per core of the
machine. In a container with a CPU quota, under a scheduler's affinity mask, beside local workers
or beside busy neighbours that is more threads than CPUs, and threads that meet at barriers then
wait for each other: the profile of LeNet-300-100 ran 11x slower beside two busy processes on 2
cores where a fair share would make it 3x. `count` is the CPUs this process may use (its affinity
mask, capped by a cgroup CPU quota), divided among the local workers and less the CPUs others keep
busy; `apply` sets torch's and the BLAS libraries' thread pools to it. The top-level key
`threads` sets it by hand (`null`: this count).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["allowed_cpus", "apply", "count"]


def allowed_cpus(cgroup: str | Path = "/sys/fs/cgroup") -> float:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
    (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = float(len(os.sched_getaffinity(0)))
    else:
        cpus = float(os.cpu_count() or 1)
    root = Path(cgroup)
    quota = None
    with contextlib.suppress(OSError, ValueError):
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
    return min(cpus, quota) if quota is not None else cpus


def count(
    threads: int | None = None,
    *,
    workers: int = 1,
    busy: float | None = None,
    cgroup: str | Path = "/sys/fs/cgroup",
) -> int:
    """The thread count for this process: `threads` when given, else the CPUs it may use
    (`allowed_cpus`) divided among `workers`, less the CPUs other processes keep busy (`busy`;
    default: measured over a tenth of a second, `_busy`), at least 1."""
    if threads is not None:
        return max(1, int(threads))
    cpus = allowed_cpus(cgroup) / max(1, workers)
    if busy is None:
        busy = _busy()
    free = min(cpus, allowed_cpus(cgroup) - busy)
    return max(1, math.floor(free + 0.25))  # a CPU three-quarters free is worth a thread


def _busy(seconds: float = 0.1) -> float:
    """CPUs kept busy by others right now: the machine's non-idle time over `seconds` (from
    /proc/stat; this process sleeps meanwhile, so it counts none of it); 0 where unknown."""
    import time

    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[0] <= first[0]:
        return 0.0
    total, idle = second[0] - first[0], second[1] - first[1]
    return max(0.0, (total - idle) / total * (os.cpu_count() or 1))


def apply(n: int) -> int:
    """Use `n` threads in torch and in the BLAS / OpenMP pools numpy and tensorly use; return n.
    Processes this one starts inherit it through OMP_NUM_THREADS."""
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    return n
