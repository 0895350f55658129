"""Framework overhead of a tnsearch trial against a plain PyTorch training loop.

The same dense model, data, optimizer, schedule and epochs, trained (a) by a plain PyTorch loop
and (b) as one tnsearch trial (Lightning + Optuna + MLflow, in-process, after start-up). The
worker start-up (imports, data, study, tracking store) is timed separately, in a fresh process.

    python bench/overhead.py [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tnsearch import plan as plans
from tnsearch.__main__ import run as run_search

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import compose_cfg  # noqa: E402

STUDIES = {
    "mlp (LeNet-300-100)": ["study=mlp"],
    "quick (ResNet-20)": ["study=quick"],
}


def plain_loop(cfg, epochs: int) -> float:
    """Seconds to train and validate the dense model with a hand-written loop."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup()
    inputs = {
        "in_channels": dm.in_channels,
        "image_size": dm.image_size,
        "num_classes": dm.num_classes,
    }
    torch.manual_seed(0)
    model = plans.build_dense(plans.make(cfg.model, inputs, {}))
    opt = instantiate(cfg.trainer.optimizer)(model.parameters())
    steps = epochs * (len(dm.dataset("train")) // dm.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in dm.train_dataloader():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in dm.val_dataloader():
                correct += int((model(x).argmax(1) == y).sum())
    with torch.no_grad():  # the test pass a trial makes too
        for x, y in dm.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
    return time.perf_counter() - start


def trial_seconds(overrides: list[str], epochs: int, root: Path) -> tuple[float, float]:
    """Seconds of one dense tnsearch trial (in-process, warm), and of its latency measurement."""
    from tnsearch.cli import resolve

    cfg = compose_cfg([f"root={root}", "trials=1", f"epochs={epochs}", *overrides])
    resolved = resolve(cfg)
    start = time.perf_counter()
    run_search(cfg)
    total = time.perf_counter() - start
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    name = resolved.name
    study = optuna.load_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(str(root / name / "optuna.journal"))),
    )
    from tnsearch.study.record import Record

    trial = Record.from_trial(study.trials[0])
    lat = resolved.latency
    latency_s = trial.latency_ms * (lat.warmup + lat.repeats) / 1e3
    return trial.seconds, latency_s, total


def startup_seconds(overrides: list[str], root: Path) -> float:
    """Seconds from process start until the first trial starts (imports, data, study, MLflow)."""
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tnsearch",
            f"root={root}",
            "trials=1",
            "epochs=0",
            "latency.warmup=0",
            "latency.repeats=1",
            *overrides,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    total = time.perf_counter() - start
    trial_line = next(line for line in done.stdout.splitlines() if line.startswith("trial"))
    trial_s = float(trial_line.rsplit(" ", 2)[-2])
    return total - trial_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for label, overrides in STUDIES.items():
        from tnsearch.cli import resolve

        cfg = resolve(compose_cfg([*overrides, f"epochs={args.epochs}"]))
        plain_loop(cfg, 1)  # warm caches (data, allocator)
        plain = statistics.median(plain_loop(cfg, args.epochs) for _ in range(args.repeats))
        trials, latencies = [], []
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, latency_s, _ = trial_seconds(overrides, args.epochs, Path(tmp) / str(i))
            trials.append(seconds)
            latencies.append(latency_s)
        trial = statistics.median(trials)
        latency = statistics.median(latencies)
        with tempfile.TemporaryDirectory() as tmp:
            startup = statistics.median(
                startup_seconds(overrides, Path(tmp) / str(i)) for i in range(args.repeats)
            )
        rows.append((label, plain, trial, latency, startup))
    print(
        "| study | plain loop (s) | tnsearch trial (s) | of which latency measurement (s) "
        "| trial / plain | (trial - latency) / plain | worker start-up (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, plain, trial, latency, startup in rows:
        print(
            f"| {label}, {args.epochs} epochs | {plain:.2f} | {trial:.2f} | {latency:.2f} "
            f"| {trial / plain:.2f} | {(trial - latency) / plain:.2f} | {startup:.1f} |"
        )


if __name__ == "__main__":
    main()
