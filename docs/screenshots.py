"""Screenshots of a fresh study in `mlflow ui` and optuna-dashboard, taken with headless Chromium.

Runs `study=mlp` (small: `--trials`, `--epochs`) with its models registered, starts both UIs on
loopback, and saves what a user sees at the URLs tnsearch prints at the end of a study:

    docs/mlflow-runs.png         the experiment's runs (the "Model training" view)
    docs/mlflow-parent.png       the parent run: the study's figures and its front
    docs/mlflow-models.png       the registered model, one version per Pareto-optimal trial
    docs/optuna-dashboard.png    the study in optuna-dashboard

Needs Debian's chromium (`apt-get install chromium`) and optuna-dashboard (`pip install
optuna-dashboard`).

    python docs/screenshots.py [--trials 8] [--epochs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 90.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2).read(1)
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds:.0f} s")


def shoot(url: str, out: Path, size: str = "1900,950", budget_ms: int = 15000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"{out.relative_to(DOCS.parent)}  <- {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="study root to keep (else temp)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="tnsearch-shots-"))
    uri = f"sqlite:///{root}/mlflow.db"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tnsearch",
            "study=mlp",
            f"trials={args.trials}",
            f"epochs={args.epochs}",
            "pretrain.epochs=2",
            f"root={root}",
            "tracking.register=true",
        ],
        check=True,
    )
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlp").experiment_id
    parent = next(
        r for r in client.search_runs([experiment]) if r.data.tags.get("tnsearch_role") == "parent"
    ).info.run_id
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / "mlp" / "optuna.journal"))
    )
    study_id = optuna.load_study(study_name="mlp", storage=storage)._study_id
    mlflow_port, dashboard_port = free_port(), free_port()
    servers = [
        subprocess.Popen(
            ["mlflow", "ui", "--backend-store-uri", uri, "--port", str(mlflow_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                "optuna-dashboard",
                str(root / "mlp" / "optuna.journal"),
                "--port",
                str(dashboard_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        base = f"http://127.0.0.1:{mlflow_port}"
        wait_for(base)
        wait_for(f"http://127.0.0.1:{dashboard_port}")
        shoot(
            f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
            "&viewStateShareKey=tnsearch",
            DOCS / "mlflow-runs.png",
        )
        shoot(
            f"{base}/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning",
            DOCS / "mlflow-parent.png",
        )
        shoot(f"{base}/#/models/mlp", DOCS / "mlflow-models.png")
        shoot(
            f"http://127.0.0.1:{dashboard_port}/dashboard/studies/{study_id}",
            DOCS / "optuna-dashboard.png",
        )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
