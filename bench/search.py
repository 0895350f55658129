"""Hypervolume reached for an equal wall-clock budget: random vs tnsearch's sampler, warm start,
and Pareto-aware pruning.

Arms, each with the same budget (`timeout`, pretraining and profiling included) and seeds:
  (a) RandomSampler from scratch        (n) NSGA-II from scratch
  (b) the default sampler (TPE) from scratch
  (c) (b) + warm start (pretrain.epochs) (d) (c) + Pareto-aware pruning
  (e) (d) + the budget ladder (search.budgets: the profile's budget plans first): the default

`--parallel 2` runs two arms at a time, each on its own CPU (`threads=1`): every arm runs under
the same condition, and the bench takes half the time on a 2-core machine.

For each run: the hypervolume of the front over time (normalized space, see
tnsearch.results.pareto.REFERENCE), the time (d) needs to reach (a)'s final hypervolume, and the
largest compression among trials within 1 point of the dense model's accuracy.

    python bench/search.py [--studies mlp lenet] [--seeds 0 1 2] [--budget 150] [--parallel 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tnsearch.results.pareto import hypervolume_history
from tnsearch.study import record

ARMS = {
    "a random": ["sampler=random", "pruning.enabled=false", "pretrain.epochs=0"],
    "n nsga2": ["sampler=nsga2", "pruning.enabled=false", "pretrain.epochs=0"],
    "b tpe": ["pruning.enabled=false", "pretrain.epochs=0"],
    "c tpe+warm": ["pretrain.epochs={epochs}", "pruning.enabled=false", "search.budgets=[]"],
    "d tpe+warm+prune": ["pretrain.epochs={epochs}", "pruning.enabled=true", "search.budgets=[]"],
    # (d) + the budget ladder: the profile's plans for 1/2 ... 1/16 of the parameters first
    "e tpe+warm+prune+ladder": ["pretrain.epochs={epochs}", "pruning.enabled=true"],
}


def launch(study: str, arm: str, seed: int, args, root: Path) -> tuple[subprocess.Popen, float]:
    """Start one arm's study; returns the process and when it started."""
    overrides = [o.format(epochs=args.epochs) for o in ARMS[arm]]
    if args.parallel > 1:
        overrides.append("threads=1")
    name = f"{study}-{arm.split()[0]}-{seed}"
    launched = time.time()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tnsearch",
            f"study={study}",
            f"name={name}",
            f"root={root}",
            f"seed={seed}",
            "trials=100000",
            f"timeout={args.budget}",
            f"epochs={args.epochs}",
            "latency.repeats=20",
            "tracking.enabled=false",
            *overrides,
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / f"{name}.stderr").open("w"),  # a file: a full pipe would stall the run
    )
    return process, launched


def collect(study: str, arm: str, seed: int, root: Path, process, launched: float) -> dict:
    """One finished arm's curve and summary."""
    name = f"{study}-{arm.split()[0]}-{seed}"
    if process.wait() != 0:
        err = (root / f"{name}.stderr").read_text()
        sys.exit(f"{name} failed ({process.returncode}):\n{err[-3000:]}")
    loaded = optuna.load_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(str(root / name / "optuna.journal"))),
    )
    finish = {t.number: t.datetime_complete for t in loaded.trials}
    curve = [
        ((finish[n].timestamp() if isinstance(finish[n], datetime) else launched) - launched, hv)
        for n, hv in hypervolume_history(loaded)
    ]
    trained = [r for r in record.records(loaded) if r.trained and r.values]
    dense = record.dense(trained)
    near = [t for t in trained if t.quality >= dense.quality - 0.01]
    return {
        "curve": curve,
        "final": curve[-1][1] if curve else 0.0,
        "trials": len(loaded.trials),
        "pruned": sum(t.state.name == "PRUNED" for t in loaded.trials),
        "compression": max(t.compression for t in near),
        "dense_acc": dense.quality,
    }


def time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((t for t, hv in curve if hv >= level - 1e-12), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["mlp", "lenet"])
    parser.add_argument("--arms", nargs="+", default=["a", "n", "b", "e"], help="e.g. a n b c d e")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1, help="arms run at a time (threads=1)")
    args = parser.parse_args()
    print(
        f"budget {args.budget:.0f} s per run, {args.epochs} epochs per trial, seeds {args.seeds}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for study in args.studies:
            arms = [a for a in ARMS if a in args.arms or a.split()[0] in args.arms]
            results = {arm: {} for arm in arms}
            jobs = [(seed, arm) for seed in args.seeds for arm in arms]
            running: list = []
            while jobs or running:
                while jobs and len(running) < args.parallel:
                    seed, arm = jobs.pop(0)
                    running.append((seed, arm, *launch(study, arm, seed, args, Path(tmp))))
                seed, arm, process, launched = running.pop(0)
                r = collect(study, arm, seed, Path(tmp), process, launched)
                results[arm][seed] = r
                print(
                    f"  {study} {arm} seed {seed}: hv {r['final']:.4f}, "
                    f"{r['trials']} trials ({r['pruned']} pruned), best compression "
                    f"within 1 pt {r['compression']:.1f}x",
                    flush=True,
                )
            for arm in arms:
                runs = [results[arm][seed] for seed in args.seeds]
                bases = [results["a random"][seed] for seed in args.seeds]
                reach = [
                    (time_to(r["curve"], base["final"]), time_to(base["curve"], base["final"]))
                    for r, base in zip(runs, bases, strict=True)
                ]
                finals = [r["final"] for r in runs]
                rows.append((study, arm, finals, reach, runs))
    print()
    print(
        "| study | arm | final hypervolume (mean ± sd) | time to (a)'s final hv, s "
        "(as a fraction of (a)'s own), per seed "
        "| trials (pruned) per run | best compression within 1 pt (per seed) |"
    )
    print("|---|---|---|---|---|---|")
    for study, arm, finals, reach, runs in rows:
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        reach_text = ", ".join(
            "never" if r is None else f"{r:.0f} ({r / own:.2f})" if own else f"{r:.0f}"
            for r, own in reach
        )
        trials = ", ".join(f"{r['trials']} ({r['pruned']})" for r in runs)
        comp = ", ".join(f"{r['compression']:.1f}x" for r in runs)
        print(
            f"| {study} | {arm} | {statistics.fmean(finals):.4f} ± {sd:.4f} | {reach_text} "
            f"| {trials} | {comp} |"
        )


if __name__ == "__main__":
    main()
