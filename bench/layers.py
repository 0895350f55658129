"""Benchmark tensorized layers against dense layers and tltorch on the CPU; print markdown tables.

    python bench/layers.py            # the full grid of the issue (tens of minutes on 2 cores)
    python bench/layers.py --quick    # a tiny grid, for smoke runs

Linear: dense ``nn.Linear`` vs tltorch ``FactorizedLinear`` (blocktt; ``implementation=
"factorized"``, its constructor default, and ``"reconstructed"``) vs ours (``mpo``, ``path="auto"``,
and each of our paths forced), fwd-only (``torch.no_grad``) and fwd+bwd (``torch.autograd.grad``
w.r.t. the input and all parameters). Conv: the 19 convolutions of a CIFAR ResNet-20 (ReLU between,
no residuals), dense vs every conv but the first tensorized. Times are medians (ms) of interleaved
repetitions after warm-up, ``torch.set_num_threads(2)``; ``ours auto`` measures its paths during
the warm-up. The CPU may be shared: a sample only counts if no other process was runnable before
and after it (within a waiting limit); ``*`` marks rows where over 20% of the samples could not
wait for that. tltorch is a benchmark-only extra (``pip install .[bench]``). Prints, writes
nothing: copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from tnsearch import tn

LINEAR = [(1024, (4, 4, 8, 8), (11, 20, 40)), (4096, (8, 8, 8, 8), (16, 64))]
QUICK_LINEAR = [(256, (4, 4, 4, 4), (8,))]
BATCHES, QUICK_BATCHES = (1, 32, 256), (1, 8)
# topology, order, rank for a conv with c input channels
CONV = [
    ("tucker", 1, lambda c: c // 2),
    ("cp", 1, lambda c: c),
    ("mpo", 2, lambda c: 8),
    ("tree", 2, lambda c: 4),
]


def _others_running(checks: int = 3) -> int:
    """Runnable tasks that are not ours (the CPU is shared): the most seen in ``checks`` looks,
    1 ms apart (a process that runs in short bursts is easy to miss with one look)."""
    seen = 0
    for k in range(checks):
        if k:
            time.sleep(0.001)
        seen = max(seen, _others_now())
    return seen


def _others_now() -> int:
    with open("/proc/loadavg") as f:
        total = int(f.read().split()[3].split("/")[0])
    mine = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        end = stat.rindex(b")")
        mine += stat[end + 2 : end + 3] == b"R"
    return max(0, total - mine)


class Timer:
    """Times a call when no other process runs; counts the samples it had to take anyway."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait, self.waited, self.dirty, self.total = max_wait, 0.0, 0, 0

    def __call__(self, run: Callable[[], None]) -> float:
        retries = 0
        while True:
            patient = self.waited < self.max_wait
            if patient and _others_running():
                time.sleep(0.05)
                self.waited += 0.05
                continue
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if patient and retries < 20 and _others_running():
                retries += 1  # someone else ran meanwhile: measure again
                continue
            self.total += 1
            self.dirty += not patient
            return elapsed


def measure(runs: dict[str, Callable[[], None]], budget: float, reps: int):
    """Median ms of each run, and the share of samples taken on a busy machine.

    Two warm-ups, then repetitions interleaved in an order that rotates every time (no contender
    always follows the one that cooled the cache).
    """
    timer = Timer(max_wait=180.0)
    first = {}
    for _ in range(2):
        for name, run in runs.items():
            first[name] = timer(run)
    n = max(5, min(reps, int(budget / max(sum(first.values()), 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(n):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            times[name].append(timer(runs[name]))
    return {k: 1e3 * statistics.median(t) for k, t in times.items()}, timer.dirty / timer.total


def _runner(module: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]
    if not backward:

        def fwd() -> None:
            with torch.no_grad():
                module(x)

        return fwd
    xg = x.detach().requires_grad_(True)

    def fwd_bwd() -> None:
        out = module(xg)
        torch.autograd.grad(out, [xg, *params], torch.ones_like(out))

    return fwd_bwd


def _pass(backward: bool, busy: float) -> str:
    return ("fwd+bwd" if backward else "fwd") + ("*" if busy > 0.2 else "")


def _own(t: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("path:"): v for k, v in t.items() if k.startswith("path:")}


def _forced(model: nn.Module, path: str) -> nn.Module | None:
    """A copy of ``model`` with every tensorized layer forced to ``path`` (None if one lacks it)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, tn.TNLayer):
            if path not in m.paths:
                return None
            m.path = path
    return model


def _tltorch(dense: nn.Linear, modes: tuple[int, ...], rank: int) -> dict[str, nn.Module]:
    import tltorch  # benchmark-only extra; it sets tensorly's backend globally on import

    return {
        name: tltorch.FactorizedLinear.from_linear(
            dense,
            auto_tensorize=False,
            in_tensorized_features=modes,
            out_tensorized_features=modes,
            factorization="blocktt",
            rank=rank,
            implementation=impl,
        )
        for impl, name in (("factorized", "tlt_fact"), ("reconstructed", "tlt_rec"))
    }


def linear_table(grid, batches, budget: float, reps: int) -> None:
    """Print the Linear table, one row per (layer, rank, batch, pass), as it is measured."""
    print(
        "| layer | rank | params ours / tlt | batch | pass | dense | tlt fact (default) | tlt rec "
        "| ours auto | auto path | own paths | ours/dense | ours/min(own) | ours/min(tlt) "
        "| tlt default/ours |\n|" + "---|" * 15,
        flush=True,
    )
    for n, modes, ranks in grid:
        for rank in ranks:
            torch.manual_seed(0)
            dense = nn.Linear(n, n)
            ours = tn.tensorize(dense, topology="mpo", rank=rank, in_modes=modes, out_modes=modes)
            mods = {"dense": dense, **_tltorch(dense, modes, rank), "auto": ours}
            mods.update({f"path:{p}": _forced(ours, p) for p in ours.paths})
            params = f"{ours.n_params} / {tn.n_params(mods['tlt_fact'])}"
            for batch in batches:
                for backward in (False, True):
                    x = torch.randn(batch, n)
                    t, busy = measure(
                        {k: _runner(m, x, backward) for k, m in mods.items()}, budget, reps
                    )
                    own = _own(t)
                    (path,) = [
                        p
                        for k, p in ours.chosen_paths.items()
                        if k[0][0] == batch and k[3] == backward
                    ]
                    print(
                        f"| Linear {n}x{n} {modes} | {ours.rank} | {params} | {batch} "
                        f"| {_pass(backward, busy)} | {t['dense']:.3g} | {t['tlt_fact']:.3g} "
                        f"| {t['tlt_rec']:.3g} | {t['auto']:.3g} | {path} "
                        f"| {', '.join(f'{p} {v:.3g}' for p, v in own.items())} "
                        f"| {t['auto'] / t['dense']:.2f} | {t['auto'] / min(own.values()):.2f} "
                        f"| {t['auto'] / min(t['tlt_fact'], t['tlt_rec']):.2f} "
                        f"| {t['tlt_fact'] / t['auto']:.2f} |",
                        flush=True,
                    )


def resnet20_convs(width: int = 16, blocks: int = 3) -> nn.Sequential:
    """The convolutions of a CIFAR ResNet-20 (3 stages of 2 * blocks 3x3 convs), ReLU between."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.ReLU()]
    c = width
    for stage in range(3):
        for k in range(2 * blocks):
            out = width * 2**stage
            stride = 2 if stage > 0 and k == 0 else 1
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.ReLU()]
            c = out
    return nn.Sequential(*layers)


def conv_table(batches, budget: float, reps: int, quick: bool) -> None:
    """Print the ResNet-20 conv-stack table, one row per (topology, batch, pass)."""
    print(
        "| ResNet-20 convs | params ours / dense | batch | pass | dense | ours auto "
        "| auto paths (layers) | own uniform paths | ours/dense | ours/min(own) |\n|" + "---|" * 10,
        flush=True,
    )
    torch.manual_seed(0)
    dense = resnet20_convs(width=8 if quick else 16, blocks=1 if quick else 3)
    size = 16 if quick else 32
    for topology, order, rank in CONV:
        ours = copy.deepcopy(dense)
        for i, m in enumerate(ours):
            if isinstance(m, nn.Conv2d) and i > 0:  # the first conv (3 channels) stays dense
                ours[i] = tn.tensorize(m, topology=topology, rank=rank(m.in_channels), order=order)
        mods = {"dense": dense, "auto": ours}
        for path in ("reconstruct", "einsum", "factorized"):
            forced = _forced(ours, path)
            if forced is not None:
                mods[f"path:{path}"] = forced
        params = f"{tn.n_params(ours)} / {tn.n_params(dense)}"
        for batch in batches:
            for backward in (False, True):
                x = torch.randn(batch, 3, size, size)
                t, busy = measure(
                    {k: _runner(m, x, backward) for k, m in mods.items()}, budget, reps
                )
                own = _own(t)
                picked = Counter(
                    p
                    for m in ours.modules()
                    if isinstance(m, tn.TNLayer)
                    for k, p in m.chosen_paths.items()
                    if k[0][0] == batch and k[3] == backward
                )
                print(
                    f"| {topology} order {order} | {params} | {batch} | {_pass(backward, busy)} "
                    f"| {t['dense']:.3g} | {t['auto']:.3g} "
                    f"| {', '.join(f'{p} x{c}' for p, c in picked.most_common())} "
                    f"| {', '.join(f'{p} {v:.3g}' for p, v in own.items())} "
                    f"| {t['auto'] / t['dense']:.2f} | {t['auto'] / min(own.values()):.2f} |",
                    flush=True,
                )


def machine() -> str:
    """Date, CPU model, cores, torch version and threads, load average."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        model = "unknown CPU"
    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {model}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid, for smoke runs")
    parser.add_argument("--only", choices=["linear", "conv"], help="run one table only")
    parser.add_argument("--budget", type=float, help="seconds of timed runs per row")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: the grid's)")
    parser.add_argument("--ranks", help="comma-separated Linear ranks to keep (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    budget = args.budget or (0.2 if args.quick else 3.0)
    reps = 10 if args.quick else 40
    batches = QUICK_BATCHES if args.quick else BATCHES
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    grid = QUICK_LINEAR if args.quick else LINEAR
    if args.ranks:
        keep = {int(r) for r in args.ranks.split(",")}
        grid = [(n, modes, tuple(r for r in ranks if r in keep)) for n, modes, ranks in grid]
    print(f"Machine: {machine()}\n")
    if args.only in (None, "linear"):
        linear_table(grid, batches, budget, reps)
        print()
    if args.only in (None, "conv"):
        conv_table(batches, budget, reps, args.quick)
        print()
    print(f"Done: {machine()}")


if __name__ == "__main__":
    main()
