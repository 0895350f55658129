"""Trials per hour with one worker against two on the same study and machine.

Runs the same study (same seed, same plans in the same order for the first worker) with
`workers=1` and then `workers=2`, each from a fresh folder. Two rates: the whole command
(start-up of every worker included, as a short study sees it) and the steady state (trials
trained between the first trial's start and the last one's end, as a long study sees it: a
worker's start-up is paid once, not per trial).

    python bench/workers.py [--study mlp] [--trials 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tnsearch.study import record


def steady(root: str) -> tuple[int, float]:
    """Trained trials (duplicates of an earlier plan excluded) and the seconds they spanned."""
    journal = next(Path(root).glob("*/optuna.journal"))
    study = optuna.load_study(
        study_name=None, storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    done = [
        r
        for r in record.records(study, (TrialState.COMPLETE, TrialState.PRUNED))
        if r.duplicate_of is None
    ]
    first = min(r.started for r in done)
    last = max(r.completed for r in done)
    return len(done), (last - first).total_seconds()


def run(workers: int, args: argparse.Namespace) -> tuple[float, int, float]:
    """Seconds of the whole command, trained trials, and the seconds they spanned."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tnsearch",
                f"study={args.study}",
                f"root={root}",
                f"trials={args.trials}",
                f"epochs={args.epochs}",
                f"workers={workers}",
                "latency.repeats=20",
                *args.overrides,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return (time.perf_counter() - start, *steady(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="mlp")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more key=value overrides")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (one, n1, s1), (two, n2, s2) = run(1, args), run(2, args)
    study = f"{args.study} {' '.join(args.overrides)}".strip()
    print(
        "| study | trials | rate | workers=1 | workers=2 | trials/h, 1 | trials/h, 2 | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    whole1, whole2 = 3600 * args.trials / one, 3600 * args.trials / two
    print(
        f"| {study}, {args.epochs} epochs | {args.trials} | whole command | {one:.0f} s "
        f"| {two:.0f} s | {whole1:.0f} | {whole2:.0f} | {whole2 / whole1:.2f}x |"
    )
    rate1, rate2 = 3600 * n1 / s1, 3600 * n2 / s2
    print(
        f"| | | steady state | {n1} in {s1:.0f} s | {n2} in {s2:.0f} s "
        f"| {rate1:.0f} | {rate2:.0f} | {rate2 / rate1:.2f}x |"
    )


if __name__ == "__main__":
    main()
