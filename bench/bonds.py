"""What the bonds say: do bond spectra predict the sensitivity profile's measured loss?

For each model, `python -m tnsearch.profile` measures every option of every layer group alone
(data-aware decomposition, zero-shot quality) and records its bond quantities
(`tnsearch.bonds.option_quantities`); this prints, per model and quantity, Spearman's rank
correlation with the measured loss over all options and within groups (the mean over groups),
as the report's "What the bonds say" does, and whether the best one reaches the goal (0.7
within groups). Not a timing benchmark: run it any time.

    python bench/bonds.py [--only mlp,resnet,minilm] [--root DIR] [--no-run]

`--no-run` reads the profiles already in DIR (`<DIR>/<name>/profile/*.json`, the newest).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

#: model -> (label, the profile's overrides)
MODELS = {
    "mlp": ("LeNet-300-100 (mnist5k)", ["study=mlp"]),
    # the space of bench/predictors.py's ResNet-20 (the quick preset, every conv its own group)
    "resnet": ("ResNet-20 (mnist5k, quick preset, 2 epochs)", ["study=quick", "pretrain.epochs=2"]),
    # the six encoder blocks at order 2 (the word embedding's MPO and tree fits take minutes
    # each: the whole preset is 40+ minutes measured)
    "minilm": (
        "all-MiniLM-L6-v2 (600 lines, the encoder blocks, order 2)",
        ["study=minilm", "data.limit=600", "space.layers=[encoder.layer.*]", "space.orders=[2]"],
    ),
}


def profile(root: Path, name: str, overrides: list[str], run: bool) -> Path:
    """The model's profile file (measured first unless `run` is False)."""
    if run:
        args = [sys.executable, "-m", "tnsearch.profile", f"root={root}", *overrides]
        args += ["tracking.enabled=false", "profile.measure=all"]  # every option, measured
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: the profile failed:\n{done.stderr[-3000:]}")
        print(f"{name}: profile in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    study = next(o.split("=", 1)[1] for o in overrides if o.startswith("study="))
    found = sorted((root / study / "profile").glob("*.json"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if p.parent.name == "profile"]  # not the per-option cache files
    if not found:
        sys.exit(f"{name}: no profile in {root / study / 'profile'}")
    return found[-1]


def fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--root", default="studies/bench-bonds")
    parser.add_argument("--no-run", action="store_true")
    args = parser.parse_args()
    from tnsearch.budget.profile import Profile
    from tnsearch.report import _bond_profile as bp

    root = Path(args.root).resolve()
    print(f"# bond quantities against the profile's loss, {datetime.now():%Y-%m-%d %H:%M}\n")
    summary = []
    for name in args.only.split(","):
        label, overrides = MODELS[name]
        found = Profile.load(profile(root, name, overrides, not args.no_run))
        groups = len(found.groups)
        print(f"## {label}: {len(found.entries)} options, {groups} groups, {found.seconds:.0f} s")
        print(f"dense {found.metric} {found.dense_quality:.4f}\n")
        print("| quantity | Spearman, all options | within groups (mean) | lowest group |")
        print("|---|---:|---:|---:|")
        rows = bp.correlations(found)
        for c in rows:
            print(f"| {c.quantity} | {fmt(c.across)} | {fmt(c.within)} | {fmt(c.lowest)} |")
        top = bp.best(found)
        if top is not None:
            calls = bp.compressible(found, top.quantity)
            agree = bp.spearman([c.loss for c in calls], [c.quantity for c in calls])
            summary.append((label, top, agree, len(calls)))
        print()
    print("| model | best bond quantity | within groups | all options | groups' verdicts |")
    print("|---|---|---:|---:|---:|")
    for label, top, agree, n in summary:
        goal = "met" if abs(top.within) >= bp.GOAL else "missed"
        print(
            f"| {label} | {top.quantity} | {fmt(top.within)} ({goal}) | {fmt(top.across)} | "
            f"{fmt(agree)} over {n} |"
        )


if __name__ == "__main__":
    main()
