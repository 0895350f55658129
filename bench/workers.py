"""Trials per hour with one worker against two on the same study and machine.

Runs the same study (same seed, same plans in the same order for the first worker) with
`workers=1` and then `workers=2`, each from a fresh folder, and times the whole command,
start-up included.

    python bench/workers.py [--study mlp] [--trials 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def run(workers: int, args: argparse.Namespace) -> float:
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
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="mlp")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more key=value overrides")
    args = parser.parse_args()
    one = run(1, args)
    two = run(2, args)
    print(
        "| study | trials | workers=1 (s) | workers=2 (s) | trials/h, 1 | trials/h, 2 | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.study} {' '.join(args.overrides)}, {args.epochs} epochs | {args.trials} "
        f"| {one:.0f} | {two:.0f} | {3600 * args.trials / one:.0f} "
        f"| {3600 * args.trials / two:.0f} "
        f"| {one / two:.2f}x |"
    )


if __name__ == "__main__":
    main()
