"""Benchmark tensorized layers against dense layers and tltorch on the CPU; print markdown tables.

    python bench/layers.py            # the full grid of the issue (tens of minutes on 2 cores)
    python bench/layers.py --quick    # a tiny grid, for smoke runs

Linear: dense ``nn.Linear`` vs tltorch ``FactorizedLinear`` (blocktt, ``implementation=
"factorized"``, its constructor default, and ``"reconstructed"``) vs ours (``mpo``, ``path="auto"``,
and each of our paths forced), fwd-only (``torch.no_grad``) and fwd+bwd (``torch.autograd.grad``
w.r.t. the input and all parameters). Conv: the 19 convolutions of a CIFAR ResNet-20 (ReLU between,
no residuals), dense vs every conv but the first tensorized. Times are medians (ms) of interleaved
repetitions after warm-up, with ``torch.set_num_threads(2)``; ``ours`` includes its first-use path
measurement in the warm-up only. tltorch is a benchmark-only extra (``pip install .[bench]``).
Nothing is written: copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
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
# (topology, order, rank as a function of the channels)
CONV = [("tucker", 1, lambda c: c // 2), ("cp", 1, lambda c: c), ("mpo", 2, lambda c: 8),
        ("tree", 2, lambda c: 4)]  # fmt: skip


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


def measure(runs: dict[str, Callable[[], None]], budget: float, reps: int) -> dict[str, float]:
    """Median milliseconds of each run: 2 warm-ups, then interleaved repetitions (the order
    rotates every repetition, so no contender always runs after the one that cooled the cache)."""
    first = {}
    for _ in range(2):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            first[name] = time.perf_counter() - start
    n = max(5, min(reps, int(budget / max(sum(first.values()), 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(n):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _tltorch(dense: nn.Linear, modes: tuple[int, ...], rank: int) -> dict[str, nn.Module]:
    import tltorch  # benchmark-only extra; it sets tensorly's backend globally on import

    out = {}
    for impl, name in (("factorized", "tlt_fact"), ("reconstructed", "tlt_rec")):
        out[name] = tltorch.FactorizedLinear.from_linear(
            dense, auto_tensorize=False, in_tensorized_features=modes,
            out_tensorized_features=modes, factorization="blocktt", rank=rank,
            implementation=impl,
        )  # fmt: skip
    return out


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
            forced = {}
            for path in ours.paths:
                forced[path] = copy.deepcopy(ours)
                forced[path].path = path
            tlt = _tltorch(dense, modes, rank)
            params = f"{ours.n_params} / {tn.n_params(tlt['tlt_fact'])}"
            for batch in batches:
                for backward in (False, True):
                    x = torch.randn(batch, n)
                    mods = {"dense": dense, **tlt, "auto": ours}
                    mods.update({f"path:{p}": m for p, m in forced.items()})
                    t = measure({k: _runner(m, x, backward) for k, m in mods.items()}, budget, reps)
                    key = [k for k in ours.chosen_paths if k[0] == (batch, n) and k[3] == backward]
                    own = {k.removeprefix("path:"): v for k, v in t.items() if k.startswith("path:")}
                    own_txt = ", ".join(f"{p} {v:.3g}" for p, v in own.items())
                    best_tlt = min(t["tlt_fact"], t["tlt_rec"])
                    print(
                        f"| Linear {n}x{n} {modes} | {ours.rank} | {params} | {batch} | "
                        f"{'fwd+bwd' if backward else 'fwd'} | {t['dense']:.3g} | "
                        f"{t['tlt_fact']:.3g} | {t['tlt_rec']:.3g} | {t['auto']:.3g} | "
                        f"{ours.chosen_paths[key[0]]} | {own_txt} | {t['auto'] / t['dense']:.2f} | "
                        f"{t['auto'] / min(own.values()):.2f} | {t['auto'] / best_tlt:.2f} | "
                        f"{t['tlt_fact'] / t['auto']:.2f} |",
                        flush=True,
                    )


def resnet20_convs(width: int = 16, blocks: int = 3) -> nn.Sequential:
    """The convolutions of a CIFAR ResNet-20 (3 stages of ``2 * blocks`` 3x3 convs), ReLU between."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.ReLU()]
    c = width
    for stage in range(3):
        for k in range(2 * blocks):
            out = width * 2**stage
            stride = 2 if stage > 0 and k == 0 else 1
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.ReLU()]
            c = out
    return nn.Sequential(*layers)


def _tensorized_stack(dense: nn.Sequential, topology: str, order: int, rank) -> nn.Sequential:
    model = copy.deepcopy(dense)
    for i, m in enumerate(model):
        if isinstance(m, nn.Conv2d) and i > 0:
            model[i] = tn.tensorize(m, topology=topology, rank=rank(m.in_channels), order=order)
    return model


def _forced(model: nn.Sequential, path: str) -> nn.Sequential | None:
    model = copy.deepcopy(model)
    for m in model:
        if isinstance(m, tn.TNLayer):
            if path not in m.paths:
                return None
            m.path = path
    return model


def conv_table(batches, budget: float, reps: int, quick: bool) -> None:
    """Print the ResNet-20 conv-stack table, one row per (topology, batch, pass)."""
    print(
        "| ResNet-20 convs | params ours vs dense | batch | pass | dense | ours auto "
        "| auto paths (layers) | own uniform paths | ours/dense | ours/min(own) |\n|" + "---|" * 10,
        flush=True,
    )
    torch.manual_seed(0)
    dense = resnet20_convs(width=8 if quick else 16, blocks=1 if quick else 3)
    size = 16 if quick else 32
    for topology, order, rank in CONV:
        ours = _tensorized_stack(dense, topology, order, rank)
        forced = {p: _forced(ours, p) for p in ("reconstruct", "einsum", "factorized")}
        forced = {p: m for p, m in forced.items() if m is not None}
        params = f"{tn.n_params(ours)} vs {tn.n_params(dense)}"
        for batch in batches:
            for backward in (False, True):
                x = torch.randn(batch, 3, size, size)
                mods = {"dense": dense, "auto": ours, **{f"path:{p}": m for p, m in forced.items()}}
                t = measure({k: _runner(m, x, backward) for k, m in mods.items()}, budget, reps)
                picked = Counter(
                    p for m in ours if isinstance(m, tn.TNLayer)
                    for k, p in m.chosen_paths.items() if k[0][0] == batch and k[3] == backward
                )  # fmt: skip
                own = {k.removeprefix("path:"): v for k, v in t.items() if k.startswith("path:")}
                print(
                    f"| {topology} order {order} | {params} | {batch} | "
                    f"{'fwd+bwd' if backward else 'fwd'} | {t['dense']:.3g} | {t['auto']:.3g} | "
                    f"{', '.join(f'{p} x{c}' for p, c in picked.most_common())} | "
                    f"{', '.join(f'{p} {v:.3g}' for p, v in own.items())} | "
                    f"{t['auto'] / t['dense']:.2f} | {t['auto'] / min(own.values()):.2f} |",
                    flush=True,
                )


def machine() -> str:
    model = "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        pass
    import os

    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {model}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid, for smoke runs")
    parser.add_argument("--only", choices=["linear", "conv"], help="run one table only")
    parser.add_argument("--budget", type=float, help="seconds of timed runs per cell")
    args = parser.parse_args()
    torch.set_num_threads(2)
    budget = args.budget or (0.2 if args.quick else 3.0)
    reps = 10 if args.quick else 40
    batches = QUICK_BATCHES if args.quick else BATCHES
    print(f"Machine: {machine()}\n")
    if args.only in (None, "linear"):
        linear_table(QUICK_LINEAR if args.quick else LINEAR, batches, budget, reps)
    if args.only in (None, "conv"):
        print()
        conv_table(batches, budget, reps, args.quick)


if __name__ == "__main__":
    main()
