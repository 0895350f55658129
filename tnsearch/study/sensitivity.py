"""A study's trained model, calibrated: its sensitivity profile, budget plans and the ladder.

What `python -m tnsearch.profile`, `python -m tnsearch.compress` and a warm study share: the
calibration inputs (`decompose.calibration` training examples) and each layer's input moments,
measured once per process on the dense model; the quality on `profile.examples` held-out
examples; the profile, cached in the study folder by the weights and the settings it was made
with; and the budget plans a warm study enqueues after its dense trial (`search.budgets`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import plan as plans
from tnsearch.budget import allocate, calibration
from tnsearch.budget.profile import DENSE, Profile
from tnsearch.config import Config, ConfigError
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
        plans.make(setup.cfg.model, setup.inputs, {}),
        trusted=plans.trusted_models(setup.cfg.model),
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
    examples = setup.cfg.decompose.calibration
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

    module = setup.task(model, instantiate(dict(setup.cfg.trainer.optimizer)))
    if not isinstance(module, Classifier):
        raise ConfigError(
            "task._target_",
            "profiles and budgets need one of tnsearch's tasks (task=classify, task=distill), "
            "which score a batch; a LightningModule of yours is searched, not profiled",
        )
    dm = setup.datamodule
    dm.setup(split)
    if examples == -1:
        examples = setup.cfg.profile.examples
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
    """What every option of the profile depends on besides the weights (the options themselves,
    and so the space, are keyed one by one)."""
    cfg = setup.cfg
    return {
        "fit": FIT,  # the data-aware fit's version: a changed method measures anew
        "calibration": cfg.decompose.calibration,
        "steps": cfg.profile.steps,
        "examples": cfg.profile.examples,
        "batch_size": cfg.latency.batch_size,
        "threads": cfg.latency.threads,
        "task": cfg.task,
        "data": cfg.data,
    }


def profile_budgets(setup: Setup) -> list[dict[str, float | None]]:
    """The budgets the profile must be right for: `budget.params` / `budget.latency` /
    `budget.bytes` when given (compress), else the ladder's (`search.budgets`) and
    `profile.budgets`."""
    cfg = setup.cfg
    given = cfg.budget.to_dict()
    if any(v is not None for v in given.values()):
        return [{k: None if v is None else float(v) for k, v in given.items()}]
    fractions = [*(cfg.search.budgets or ()), *(cfg.profile.budgets or ())]
    asked = [{"params": float(f)} for f in sorted(set(fractions), reverse=True)]
    latency = sorted(set(cfg.search.latency or ()), reverse=True)
    asked += [{"params": a["params"], "latency": float(g)} for a in asked for g in latency]
    return asked + [{"bytes": f} for f in byte_rungs(setup)]


def byte_rungs(setup: Setup) -> list[float]:
    """The ladder's fractions of the dense float32 bytes (`search.bytes`; null: those of
    `search.budgets` when int8 is in `space.precisions`), largest first."""
    from tnsearch.budget.profile import INT8

    found = setup.cfg.search.bytes
    if found is None:
        found = setup.cfg.search.budgets if INT8 in setup.space.precisions else ()
    return sorted({float(f) for f in found or ()}, reverse=True)


def profile(
    setup: Setup,
    *,
    say: Callable[[str], None] | None = None,
    budgets: list[dict[str, float | None]] | None = None,
) -> tuple[Profile, Path]:
    """The study's profile, anytime: every option predicted from the whitened weights'
    spectra, and the options an allocation at `budgets` (default `profile_budgets`) could pick
    measured, refined until the allocation picks only measured options (`profile.measure=all`:
    every option). Each measured option is stored at once in the study folder (keyed by the
    weights and the settings), so a rerun, or another worker, reads it instead of measuring it
    again; workers split the options between them."""
    from tnsearch.budget import allocate
    from tnsearch.budget import profile as profiles
    from tnsearch.budget.cache import OptionCache
    from tnsearch.measure import latency
    from tnsearch.ui import Steps, warn

    say = say or (lambda _text: None)
    start = time.perf_counter()
    model = dense_model(setup)
    settings = _settings(setup)
    key = profiles.fingerprint(model, settings)
    folder = setup.study_dir / PROFILE_DIR
    cache = OptionCache(folder / key, warn=warn)
    _, stats = calibrated(setup)
    evaluate = evaluator(setup, model)
    cfg = setup.cfg
    timing = setup.timing.but(**profiles.TIMING)
    example = latency.example_batch(setup.datamodule, timing.batch_size)
    profiler = profiles.Profiler(
        model, setup.space, stats, evaluate, example, steps=cfg.profile.steps,
        timing=timing,
    )  # fmt: skip
    with cache.hold(("dense", "", 0, 0)):  # one process measures the reference, others wait
        dense = cache.dense()
        if dense is None:
            dense = profiler.dense()
            cache.write_dense(dense)
    menu = [o for g in setup.space.groups for o in profiler.menu(g)]
    by_key = {o.key: o for o in menu}
    known = {  # measured before: the same group, option and layers (a changed space may
        # differ), with today's prediction beside the measurement
        k: replace(e, predicted_error=by_key[k].predicted_error)
        for k, e in cache.entries().items()
        if k in by_key and e.layers == by_key[k].layers
    }
    measure_all = cfg.profile.measure == "all"
    say(
        f"profile: {len(known)} of {len(menu)} options already measured; "
        + (
            "measuring the rest"
            if measure_all
            else "predicting the rest from the whitened weights' spectra, measuring what an "
            "allocation could pick"
        )  # fmt: skip
    )
    maximize = task_metric(cfg)[1] == "maximize"
    budgets = profile_budgets(setup) if budgets is None else budgets

    def current() -> Profile:
        return profiles.assemble(
            dense, menu, known, key=key, metric=setup.metric, maximize=maximize,
            settings=settings, seconds=time.perf_counter() - start,
        )  # fmt: skip

    rounds = here = 0
    steps = Steps("profile", 0, say=say)
    try:
        while True:
            if measure_all:
                todo = [o for o in menu if o.key not in known]
            else:
                wanted = allocate.candidates(
                    current(),
                    budgets,
                    neighbours=NEIGHBOURS,
                    tolerance=TOLERANCE * abs(dense["quality"]),
                )
                todo = [by_key[k] for k in sorted(wanted) if k not in known]
            if not todo or rounds >= MAX_ROUNDS:
                break
            rounds += 1
            steps.total += len(todo)
            waiting = []
            for option in todo:
                with cache.claim(option.key) as mine:
                    found = cache.read(option.key)
                    if found is not None and found.layers != option.layers:
                        found = None  # another space's option of that name: measured anew
                    if found is None and mine:
                        found = profiler.measure(option)
                        cache.write(found)
                        here += 1
                if found is None:  # another process holds it: read it when it is written
                    waiting.append(option)
                    continue
                known[option.key] = found
                steps.advance(note=_note(found, setup.metric))
            for option in waiting:
                cache.wait(option.key)
                found = cache.read(option.key)
                if found is not None:
                    known[option.key] = found
                steps.advance(note=f"{option.name} (measured by another worker)")
    finally:
        steps.close()
    found = current()
    path = folder / f"{key}.json"
    found.save(path)
    say(
        f"profile: {len(found.measured)} of {len(menu)} options measured ({here} by this "
        f"process), the others predicted ({time.perf_counter() - start:.0f} s)"
    )
    return found, path


#: Rounds of measuring what the allocation picks, then allocating again, at most.
MAX_ROUNDS = 8
#: A budget is settled when its allocation over the measured options alone is predicted to
#: lose at most this fraction of the dense quality more than its allocation over all options.
TOLERANCE = 0.005
#: Options measured on either side of each pick along its group's hull. LeNet-300-100 on
#: mnist5k, the ladder's four budgets (bench/predictors.py): 1 measures 18 of 108 options and
#: its allocations lose 0.008-0.028 where the whole profile's lose 0.005-0.025; 0 measures 10
#: and loses 0.143 at the smallest budget (0.025 with the whole profile).
NEIGHBOURS = 1


def _note(entry, metric: str) -> str:
    return (
        f"{entry.name}: {entry.params:,} params, {entry.weight_bytes:,} bytes, "
        f"{metric} {entry.quality:.4f}, latency {entry.latency_ratio:.2f}x"
    )


def build(
    setup: Setup,
    layers: Mapping[str, Mapping[str, Any]],
    *,
    say: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict]:
    """The dense model with `layers` tensorized by data-aware decomposition (and its batch
    norms re-estimated); also each layer's relative output error (`say`: progress lines)."""
    from tnsearch.ui import Steps

    inputs, stats = calibrated(setup)
    model = dense_model(setup)
    with Steps("decompose", len(layers), say=say, enabled=False if say is None else None) as steps:
        errors = calibration.tensorize(
            model, layers, stats, steps=setup.cfg.decompose.steps,
            progress=(lambda name: steps.advance(note=name)) if say is not None else None,
        )  # fmt: skip
    if setup.cfg.decompose.batchnorm:
        calibration.reestimate_batchnorm(model, inputs)
    return model, errors


def budget_plan(setup: Setup, profile_: Profile, **budget: float | None) -> allocate.Allocation:
    """The allocation for `budget` (params=, latency=, bytes=), UnreachableBudget as a
    ConfigError."""
    try:
        return allocate.allocate(profile_, **budget, measured_only=bool(profile_.measured))
    except allocate.UnreachableBudget as exc:
        raise ConfigError(exc.key, str(exc).split(": ", 1)[1]) from None


def hopeless(setup: Setup, found: Profile) -> dict[str, set[tuple[str, int, int]]]:
    """Per group, the options worth trying: those whose zero-shot quality loses at most
    `space.hopeless` of the dense quality (the profile measured each alone)."""
    limit = float(setup.cfg.space.hopeless) * abs(found.dense_quality)
    keep: dict[str, set[tuple[str, int, int]]] = {g: set() for g in found.groups}
    for e in found.entries:
        if e.topology == DENSE or e.precision != plans.FLOAT32:
            continue  # the space's options are its tensorized ones; a precision is asked apart
        if e.loss(found.dense_quality, found.maximize) <= limit:
            keep[e.group].add((e.topology, e.order, e.rank))
    return keep


def narrow(setup: Setup, *, say: Callable[[str], None] | None = None) -> None:
    """With `space.from_profile=true` (and trained weights), drop the options the profile
    marks hopeless from the setup's space."""
    if not setup.cfg.space.from_profile or setup.pretrained is None:
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
    parameters, largest first), of each of them within each of `search.latency` (fractions
    of its latency), and of `byte_rungs` (fractions of its float32 bytes: where int8 at a higher
    rank may beat float32 at a lower one), right after the dense trial; return how many were
    enqueued."""
    budgets = list(setup.cfg.search.budgets or ())
    latency = list(setup.cfg.search.latency or ())
    sizes = byte_rungs(setup)
    if not (budgets or sizes) or setup.pretrained is None or record.ladder(study) is not None:
        return 0
    found, _ = profile(setup, say=say)
    if setup.cfg.space.from_profile:
        allowed = hopeless(setup, found)
        found = replace(
            found,
            entries=[
                e
                for e in found.entries
                if (e.topology, e.order, e.rank) in allowed[e.group] or e.topology == DENSE
            ],
        )
    enqueued, count = [], 0
    rungs = [{"params": float(f)} for f in sorted(budgets, reverse=True)]
    slower = sorted(latency, reverse=True)
    rungs += [{**r, "latency": float(g)} for r in list(rungs) for g in slower]
    rungs += [{"bytes": f} for f in sizes]
    for rung in rungs:
        fraction, slower = rung.get("params"), rung.get("latency")
        name = (f"bytes {rung['bytes']:g}" if "bytes" in rung else f"{fraction:g}") + (
            "" if slower is None else f" within latency {slower:g}x")  # fmt: skip
        try:
            chosen = allocate.allocate(found, **rung, measured_only=bool(found.measured))
        except allocate.UnreachableBudget as exc:
            if say is not None:
                say(f"search.budgets: {name} skipped ({str(exc).split(': ', 1)[1]})")
            continue
        if not chosen.layers and not chosen.precision:  # the dense model: trial 0 already
            continue
        params = setup.space.params_for(chosen.layers, chosen.precision)
        study.enqueue_trial(params, skip_if_exists=True)
        count += 1
        if slower is None and fraction is not None:
            enqueued.append(fraction)
        if say is not None:
            say(
                f"budget {name}: enqueued "
                f"{plans.summary({'layers': chosen.layers, 'precision': chosen.precision})} "
                f"({chosen.params:,} params, {chosen.bytes_fraction:.3f} of the bytes, "
                f"predicted latency {chosen.latency_fraction:.2f}x, "
                f"{setup.metric} loss {chosen.loss:.4f})"
            )
    record.set_ladder(study, enqueued)
    return count


def check_budget(cfg: Config) -> dict[str, float | None]:
    """`budget.params` / `budget.latency` / `budget.bytes`: fractions in (0, 1], at least one
    given."""
    given = {}
    for key, value in cfg.budget.to_dict().items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1
        ):
            raise ConfigError(f"budget.{key}", f"must be a fraction in (0, 1], got {value!r}")
        given[key] = None if value is None else float(value)
    if all(v is None for v in given.values()):
        raise ConfigError(
            "budget.params",
            "give budget.params=FRACTION, budget.latency=FRACTION and/or budget.bytes=FRACTION",
        )
    return given


def smallest(setup: Setup) -> dict[str, float]:
    """The least fractions of the dense parameters and of the dense float32 bytes any plan of
    the space reaches (every group at its smallest option, in int8 where `space.precisions`
    allows it), known without measuring anything."""
    from tnsearch import tn
    from tnsearch.budget import profile as profiles
    from tnsearch.measure import quantize

    dense = plans.build_dense(  # the structure is enough: no trained weights needed
        plans.make(setup.cfg.model, setup.inputs, {}),
        trusted=plans.trusted_models(setup.cfg.model),
    )
    int8 = profiles.INT8 in setup.space.precisions
    params, size = tn.n_params(dense), quantize.weight_bytes(dense)
    left = {"params": params, "bytes": size}

    def weighs(module) -> int:
        if int8 and profiles._quantizable(module):
            return quantize.weight_bytes(module, profiles.INT8)
        return quantize.weight_bytes(module)

    for group, members in setup.space.groups.items():
        modules = {m.name: calibration._module_for(dense, m.name) for m in members}
        count = sum(sum(p.numel() for p in mod.parameters()) for mod in modules.values())
        weight = sum(quantize.weight_bytes(mod) for mod in modules.values())
        least = {"params": count, "bytes": sum(weighs(mod) for mod in modules.values())}
        for *_, layers in profiles.options(setup.space, group):
            shells = [
                plans.tensorize_module(modules[n], spec, init="random")
                for n, spec in layers.items()
            ]
            least["params"] = min(least["params"], sum(tn.n_params(s) for s in shells))
            least["bytes"] = min(least["bytes"], sum(weighs(s) for s in shells))
        left["params"] -= count - least["params"]
        left["bytes"] -= weight - least["bytes"]
    return {"params": left["params"] / params, "bytes": left["bytes"] / size}
