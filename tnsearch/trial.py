"""One trial: plan -> model -> parameters and latency -> (if feasible) training -> record.

Everything a trial measures goes to three places: the Optuna trial (values and user
attributes), its MLflow run, and its folder `${root}/${name}/trials/<number>/`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tnsearch import console, latency, liveness, tn, training
from tnsearch import plan as plans
from tnsearch.search import Setup, trial_device

#: Optuna objective value of each objective name, from a trial's record.
_VALUE = {"accuracy": "accuracy", "params": "params", "latency": "latency_ms"}


def run_trial(setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker) -> str:
    """Run one trial to its end; return "complete", "infeasible", "pruned" or "failed".

    A trial that raises is recorded as failed with its reason and the worker goes on;
    an interrupt (Ctrl-C, SystemExit) fails the trial with that reason and propagates.
    """
    with liveness.heartbeat(trial):
        return _run(setup, study, trial, tracker)


def _run(setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker) -> str:
    cfg = setup.cfg
    start = time.perf_counter()
    number = trial.number
    run_id = None
    attrs: dict[str, Any] = {}
    plan: dict[str, Any] = {"layers": {}}
    try:
        plan = plans.make(cfg["model"], setup.inputs, setup.space.suggest(trial))
        optimizer = {**cfg["trainer"]["optimizer"], **setup.space.suggest_training(trial)}
        seed = cfg["seed"] + number
        torch.manual_seed(seed)
        model = plans.build(plan, init="random")
        plan["params"] = tn.n_params(model)
        attrs.update(params=plan["params"], compression=setup.dense_params / plan["params"])
        trial.set_user_attr("plan", plan)
        folder = setup.study_dir / "trials" / str(number)
        plans.save(plan, folder / "plan.json")
        run_id = tracker.start_trial(number, plan, _run_params(cfg, plan, seed, optimizer))
        if run_id is not None:
            trial.set_user_attr("mlflow_run_id", run_id)

        device = trial_device(cfg)
        lat_cfg = cfg["latency"]
        stats = latency.measure(
            model,
            setup.datamodule.example_input(lat_cfg["batch_size"]),
            warmup=lat_cfg["warmup"],
            repeats=lat_cfg["repeats"],
            device=lat_cfg["device"] or device,
            dtype=lat_cfg["dtype"],
        )
        attrs.update(latency_ms=stats.p50, latency_p10_ms=stats.p10, latency_p90_ms=stats.p90)
        violations = _constraints(cfg["constraints"], attrs)
        for key, value in violations.items():
            trial.set_constraint(key, value)
        broken = [k for k, v in violations.items() if v > 0]
        if broken:
            # Not trained: the sampler still learns that this region is infeasible.
            attrs.update(
                trained=False,
                accuracy=0.0,
                infeasible=", ".join(f"{k} exceeded by {violations[k]:.4g}" for k in broken),
            )
            _record(trial, attrs)
            study.tell(trial, _values(cfg, attrs))
            tracker.end_trial(
                run_id,
                state="COMPLETE",
                metrics=_final_metrics(attrs),
                tags={"infeasible": attrs["infeasible"]},
            )
            console.say(
                console.trial_line(
                    number, plans.summary(plan), "infeasible", attrs, time.perf_counter() - start
                )
            )
            return "infeasible"

        torch.manual_seed(seed)
        module = training.Classifier(
            model,
            optimizer=_optimizer(optimizer),
            scheduler=cfg["trainer"].get("scheduler", "cosine"),
        )

        def on_epoch(metrics: dict[str, float]) -> None:
            tracker.log_metrics(
                run_id,
                {"train_loss": metrics["train_loss"], "val_acc": metrics["val_acc"]},
                step=int(metrics["epoch"]),
            )

        result = training.fit(
            module,
            setup.datamodule,
            epochs=cfg["epochs"],
            trainer_cfg=cfg["trainer"],
            on_epoch=on_epoch,
        )
        attrs.update(
            trained=True,
            accuracy=result.val_acc,
            test_accuracy=result.test_acc,
            history=result.history,
            seconds=time.perf_counter() - start,
        )
        torch.save(model.state_dict(), folder / "weights.pt")
        _record(trial, attrs)
        study.tell(trial, _values(cfg, attrs))
        tracker.end_trial(run_id, state="COMPLETE", metrics=_final_metrics(attrs))
        console.say(
            console.trial_line(number, plans.summary(plan), "complete", attrs, attrs["seconds"])
        )
        return "complete"
    except (KeyboardInterrupt, SystemExit) as exc:
        reason = f"interrupted ({type(exc).__name__})"
        _fail(study, trial, tracker, run_id, reason, status="KILLED")
        console.say(
            console.trial_line(
                number,
                plans.summary(plan),
                "failed",
                {"fail_reason": reason},
                time.perf_counter() - start,
            )
        )
        raise
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded and the study goes on
        reason = _reason(exc)
        _fail(study, trial, tracker, run_id, reason, trace=traceback.format_exc())
        _retry(study, trial, cfg["retries"])
        console.say(
            console.trial_line(
                number,
                plans.summary(plan),
                "failed",
                {"fail_reason": reason},
                time.perf_counter() - start,
            )
        )
        return "failed"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {' '.join(str(exc).split())[:300]}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def _fail(
    study, trial, tracker, run_id, reason: str, *, status: str = "FAILED", trace: str | None = None
) -> None:
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    tags = {"fail_reason": reason}
    if trace:
        tags["traceback"] = trace[-4000:]
    tracker.end_trial(run_id, state="FAIL" if status == "FAILED" else "KILLED", tags=tags)


def _retry(study: optuna.Study, trial: optuna.Trial, retries: int) -> None:
    """Queue the failed trial's plan again, up to `retries` times (Optuna's retry callback)."""
    if retries < 1:
        return
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    failed = next(t for t in study.get_trials(deepcopy=True) if t.number == trial.number)
    # The retry starts clean: it keeps the plan's parameters, not the failure's attributes.
    failed.user_attrs = {"retry_of": failed.number}
    RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, failed)


def _constraints(constraints: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, float]:
    """Constraint values (<= 0 means satisfied), for the limits that are set."""
    out = {}
    if constraints.get("max_params") is not None:
        out["max_params"] = float(attrs["params"] - constraints["max_params"])
    if constraints.get("max_latency_ms") is not None:
        out["max_latency_ms"] = float(attrs["latency_ms"] - constraints["max_latency_ms"])
    return out


def _values(cfg: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[float]:
    return [float(attrs[_VALUE[name]]) for name in cfg["objectives"]]


def _record(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _final_metrics(attrs: Mapping[str, Any]) -> dict[str, float]:
    keys = (
        "accuracy",
        "test_accuracy",
        "params",
        "compression",
        "latency_ms",
        "latency_p10_ms",
        "latency_p90_ms",
    )
    return {k: float(attrs[k]) for k in keys if attrs.get(k) is not None}


def _optimizer(node: Mapping[str, Any]):
    from hydra.utils import instantiate

    return instantiate(dict(node))


def _run_params(
    cfg: Mapping[str, Any], plan: Mapping[str, Any], seed: int, optimizer: Mapping[str, Any]
) -> dict[str, Any]:
    """MLflow params of a trial: the flattened plan and the training hyperparameters."""
    params = plans.flatten(plan)
    params.update(
        epochs=cfg["epochs"],
        seed=seed,
        batch_size=cfg["data"].get("batch_size"),
        data=cfg["data"]["_target_"].rsplit(".", 1)[-1],
    )
    for key, value in optimizer.items():
        if not key.startswith("_"):
            params[f"optimizer.{key}"] = value
    params["optimizer"] = optimizer["_target_"].rsplit(".", 1)[-1]
    return params
