"""Shared fixtures: compose the real Hydra config, shrunk for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

ROOT = Path(__file__).resolve().parents[1]

#: Overrides that make any study's latency measurement CI-sized.
FAST = ["latency.warmup=1", "latency.repeats=3", "latency.batch_size=8"]
#: The quick study, shrunk: a ResNet-8 of width 8.
QUICK = ["model.depth=8", "model.width=8", *FAST]
#: The smallest real study: LeNet-300-100 on scikit-learn's digits.
TINY = ["study=mlp", "data=digits", "epochs=1", "space.orders=[1,2]", *FAST]


def compose_cfg(overrides: list[str] | None = None):
    """The composed config, as `python -m tnsearch <overrides>` would see it."""
    with initialize_config_module("tnsearch.conf", version_base=None):
        return compose("config", overrides=list(overrides or []), return_hydra_config=False)


def run_cli(args: list[str], *, cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run `python -m tnsearch ARGS` in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tnsearch", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cfg_factory():
    return compose_cfg
