"""Local worker processes: `workers=N` runs N copies of the same command on one study.

Each worker is `python -m tnsearch <the same overrides> worker=<i>`, so a local worker, a node
of a multi-machine study and a job of a SLURM array are one and the same thing. The parent
divides the machine: one GPU per worker (CUDA_VISIBLE_DEVICES) when there are GPUs, else a
disjoint set of CPU cores per worker (affinity and torch threads).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tnsearch.config import ConfigError
from tnsearch.environ import ENV_OVERRIDES, ENV_SPAWNED
from tnsearch.interrupts import Interrupted

ENV_CPUS = "TNSEARCH_CPUS"  # comma-separated CPU ids this worker owns


def count(workers: int | str) -> int:
    """How many local workers `workers` means here (`auto`: one per visible GPU, at least 1)."""
    if workers == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return int(workers)


#: Memory one local worker holds (resident; measured with study=mlp data=digits, workers=2, on
#: 2 CPU cores: 0.75 GiB each once training, with PyTorch, Lightning, Optuna and MLflow loaded).
WORKER_MEMORY = 0.75 * 2**30


def check_fits(n: int, *, gpus: int, say: Callable[[str], None] | None = None) -> None:
    """`workers=n` must fit this machine: at most one worker per CPU core this process may use
    (each worker owns its cores: beyond that they time-share them, and every latency they
    measure is contended), and `WORKER_MEMORY` each within the memory available. More workers
    than GPUs share them (`say` tells it): slower and contended, but they run.

    Raises:
        ConfigError: on `workers`, saying what this machine has and how many fit.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free = available_memory()
    fit = min(cores or 1, int(free // WORKER_MEMORY) if free is not None else n)
    if n > fit:
        memory = f", {free / 2**30:.1f} GiB memory free" if free is not None else ""
        raise ConfigError(
            "workers",
            f"{n} do not fit this machine ({cores} CPU cores{memory}, about "
            f"{WORKER_MEMORY / 2**30:.2g} GiB per worker, {gpus} GPUs): at most {max(fit, 1)} here",
        )
    if gpus and n > gpus and say is not None:
        say(f"workers={n} share {gpus} GPU(s): their latencies are measured side by side")


def available_memory() -> float | None:
    """Bytes of memory available to new processes (Linux's MemAvailable; None: unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def cpu_sets(n: int, cpus: Sequence[int] | None = None) -> list[list[int]]:
    """Split the CPUs this process may use into `n` disjoint, contiguous, near-equal sets."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if n > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(n)]
    size, extra = divmod(len(cpus), n)
    sets, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        sets.append(list(cpus[start:end]))
        start = end
    return sets


def apply_placement() -> None:
    """In a worker: keep to the CPUs the parent gave it, with one torch thread per CPU."""
    cpus = os.environ.get(ENV_CPUS)
    if not cpus:
        return
    import torch

    owned = [int(c) for c in cpus.split(",")]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, owned)
    torch.set_num_threads(len(owned))


def is_spawned() -> bool:
    return os.environ.get(ENV_SPAWNED) == "1"


def tag(worker: int | None, local: int) -> str:
    """The prefix of a worker's console lines: "[w<i>] " when one command runs several local
    workers (`worker` is None in the parent, which is worker 0), else nothing."""
    if is_spawned():
        return f"[w{worker}] "
    return "[w0] " if local > 1 else ""


def place_self(n: int, *, gpus: int) -> None:
    """The parent is worker 0 of `n`: keep it to its share of the machine."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    else:
        os.environ[ENV_CPUS] = ",".join(str(c) for c in cpu_sets(n)[0])
        apply_placement()


def command(overrides: Sequence[str], i: int) -> tuple[list[str], dict[str, str]]:
    """The command line and the environment of local worker `i`.

    The overrides travel in the environment (`ENV_OVERRIDES`, readable by the user only), not
    on the command line, where `ps` shows them to everyone (a storage URL holds a password)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("workers", "worker")]
    env = {**os.environ, ENV_SPAWNED: "1", "PYTHONUNBUFFERED": "1", ENV_OVERRIDES: json.dumps(keep)}
    return [sys.executable, "-m", "tnsearch", f"worker={i}", "workers=1"], env


def spawn(overrides: Sequence[str], n: int, *, gpus: int) -> list[subprocess.Popen]:
    """Start workers 1..n-1 running `python -m tnsearch worker=<i>` with these overrides."""
    cpus = cpu_sets(n)
    procs = []
    for i in range(1, n):
        argv, env = command(overrides, i)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env[ENV_CPUS] = ",".join(str(c) for c in cpus[i])
            env["OMP_NUM_THREADS"] = str(len(cpus[i]))
        procs.append(subprocess.Popen(argv, env=env, preexec_fn=_end_with_parent))
    return procs


def _end_with_parent() -> None:
    """In a new worker (Linux): get SIGTERM when the parent dies, however it dies, so that no
    worker goes on alone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own handling must do
        pass


def wait(procs: Sequence[subprocess.Popen], *, grace_s: float = 60.0) -> list[int]:
    """Wait for all workers. Interrupted (SIGINT, SIGTERM), stop them first (see `stop`)."""
    try:
        return [p.wait() for p in procs]
    except Interrupted as exc:
        stop(procs, exc.signum, grace_s=grace_s)
        raise
    except KeyboardInterrupt:
        stop(procs, signal.SIGINT, grace_s=grace_s)
        raise


def stop(procs: Sequence[subprocess.Popen], signum: int, *, grace_s: float = 60.0) -> None:
    """Send `signum` to every worker still running, give them `grace_s` seconds to record their
    running trials as failed and end their MLflow runs, then kill those left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)  # a terminal's Ctrl-C reached them already: they hold it
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
