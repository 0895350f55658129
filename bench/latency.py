"""Is the latency a study records trustworthy? The same models measured in separate processes.

For each model (a dense ResNet-20, the same with Tucker-2 convolutions, and LeNet-300-100 dense
and tensorized), run `--runs` fresh processes that each build the model and measure it exactly as a
trial does (`tnsearch.measure.latency.measure`: eval mode, batch 64, warm-up 10, median of 50, torch
threads = the cores this process owns). Report the median of each run, the coefficient of
variation across runs, and whether the ranking of every pair that differs by more than 15% ever
flips between runs.

    python bench/latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys

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
import fnmatch, json, os, sys, torch
from tnsearch import tn
from tnsearch.measure import latency
from tnsearch import plan as plans
model_cfg, spec = json.loads(sys.argv[1])
torch.set_num_threads(len(os.sched_getaffinity(0)))
torch.manual_seed(0)
model = plans.build_dense(plans.make(model_cfg, {"in_channels": 1, "image_size": 28,
                                                 "num_classes": 10}, {}))
if spec:
    for name, module in list(model.named_modules()):
        if fnmatch.fnmatchcase(name, spec["glob"]):
            model.set_submodule(name, tn.tensorize(module, topology=spec["topology"],
                                rank=spec["rank"], order=spec["order"], init="random"))
stats = latency.measure(model, torch.zeros(64, 1, 28, 28), warmup=10, repeats=50)
print(json.dumps(stats.as_dict()))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.runs):  # interleave models, so drift hits them all alike
        for name, (model_cfg, spec) in MODELS.items():
            medians[name].append(measure(model_cfg, spec)["p50"])
    print("| model | p50 per run (ms) | mean (ms) | CV |")
    print("|---|---|---|---|")
    for name, values in medians.items():
        cv = statistics.stdev(values) / statistics.fmean(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {runs} | {statistics.fmean(values):.2f} | {100 * cv:.1f}% |")
    print()
    print("| pair | ratio of means | ranking flips between runs |")
    print("|---|---|---|")
    for a, b in itertools.combinations(MODELS, 2):
        ratio = statistics.fmean(medians[a]) / statistics.fmean(medians[b])
        if max(ratio, 1 / ratio) < 1.15:
            continue
        order = [x < y for x, y in zip(medians[a], medians[b], strict=True)]
        flips = "no" if len(set(order)) == 1 else "YES"
        print(f"| {a} / {b} | {ratio:.2f} | {flips} |")


if __name__ == "__main__":
    main()
