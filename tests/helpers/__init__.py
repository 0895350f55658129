"""Helpers the tests share: the real Hydra config shrunk for tests, the command line in a
subprocess, and constructed trials and studies as `python -m tnsearch` records them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from tnsearch.space import param_name

#: Overrides that make any study's latency measurement CI-sized; a warm study does not profile
#: and enqueue its budget ladder (tests/study/test_ladder.py does).
#: (a latency of 3 pairs spreads on a busy machine: its noise flag, which stops the pruner from
#: pruning on it, is tested on its own, so here it is never raised)
FAST = [
    "latency.warmup=1",
    "latency.repeats=3",
    "latency.batch_size=8",
    "latency.noisy=1000",
    "search.budgets=[]",
    "tracking.log_models=none",  # logging models is tested on its own (tests/results)
    "tracking.bonds=false",  # so are the bonds per epoch (tests/test_bonds_study.py)
]
#: The quick study, shrunk: a ResNet-8 of width 8.
QUICK = ["model.depth=8", "model.width=8", *FAST]
#: The smallest real study: LeNet-300-100 on scikit-learn's digits.
#: (cold: the mlp preset pretrains by default; a test that wants it warm says so after TINY)
TINY = ["study=mlp", "pretrain.epochs=0", "data=digits", "epochs=1", "space.orders=[1,2]", *FAST]


def compose_cfg(overrides: list[str] | None = None, *, config: str = "config"):
    """The composed config, as `python -m tnsearch <overrides>` would see it (`config`: the
    primary config, e.g. "report" for `python -m tnsearch.report`)."""
    with initialize_config_module("tnsearch.conf", version_base=None):
        return compose(config, overrides=list(overrides or []), return_hydra_config=False)


def start_cli(args: list[str], *, cwd: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start `python -m tnsearch ARGS` in the background (stdout dropped; stderr as asked,
    text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tnsearch", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


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


# -- shared by the report, export and selection tests ------------------------------------------

#: The plan of a constructed trial: an MLP on 8x8 digits (built, never trained).
_MLP = {"_target_": "tnsearch.models.MLP", "hidden": [300, 100]}
_INPUTS = {"in_channels": 1, "image_size": 8, "num_classes": 10}
_LAYERS = ("fc1", "fc2")


def constructed_trial(
    accuracy, params, latency_ms, layers=None, *, trained=True, lr=None, attrs=None
):
    """A finished trial as `python -m tnsearch` records it, with made-up measurements.

    `layers` maps a layer name to (topology, order, rank); layers not listed stay dense;
    `attrs`: more user attributes (e.g. latency_device).
    """
    extra = dict(attrs or {})
    import optuna
    from optuna.distributions import CategoricalDistribution

    layers = layers or {}
    params_, dists = {}, {}
    plan_layers = {}
    for name in _LAYERS:
        params_[param_name(name, "tensorize")] = name in layers
        dists[param_name(name, "tensorize")] = CategoricalDistribution([False, True])
        if name in layers:
            topology, order, rank = layers[name]
            choices = {"topology": ["cp", "mpo", "tree", "tucker"], "order": [1, 2]}
            choices["rank"] = [2, 4, 8, 16]
            for key, value in (("topology", topology), ("order", order), ("rank", rank)):
                params_[param_name(name, key)] = value
                dists[param_name(name, key)] = CategoricalDistribution(choices[key])
            plan_layers[name] = {"topology": topology, "order": order, "rank": rank}
    if lr is not None:
        params_["lr"] = lr
        dists["lr"] = CategoricalDistribution([0.01, 0.1])
    plan = {"version": 1, "model": _MLP, "inputs": _INPUTS, "layers": plan_layers}
    attrs = {
        "plan": {**plan, "params": params},
        "params": params,
        "compression": 50610 / params,
        "accuracy": accuracy if trained else 0.0,
        "latency_ms": latency_ms,
        # the objective is the ratio to the dense model: here a dense model of 1 ms per batch
        "latency_ratio": latency_ms,
        "dense_latency_ms": 1.0,
        "trained": trained,
        **extra,
    }
    if trained:
        attrs["test_accuracy"] = accuracy - 0.01
    return optuna.trial.create_trial(
        values=[attrs["accuracy"], params, latency_ms],
        params=params_,
        distributions=dists,
        user_attrs=attrs,
    )


def constructed_study(trials, name="constructed"):
    """An in-memory study holding `trials` (see `constructed_trial`), objectives as tnsearch's."""
    import warnings

    import optuna

    study = optuna.create_study(study_name=name, directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "param_count", "latency_ratio"])
    study.set_user_attr("dense_params", 50610)
    study.add_trials(trials)
    return study


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(folder: Path, sentences) -> Path:
    """A tiny BERT-style WordPiece tokenizer saved in ``folder``: the special tokens, then the
    lowercase words and punctuation of ``sentences``."""
    import re

    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)

    words = sorted({w for s in sentences for w in re.findall(r"[a-z]+|[^a-z\s]", s.lower())})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    if len(tokenizer) < len(SPECIAL) + len(words):  # transformers 5 names the argument `vocab`
        tokenizer = BertTokenizerFast(vocab=str(vocab))
    assert len(tokenizer) == len(SPECIAL) + len(words)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder / "tokenizer"


def tiny_bert_config(vocab_size: int, *, layers: int = 1, positions: int = 32, **extra):
    """A transformers BertConfig small enough for tests: width 32, 2 heads, FFN 64."""
    import transformers

    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        **extra,
    )


def val_accuracy(model, datamodule) -> float:
    """`model`'s accuracy (eval mode) on `datamodule`'s validation split of (x, y) batches."""
    import torch

    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return correct / seen
