"""`python -m tnsearch.compress budget.params=0.5 [key=value ...]`: compress a study's trained
model to a budget in one shot (the profile's allocation, data-aware decomposition, optional
`heal.epochs`, the int8 weights the allocation chose), and write the same package as
`tnsearch.export`. Budgets: `budget.params`, `budget.latency`, `budget.bytes` (fractions of the
dense float32 model's).

`compress` allocates the budget over the profile (`tnsearch.profile`), builds the model by
data-aware decomposition, optionally heals it, measures it against the dense model and writes
the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tnsearch.cli import command, resolve
from tnsearch.config import Config, ConfigError
from tnsearch.ui import Console

if TYPE_CHECKING:  # the command's first line comes before PyTorch is imported
    from tnsearch.study.record import Record

__all__ = ["compress", "main", "out_folder"]


@command("config", loading="PyTorch, Lightning, Optuna and MLflow")
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.compress`."""
    compress(resolve(cfg))


def out_folder(cfg: Config, budget: Mapping[str, float | None]) -> Path:
    if cfg.compress.out:
        return Path(cfg.compress.out)
    name = "_".join(f"{k}-{v:g}" for k, v in budget.items() if v is not None)
    return cfg.study_dir / "compress" / name


def compress(cfg: Config, console: Console | None = None) -> Path:
    """Compress the study's trained model to `budget.*`; return the package folder."""
    import tempfile

    import torch

    from tnsearch import plan as plans
    from tnsearch import tn
    from tnsearch.measure import latency, precision, training
    from tnsearch.results.export import write_package
    from tnsearch.study import sensitivity, tracking
    from tnsearch.study.record import Record

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
        """A budget no plan of the space meets stops the command before it trains anything."""
        if budget["params"] is None and budget["bytes"] is None:
            return
        least = sensitivity.smallest(ready)
        for key, widen in (("params", ""), ("bytes", ", space.precisions")):
            if budget[key] is not None and least[key] > budget[key] + 1e-12:
                raise ConfigError(
                    f"budget.{key}",
                    f"no plan meets {budget[key]:g}; the smallest reachable is "
                    f"{least[key]:.4g} (widen space.ranks, space.orders{widen} or space.layers "
                    "to go further)",
                )

    from tnsearch.study import loop

    ready = loop.trained_setup(cfg, console, checks=reachable)
    cfg = ready.cfg  # its compile modes resolved
    found, path = sensitivity.profile(ready, say=console.say)
    chosen = sensitivity.budget_plan(ready, found, **budget)
    asked = ", ".join(f"budget.{k}={v:g}" for k, v in budget.items() if v is not None)
    console.say(
        f"allocation for {asked}: "
        f"{plans.summary({'layers': chosen.layers, 'precision': chosen.precision})}; predicted "
        f"params {chosen.params_fraction:.3f}, bytes {chosen.bytes_fraction:.3f}, latency "
        f"{chosen.latency_fraction:.3f} of dense, {found.metric} loss {chosen.loss:.4f}"
    )
    model, errors = sensitivity.build(ready, chosen.layers, say=console.say)
    dense = sensitivity.dense_model(ready)
    full = sensitivity.evaluator(ready, dense, examples=None)
    dense_quality = full()
    zero_shot = sensitivity.evaluator(ready, precision.deployed(model, chosen.precision),
                                      examples=None)()  # fmt: skip
    quality = zero_shot
    test = sensitivity.evaluator(ready, dense, examples=None, split="test")
    if heal:
        from hydra.utils import instantiate

        console.say(f"healing for {heal} epochs")
        from tnsearch.study.trial_training import healing_optimizer

        module = ready.task(model, instantiate(healing_optimizer(cfg, warm=True)))
        with training.dense_frozen(model, cfg.heal.layers == "tensorized"):
            result = training.fit(
                module, ready.datamodule, epochs=heal, trainer_cfg=cfg.trainer,
                metric=ready.metric,
            )  # fmt: skip
        model = model.cpu().eval()
        quality = result.val_quality
        if chosen.precision:  # what is deployed: the healed weights in int8
            quality = sensitivity.evaluator(
                ready, precision.deployed(model, chosen.precision), examples=None
            )()
    deployed = precision.deployed(model, chosen.precision)
    dense_test = test()
    test_quality = sensitivity.evaluator(ready, deployed, examples=None, split="test")()
    timing = ready.timing  # as a trial's objective is measured
    example = latency.example_batch(ready.datamodule, timing.batch_size)
    timed = latency.paired(deployed, dense, example, timing)
    model, dense = model.cpu(), dense.cpu()  # timed where trials are; written from the CPU
    ratio, dense_s = timed.ratio, timed.reference_ms / 1e3
    params, dense_params = tn.n_params(model), tn.n_params(dense)
    size = precision.size_bytes(model, chosen.precision)
    dense_size = precision.size_bytes(dense, {})
    plan = plans.make(cfg.model, ready.inputs, chosen.layers, chosen.precision).but(params=params)
    metric = ready.metric
    rows = [
        (f"{metric} (validation)", f"{dense_quality:.4f}", f"{quality:.4f}",
         f"{quality - dense_quality:+.4f}"),
        (f"{metric} zero-shot", "", f"{zero_shot:.4f}", ""),
        (f"{metric} (test)", f"{dense_test:.4f}", f"{test_quality:.4f}",
         f"{test_quality - dense_test:+.4f}"),
        ("parameters", f"{dense_params:,}", f"{params:,}", f"{params / dense_params:.3f}x"),
        ("weights (bytes)", f"{dense_size:,}", f"{size:,}", f"{size / dense_size:.3f}x"),
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
        size_bytes=size,
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
            "size_bytes": size,
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
    from tnsearch import plan as plans
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
    quantized = sorted(plan.precision)
    layers = "\n".join(
        f"- `{n}`: {s['topology']}, order {s['order']}, modes {s['in_modes']} -> "
        f"{s['out_modes']}, rank {s['rank']} (output error {errors.get(n, float('nan')):.3f})"
        for n, s in plan.layers.items()
    )
    healed = f"healed for {heal} epochs" if heal else "not healed (one shot)"
    return f"""# {name}, compressed to {asked}

Made by `python -m tnsearch.compress` from the study's trained dense model: the profile's
allocation, data-aware decomposition of each layer, {healed}.

{chr(10).join(lines)}

Tensorized layers (the others are dense):
{layers or "- none"}

Layers whose weights are int8 (the others are float32): {", ".join(quantized) or "none"}

## Use
```python
import tnsearch
model = tnsearch.load("path/to/this/folder")   # an nn.Module in eval mode
```
"""


if __name__ == "__main__":
    main()
