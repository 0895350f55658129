"""`python -m tnsearch.profile` and `python -m tnsearch.compress`: a trained model's sensitivity
profile, and its one-shot compression to a budget.

`profile_command` measures (or reads back) the profile of the study's trained model and prints
the options that lose least per group; `compress` allocates the budget over the profile, builds
the model by data-aware decomposition, optionally heals it (`heal.epochs`), measures it against
the dense model and writes the same package as `tnsearch.export`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.config import Config, ConfigError
from tnsearch.study import sensitivity
from tnsearch.study.record import Record
from tnsearch.ui import Console

__all__ = ["compress", "out_folder", "profile_command"]


def _ready(cfg: Config, console: Console, *, checks=None):
    """The checked setup, with its trained weights (pretraining them once if asked); `checks`
    (a callable of the setup) runs before anything is trained or written."""
    from tnsearch.study import loop, setup

    ready = setup.prepare(cfg, console)
    if ready.pretrained is None and not cfg.pretrain.epochs:
        sensitivity.dense_model(ready)  # raises: nothing trained to compress
    sensitivity.calibration_inputs(ready)  # an empty or unreadable calibration split stops here
    if checks is not None:
        checks(ready)
    loop.ensure_pretrained(ready)
    return ready


def profile_command(cfg: Config, console: Console | None = None) -> Path:
    """Measure (or read) the profile; print each group's best options; log it to MLflow."""
    from tnsearch.study import tracking

    console = console or Console()
    ready = _ready(cfg, console)
    found, path = sensitivity.profile(ready, say=console.say)
    console.say(
        f"profile of {cfg.name}: {len(found.entries)} options over {len(found.groups)} "
        f"groups in {found.seconds:.0f} s; dense {found.metric} {found.dense_quality:.4f}, "
        f"{found.dense_params:,} params, {found.dense_latency_ms:.3f} ms per batch"
    )
    console.say(table(found))
    console.say(f"written {path}")
    tracker = tracking.from_config(cfg.tracking, cfg.name)
    tracker.log_run(
        "profile",
        params={
            "profile.key": found.key,
            "options": len(found.entries),
            "measured": len(found.measured),
        },  # fmt: skip
        metrics={f"dense_{found.metric}": found.dense_quality, "seconds": found.seconds},
        files=[path],
        tags={"tnsearch.role": "profile"},
    )
    return path


def table(found, per_group: int = 3) -> str:
    """The options that lose least per unit of parameters saved, per group (markdown)."""
    rows = ["| group | option | params (vs dense) | latency | quality | output error |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for group, g in found.groups.items():
        options = sorted(
            found.options(group),
            key=lambda e: e.loss(found.dense_quality, found.maximize) / max(g.params - e.params, 1),
        )
        for e in options[:per_group]:
            rows.append(
                f"| {group} | {e.topology} o{e.order} r{e.rank} | {e.params:,} "
                f"({e.params / g.params:.2f}) | {e.latency_ratio:.2f}x | {e.quality:.4f}"
                f"{'' if e.measured else ' (predicted)'} | {e.error:.3f} |"
            )
    return "\n".join(rows)


def out_folder(cfg: Config, budget: Mapping[str, float | None]) -> Path:
    if cfg.compress.out:
        return Path(cfg.compress.out)
    name = "_".join(f"{k}-{v:g}" for k, v in budget.items() if v is not None)
    return cfg.study_dir / "compress" / name


def compress(cfg: Config, console: Console | None = None) -> Path:
    """Compress the study's trained model to `budget.*`; return the package folder."""
    from tnsearch.measure import latency, training
    from tnsearch.results.export import write_package
    from tnsearch.study import tracking

    console = console or Console()
    budget = sensitivity.check_budget(cfg)
    heal = cfg.heal.epochs
    out = out_folder(cfg, budget)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out and not out.is_dir():
        raise ConfigError("compress.out", f"{out} is a file, not a folder")
    if not existing.is_dir():
        raise ConfigError("compress.out", f"cannot write {out}: {existing} is a file")

    def reachable(ready) -> None:
        if budget["params"] is None:
            return
        smallest = sensitivity.smallest_params(ready)
        if smallest > budget["params"]:
            raise ConfigError(
                "budget.params",
                f"no plan meets {budget['params']:g}; the smallest reachable is {smallest:.4g} "
                "(widen space.ranks, space.orders or space.layers to go further)",
            )

    ready = _ready(cfg, console, checks=reachable)
    cfg = ready.cfg  # its compile modes resolved
    found, path = sensitivity.profile(ready, say=console.say)
    chosen = sensitivity.budget_plan(ready, found, **budget)
    asked = ", ".join(f"budget.{k}={v:g}" for k, v in budget.items() if v is not None)
    console.say(
        f"allocation for {asked}: {plans.summary({'layers': chosen.layers})}; predicted "
        f"params {chosen.params_fraction:.3f}, latency {chosen.latency_fraction:.3f} of dense, "
        f"{found.metric} loss {chosen.loss:.4f}"
    )
    model, errors = sensitivity.build(ready, chosen.layers, say=console.say)
    dense = sensitivity.dense_model(ready)
    full = sensitivity.evaluator(ready, dense, examples=None)
    dense_quality = full()
    zero_shot = sensitivity.evaluator(ready, model, examples=None)()
    quality = zero_shot
    test = sensitivity.evaluator(ready, dense, examples=None, split="test")
    if heal:
        from hydra.utils import instantiate

        console.say(f"healing for {heal} epochs")
        from tnsearch.study.trial_training import healing_optimizer

        module = ready.task(model, instantiate(healing_optimizer(cfg, warm=True)))
        result = training.fit(
            module, ready.datamodule, epochs=heal, trainer_cfg=cfg.trainer, metric=ready.metric
        )
        quality = result.val_acc
        model = model.cpu().eval()
    dense_test = test()
    test_quality = sensitivity.evaluator(ready, model, examples=None, split="test")()
    timing = ready.timing  # as a trial's objective is measured
    example = latency.example_batch(ready.datamodule, timing.batch_size)
    timed = latency.paired(model, dense, example, timing)
    model, dense = model.cpu(), dense.cpu()  # timed where trials are; written from the CPU
    ratio, dense_s = timed.ratio, timed.reference_ms / 1e3
    params, dense_params = tn.n_params(model), tn.n_params(dense)
    plan = {**plans.make(cfg.model, ready.inputs, chosen.layers), "params": params}
    metric = ready.metric
    rows = [
        (f"{metric} (validation)", f"{dense_quality:.4f}", f"{quality:.4f}",
         f"{quality - dense_quality:+.4f}"),
        (f"{metric} zero-shot", "", f"{zero_shot:.4f}", ""),
        (f"{metric} (test)", f"{dense_test:.4f}", f"{test_quality:.4f}",
         f"{test_quality - dense_test:+.4f}"),
        ("parameters", f"{dense_params:,}", f"{params:,}", f"{params / dense_params:.3f}x"),
        (f"latency (ms / batch of {latency.batch_size(example)})", f"{dense_s * 1e3:.3f}",
         f"{dense_s * ratio * 1e3:.3f}", f"{ratio:.3f}x"),
    ]  # fmt: skip
    lines = ["| | dense | compressed | ratio / change |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    console.say("\n".join(lines))
    source = "compress " + out.name
    trial = Record(
        number=-1,
        plan=plan,
        quality=quality,
        test_quality=test_quality,
        zero_shot_quality=zero_shot,
        params=params,
        compression=dense_params / params,
        latency_ms=dense_s * ratio * 1e3,
    )
    readme = _readme(cfg.name, asked, plan, lines, heal, errors)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        write_package(
            trial,
            weights,
            out,
            study_name=cfg.name,
            trusted=plans.trusted_models(cfg.model),
            metric=metric,
            readme=readme,
            source=source,
            batch_size=cfg.latency.batch_size,
            data=ready.datamodule,  # the package records its preprocessing or tokenizer
        )
    console.say(f"written {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    tracker = tracking.from_config(cfg.tracking, cfg.name)
    run_id = tracker.log_run(
        source,
        params={
            **{f"budget.{k}": v for k, v in budget.items()},
            "heal.epochs": heal,
            "plan": plans.summary(plan),
            "profile.key": found.key,
        },  # fmt: skip
        metrics={
            metric: quality,
            f"zero_shot_{metric}": zero_shot,
            f"test_{metric}": test_quality,
            f"dense_{metric}": dense_quality,
            "param_count": params,
            "compression": round(dense_params / params, 2),  # as a study's runs show them
            "latency_ratio": round(ratio, 3),
        },
        files=sorted(p for p in out.iterdir() if p.is_file()),
        tags={"tnsearch.role": "compress", "mlflow.note.content": readme},
    )
    if run_id is not None and cfg.tracking.enabled:
        _log_model(cfg, ready, out, run_id, trial.replace(latency_ratio=ratio), metric, console)
    console.say(_next_lines(cfg, out, getattr(tracker, "experiment_id", None)))
    return out


def _log_model(
    cfg: Config, ready, out: Path, run_id: str, trial: Record, metric: str, console
) -> None:
    """The package as an MLflow model on the compress run (registered under the study's name
    when `tracking.register`); MLflow trouble is a warning, never the command's end."""
    from tnsearch.results import mlflow_models
    from tnsearch.ui import warn

    try:
        uri = mlflow_models.log_package_model(
            out,
            tracking_uri=cfg.tracking.uri,
            run_id=run_id,
            name="compress-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in out.name),
            examples=mlflow_models.example_inputs(ready.datamodule),
            study_name=cfg.name,
            tags=mlflow_models.objective_tags(trial, metric),
            register=bool(cfg.tracking.register),
            trusted=plans.trusted_models(cfg.model),
            batch_size=int(cfg.latency.batch_size),
        )
        console.say(f"MLflow model: {uri}")
    except Exception as exc:  # noqa: BLE001 - tracking never stops a command
        warn(f"the package was not logged to MLflow as a model: {' '.join(str(exc).split())[:300]}")


def _next_lines(cfg: Config, out: Path, experiment_id: str | None) -> str:
    """Where to look next: the run in MLflow's runs view, and the package in Python."""
    import shlex

    lines = ["", "Next:"]
    if experiment_id is not None:
        lines.append(f"  mlflow ui --backend-store-uri {shlex.quote(str(cfg.tracking.uri))}")
        lines.append(
            f"    then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
            "?workflowType=machine_learning"
        )
    code = f'import tnsearch; print(tnsearch.load("{out}"))'
    lines.append(f"  python -c {shlex.quote(code)}")
    return "\n".join(lines)


def _readme(name, asked, plan, lines, heal, errors) -> str:
    layers = "\n".join(
        f"- `{n}`: {s['topology']}, order {s['order']}, modes {s['in_modes']} -> "
        f"{s['out_modes']}, rank {s['rank']} (output error {errors.get(n, float('nan')):.3f})"
        for n, s in plan["layers"].items()
    )
    healed = f"healed for {heal} epochs" if heal else "not healed (one shot)"
    return f"""# {name}, compressed to {asked}

Made by `python -m tnsearch.compress` from the study's trained dense model: the profile's
allocation, data-aware decomposition of each layer, {healed}.

{chr(10).join(lines)}

Tensorized layers (the others are dense):
{layers or "- none"}

## Use
```python
import tnsearch
model = tnsearch.load("path/to/this/folder")   # an nn.Module in eval mode
```
"""
