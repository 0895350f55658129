"""A study's trained model, calibrated: its sensitivity profile, budget plans and the ladder.

What `python -m tnsearch.profile`, `python -m tnsearch.compress` and a warm study share: the
calibration inputs (`decompose.calibration` training examples) and each layer's input moments,
measured once per process on the dense model; the quality on `profile.examples` held-out
examples; the profile, cached in the study folder by the weights and the settings it was made
with; and the budget plans a warm study enqueues after its dense trial (`search.budgets`).
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import plan as plans
from tnsearch.budget import allocate, calibration
from tnsearch.budget.profile import Profile
from tnsearch.config import ConfigError
from tnsearch.study import record
from tnsearch.study.setup import Setup, task_metric

__all__ = ["build", "calibrated", "dense_model", "enqueue_ladder", "evaluator", "profile"]

PROFILE_DIR = "profile"
#: The version of the data-aware fit the profiles were measured with.
FIT = 2


def dense_model(setup: Setup) -> nn.Module:
    """A fresh dense model with the study's trained weights."""
    if setup.pretrained is None:
        raise ConfigError(
            "model.checkpoint",
            "needs trained weights: give model.checkpoint=PATH, pretrain.epochs=K, or a "
            "pretrained model (model=hf)",
        )
    model = plans.build_dense(
        plans.make(setup.cfg["model"], setup.inputs, {}), trusted=plans.trusted_models(setup.cfg)
    )
    model.load_state_dict(setup.pretrained)
    return model.eval()


def calibration_inputs(setup: Setup) -> list[Any]:
    """The first `decompose.calibration` training examples' inputs (read once per process).

    Raises:
        ConfigError: `decompose.calibration` is not a count >= 1, or the split is empty or
            unreadable.
    """
    found = getattr(setup, "_calibration_inputs", None)
    if found is not None:
        return found
    examples = setup.cfg["decompose"]["calibration"]
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ConfigError(
            "decompose.calibration", f"must be a number of examples >= 1, got {examples!r}"
        )
    dm = setup.datamodule
    try:
        dm.setup("fit")
        inputs = calibration.batches(dm.train_dataloader(), examples)
    except Exception as exc:  # noqa: BLE001 - an empty or unreadable split: name the key
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            "decompose.calibration", f"cannot read calibration examples: {first}"
        ) from None
    setup._calibration_inputs = inputs
    return inputs


def calibrated(setup: Setup) -> tuple[list[Any], dict]:
    """(calibration inputs, {layer: tn.InputStats}) of every eligible layer, measured once per
    process on the trained dense model."""
    found = getattr(setup, "_calibrated", None)
    if found is not None:
        return found
    inputs = calibration_inputs(setup)
    model = dense_model(setup)
    stats = calibration.collect(model, inputs, [layer.name for layer in setup.space.layers])
    setup._calibrated = (inputs, stats)
    return setup._calibrated


def evaluator(
    setup: Setup, model: nn.Module, *, examples: int | None = -1, split: str = "validate"
) -> Callable[[nn.Module], float]:
    """The quality of `model` (as it is when called, layers swapped in place or not) on the
    first `examples` examples of the validation split (or `split="test"`; -1:
    `profile.examples`; None: all), as the task scores it."""
    from hydra.utils import instantiate

    from tnsearch.measure.training import Classifier

    module = setup.task(model, instantiate(dict(setup.cfg["trainer"]["optimizer"])))
    if not isinstance(module, Classifier):
        raise ConfigError(
            "task._target_",
            "profiles and budgets need one of tnsearch's tasks (task=classify, task=distill), "
            "which score a batch; a LightningModule of yours is searched, not profiled",
        )
    dm = setup.datamodule
    dm.setup(split)
    if examples == -1:
        examples = setup.cfg["profile"]["examples"]
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    held_out = calibration.batches(
        loader, examples if examples is not None else 2**62, inputs_only=False
    )

    if hasattr(module, "remember_targets"):  # the teacher's side of the score never changes
        module.remember_targets()

    @torch.no_grad()
    def evaluate(_model: nn.Module | None = None) -> float:
        module.eval()
        total, count = 0.0, 0
        for batch in held_out:
            s, n = module.score(batch)
            total, count = total + s, count + n
        return total / max(count, 1)

    return evaluate


def _settings(setup: Setup) -> dict[str, Any]:
    cfg = setup.cfg
    return {
        "space": {g: [layer.name for layer in m] for g, m in setup.space.groups.items()},
        "topologies": list(setup.space.topologies),
        "orders": {g: list(v) for g, v in setup.space.orders.items()},
        "ranks": list(setup.space.ranks),
        "fit": FIT,  # the data-aware fit's version: a changed method measures anew
        "calibration": cfg["decompose"]["calibration"],
        "steps": cfg["profile"]["steps"],
        "examples": cfg["profile"]["examples"],
        "batch_size": cfg["latency"]["batch_size"],
        "task": cfg["task"],
        "data": cfg["data"],
    }


def profile(setup: Setup, *, say: Callable[[str], None] | None = None) -> tuple[Profile, Path]:
    """The study's profile: read from the study folder when these weights and settings made it
    before, else measured (once, under a lock: other workers wait and read it)."""
    from tnsearch.budget import profile as profiles
    from tnsearch.measure import latency

    model = dense_model(setup)
    settings = _settings(setup)
    key = profiles.fingerprint(model, settings)
    folder = setup.study_dir / PROFILE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return Profile.load(path), path
            _, stats = calibrated(setup)
            evaluate = evaluator(setup, model)
            example = latency.example_batch(setup.datamodule, setup.cfg["latency"]["batch_size"])
            total = sum(1 for g in setup.space.groups for _ in profiles.options(setup.space, g))
            if say is not None:
                say(
                    f"profiling {len(setup.space.groups)} layer groups x their options "
                    f"(up to {total} decompositions, each scored alone)"
                )
            step = max(1, total // 10)

            def progress(done: int, of: int, entry) -> None:
                if say is not None and (done % step == 0 or done == of):
                    say(
                        f"  profile {done}/{of}: {entry.group} {entry.topology} o{entry.order} "
                        f"r{entry.rank}: {entry.params:,} params, {setup.metric} "
                        f"{entry.quality:.4f}, latency {entry.latency_ratio:.2f}x"
                    )

            found = profiles.build(
                model,
                setup.space,
                stats,
                evaluate,
                example,
                metric=setup.metric,
                maximize=task_metric(setup.cfg)[1] == "maximize",
                steps=setup.cfg["profile"]["steps"],
                key=key,
                settings=settings,
                progress=progress,
            )
            found.save(path)
            return found, path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(setup: Setup, layers: Mapping[str, Mapping[str, Any]]) -> tuple[nn.Module, dict]:
    """The dense model with `layers` tensorized by data-aware decomposition (and its batch
    norms re-estimated); also each layer's relative output error."""
    inputs, stats = calibrated(setup)
    model = dense_model(setup)
    errors = calibration.tensorize(model, layers, stats, steps=setup.cfg["decompose"]["steps"])
    if setup.cfg["decompose"]["batchnorm"]:
        calibration.reestimate_batchnorm(model, inputs)
    return model, errors


def budget_plan(setup: Setup, profile_: Profile, **budget: float | None) -> allocate.Allocation:
    """The allocation for `budget` (params=, latency=), UnreachableBudget as a ConfigError."""
    try:
        return allocate.allocate(profile_, **budget)
    except allocate.UnreachableBudget as exc:
        raise ConfigError(exc.key, str(exc).split(": ", 1)[1]) from None


def hopeless(setup: Setup, found: Profile) -> dict[str, set[tuple[str, int, int]]]:
    """Per group, the options worth trying: those whose zero-shot quality loses at most
    `space.hopeless` of the dense quality (the profile measured each alone)."""
    limit = float(setup.cfg["space"]["hopeless"]) * abs(found.dense_quality)
    keep: dict[str, set[tuple[str, int, int]]] = {g: set() for g in found.groups}
    for e in found.entries:
        if e.loss(found.dense_quality, found.maximize) <= limit:
            keep[e.group].add((e.topology, e.order, e.rank))
    return keep


def narrow(setup: Setup, *, say: Callable[[str], None] | None = None) -> None:
    """With `space.from_profile=true` (and trained weights), drop the options the profile
    marks hopeless from the setup's space."""
    if not setup.cfg["space"].get("from_profile") or setup.pretrained is None:
        return
    found, _ = profile(setup, say=say)
    before = sum(1 for _ in found.entries)
    allowed = hopeless(setup, found)
    setup.space = setup.space.restrict(allowed)
    if say is not None:
        kept = sum(len(v) for v in allowed.values())
        dense = [g for g, v in allowed.items() if not v]
        say(
            f"space.from_profile: {kept} of {before} profiled options kept"
            + (f"; {', '.join(dense)} stay dense" if dense else "")
        )


def enqueue_ladder(setup: Setup, study, *, say: Callable[[str], None] | None = None) -> int:
    """Enqueue, once per study, the budget plans of `search.budgets` (fractions of the dense
    parameters, largest first) right after the dense trial; return how many were enqueued."""
    budgets = list(setup.cfg["search"]["budgets"] or ())
    if not budgets or setup.pretrained is None or record.ladder(study) is not None:
        return 0
    found, _ = profile(setup, say=say)
    if setup.cfg["space"].get("from_profile"):
        allowed = hopeless(setup, found)
        found = replace(
            found,
            entries=[e for e in found.entries if (e.topology, e.order, e.rank) in allowed[e.group]],
        )
    enqueued = []
    for fraction in sorted(budgets, reverse=True):
        try:
            chosen = allocate.allocate(found, params=float(fraction))
        except allocate.UnreachableBudget as exc:
            if say is not None:
                say(f"search.budgets: {fraction:g} skipped ({str(exc).split(': ', 1)[1]})")
            continue
        params = setup.space.params_for(chosen.layers)
        study.enqueue_trial(params, skip_if_exists=True)
        enqueued.append(float(fraction))
        if say is not None:
            say(
                f"budget {fraction:g}: enqueued {plans.summary({'layers': chosen.layers})} "
                f"({chosen.params:,} params, predicted {setup.metric} loss {chosen.loss:.4f})"
            )
    record.set_ladder(study, enqueued)
    return len(enqueued)


def check_budget(cfg: Mapping[str, Any]) -> dict[str, float | None]:
    """`budget.params` / `budget.latency`: fractions in (0, 1], at least one given."""
    given = {}
    for key in ("params", "latency"):
        value = (cfg.get("budget") or {}).get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1
        ):
            raise ConfigError(f"budget.{key}", f"must be a fraction in (0, 1], got {value!r}")
        given[key] = None if value is None else float(value)
    if given["params"] is None and given["latency"] is None:
        raise ConfigError(
            "budget.params", "give budget.params=FRACTION and/or budget.latency=FRACTION"
        )
    return given


def smallest_params(setup: Setup) -> float:
    """The least fraction of the dense parameters any plan of the space reaches (every group
    at its smallest option), known without measuring anything."""
    from tnsearch import tn
    from tnsearch.budget import profile as profiles

    dense = plans.build_dense(  # the structure is enough: no trained weights needed
        plans.make(setup.cfg["model"], setup.inputs, {}), trusted=plans.trusted_models(setup.cfg)
    )
    total = tn.n_params(dense)
    left = total
    for group, members in setup.space.groups.items():
        modules = {m.name: calibration._module_for(dense, m.name) for m in members}
        size = sum(sum(p.numel() for p in mod.parameters()) for mod in modules.values())
        best = size
        for *_, layers in profiles.options(setup.space, group):
            shells = [
                plans.tensorize_module(modules[n], spec, init="random")
                for n, spec in layers.items()
            ]
            best = min(best, sum(tn.n_params(s) for s in shells))
        left -= size - best
    return left / total
