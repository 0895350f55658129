"""Is the latency a study records trustworthy? Two checks of the latency objective.

`--part processes`: each model (a dense ResNet-20, the same with Tucker-2 convolutions, and
LeNet-300-100 dense and tensorized) is measured in `--runs` fresh processes, as a trial does it:
the objective (`latency.paired`: the model timed beside the dense one, A B B A ..., median of the
pairs' ratios, on one CPU thread as `latency.threads` says by default) and, beside it, the
absolute median of the model alone on all threads (`latency.measure`, the objective before
issue 15). The coefficient of variation across the processes says how much a
rerun moves each figure.

`--part study`: the same study (LeNet-300-100, cold, random sampler, so that both runs propose the
same plans) run twice, once alone and once beside two busy processes (bounded in time), and each
plan's latency compared between the runs: the objective (ratio to dense) and the absolute ms.

    python bench/latency.py [--part processes|study|both] [--runs 5] [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "resnet20 dense": ({"_target_": "tnsearch.models.ResNet", "depth": 20}, {}),
    "resnet20 tucker-2 r8": (
        {"_target_": "tnsearch.models.ResNet", "depth": 20},
        {"topology": "tucker", "order": 1, "rank": 8, "glob": "layer*.*.conv*"},
    ),
    "lenet300 dense": ({"_target_": "tnsearch.models.MLP", "hidden": [300, 100]}, {}),
    "lenet300 mpo r8": (
        {"_target_": "tnsearch.models.MLP", "hidden": [300, 100]},
        {"topology": "mpo", "order": 2, "rank": 8, "glob": "fc[12]"},
    ),
}

CHILD = r"""
import copy, fnmatch, json, os, sys, torch
from tnsearch import tn
from tnsearch.measure import latency
from tnsearch import plan as plans
model_cfg, spec = json.loads(sys.argv[1])
torch.set_num_threads(len(os.sched_getaffinity(0)))
torch.manual_seed(0)
inputs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
dense = plans.build_dense(plans.make(model_cfg, inputs, {}))
model = copy.deepcopy(dense)
if spec:
    for name, module in list(model.named_modules()):
        if fnmatch.fnmatchcase(name, spec["glob"]):
            model.set_submodule(name, tn.tensorize(module, topology=spec["topology"],
                                rank=spec["rank"], order=spec["order"], init="random"))
x = torch.zeros(64, 1, 28, 28)
alone = latency.measure(model, x, warmup=10, repeats=50)
paired = latency.paired(model, dense, x, warmup=10, repeats=50, threads=1)  # as a trial does
print(json.dumps({"alone_ms": alone.p50, **paired.as_dict()}))
"""

BUSY = r"""
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(700, 700)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    a @ a
"""


def measure(model_cfg: dict, spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([model_cfg, spec])],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


def processes(runs: int) -> None:
    found: dict[str, list[dict]] = {name: [] for name in MODELS}
    for _ in range(runs):  # interleave models, so drift hits them all alike
        for name, (model_cfg, spec) in MODELS.items():
            found[name].append(measure(model_cfg, spec))
    print(f"Same model in {runs} separate processes (batch 64, 1x28x28)\n")
    print("| model | objective: x dense, per run | CV | alone: ms per run (before) | CV | noisy |")
    print("|---|---|---|---|---|---|")
    for name, results in found.items():
        ratios = [r["ratio"] for r in results]
        alone = [r["alone_ms"] for r in results]
        noisy = sum(bool(r["noisy"]) for r in results)
        print(
            f"| {name} | {', '.join(f'{v:.3f}' for v in ratios)} | {100 * _cv(ratios):.1f}% "
            f"| {', '.join(f'{v:.2f}' for v in alone)} | {100 * _cv(alone):.1f}% "
            f"| {noisy}/{runs} |"
        )
    print(f"\ndevice: {found['lenet300 dense'][0]['device']}")


def _study(root: Path, trials: int) -> list[dict]:
    """Run the study in `root`; its trained trials' plans and latencies."""
    command = [
        sys.executable,
        "-m",
        "tnsearch",
        "study=mlp",
        "pretrain.epochs=0",
        "search.budgets=[]",
        "data=digits",
        "epochs=1",
        f"trials={trials}",
        "sampler=random",
        f"root={root}",
        "tracking.enabled=false",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    import optuna

    from tnsearch.study import record

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "mlp" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="mlp", storage=storage)
    return [
        {
            "number": r.number,
            "layers": json.dumps(r.layers, sort_keys=True),
            "ratio": r.latency_ratio,
            "ms": r.latency_ms,
            "noisy": bool(r.latency_noisy),
        }
        for r in record.records(study)
        if r.latency_ratio is not None
    ]


def study(trials: int, busy_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        quiet = _study(Path(tmp) / "quiet", trials)
        quiet_s = time.perf_counter() - start
        busy = [subprocess.Popen([sys.executable, "-c", BUSY, str(busy_s)]) for _ in range(2)]
        try:
            start = time.perf_counter()
            loaded = _study(Path(tmp) / "busy", trials)
            loaded_s = time.perf_counter() - start
        finally:
            for p in busy:
                p.kill()
                p.wait()
    theirs = {r["layers"]: r for r in loaded}
    print(
        f"The same study (mlp, cold, random sampler, {trials} trials) alone ({quiet_s:.0f} s) "
        f"and beside two busy processes ({loaded_s:.0f} s)\n"
    )
    print("| trial | objective alone | objective busy | differs | ms alone | ms busy | differs |")
    print("|---|---|---|---|---|---|---|")
    ratio_diffs, ms_diffs = [], []
    for mine in quiet:
        other = theirs.get(mine["layers"])
        if other is None:
            continue
        dr = abs(other["ratio"] / mine["ratio"] - 1)
        dm = max(other["ms"] / mine["ms"], mine["ms"] / other["ms"])
        ratio_diffs.append(dr)
        ms_diffs.append(dm)
        flag = lambda r: " (noisy)" if r["noisy"] else ""  # noqa: E731
        print(
            f"| {mine['number']} | {mine['ratio']:.3f}x{flag(mine)} | "
            f"{other['ratio']:.3f}x{flag(other)} | {100 * dr:.1f}% | {mine['ms']:.3f} | "
            f"{other['ms']:.3f} | {dm:.2f}x |"
        )
    print(
        f"\nplans in both runs: {len(ratio_diffs)}; objective differs by at most "
        f"{100 * max(ratio_diffs):.1f}% (median {100 * statistics.median(ratio_diffs):.1f}%); "
        f"absolute ms by up to {max(ms_diffs):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("processes", "study", "both"), default="both")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--busy-s", type=float, default=600.0, help="bound of the busy processes")
    args = parser.parse_args()
    if args.part in ("processes", "both"):
        processes(args.runs)
        print()
    if args.part in ("study", "both"):
        study(args.trials, args.busy_s)


if __name__ == "__main__":
    main()
