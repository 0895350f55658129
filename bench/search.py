"""Hypervolume reached for an equal wall-clock budget: random vs tnsearch's sampler, warm start,
and Pareto-aware pruning.

Arms, each with the same budget (`timeout`, pretraining and profiling included) and seeds:
  (a) RandomSampler from scratch        (b) the default sampler (TPE) from scratch
  (c) (b) + warm start (pretrain.epochs) (d) (c) + Pareto-aware pruning
  (e) (d) + the budget ladder (search.budgets: the profile's budget plans first)

For each run: the hypervolume of the front over time (normalized space, see
tnsearch.results.pareto.REFERENCE), the time (d) needs to reach (a)'s final hypervolume, and the
largest compression among trials within 1 point of the dense model's accuracy.

    python bench/search.py [--studies mlp lenet] [--seeds 0 1 2] [--budget 150]
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
    "b tpe": ["pruning.enabled=false", "pretrain.epochs=0"],
    "c tpe+warm": ["pretrain.epochs={epochs}", "pruning.enabled=false", "search.budgets=[]"],
    "d tpe+warm+prune": ["pretrain.epochs={epochs}", "pruning.enabled=true", "search.budgets=[]"],
    # (d) + the budget ladder: the profile's plans for 1/2 ... 1/16 of the parameters first
    "e tpe+warm+prune+ladder": ["pretrain.epochs={epochs}", "pruning.enabled=true"],
}


def run_arm(study: str, arm: str, seed: int, args, root: Path) -> dict:
    overrides = [o.format(epochs=args.epochs) for o in ARMS[arm]]
    name = f"{study}-{arm.split()[0]}-{seed}"
    launched = time.time()
    subprocess.run(
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
        check=True,
        capture_output=True,
        text=True,
    )
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
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help="e.g. 'a random'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per run")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"budget {args.budget:.0f} s per run, {args.epochs} epochs per trial, seeds {args.seeds}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for study in args.studies:
            arms = [a for a in ARMS if a in args.arms or a.split()[0] in args.arms]
            results = {arm: [] for arm in arms}
            for seed in args.seeds:
                for arm in arms:
                    results[arm].append(run_arm(study, arm, seed, args, Path(tmp)))
                    r = results[arm][-1]
                    print(
                        f"  {study} {arm} seed {seed}: hv {r['final']:.4f}, "
                        f"{r['trials']} trials ({r['pruned']} pruned), best compression "
                        f"within 1 pt {r['compression']:.1f}x",
                        flush=True,
                    )
            for arm in arms:
                runs = results[arm]
                finals = [r["final"] for r in runs]
                reach = [
                    time_to(r["curve"], base["final"])
                    for r, base in zip(runs, results["a random"], strict=True)
                ]
                rows.append((study, arm, finals, reach, runs))
    print()
    print(
        "| study | arm | final hypervolume (mean ± sd) | time to (a)'s final hv (s, per seed) "
        "| trials (pruned) per run | best compression within 1 pt (per seed) |"
    )
    print("|---|---|---|---|---|---|")
    for study, arm, finals, reach, runs in rows:
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        reach_text = ", ".join("never" if r is None else f"{r:.0f}" for r in reach)
        trials = ", ".join(f"{r['trials']} ({r['pruned']})" for r in runs)
        comp = ", ".join(f"{r['compression']:.1f}x" for r in runs)
        print(
            f"| {study} | {arm} | {statistics.fmean(finals):.4f} ± {sd:.4f} | {reach_text} "
            f"| {trials} | {comp} |"
        )


if __name__ == "__main__":
    main()
