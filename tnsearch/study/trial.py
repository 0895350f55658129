"""One trial: plan -> model -> parameters and latency -> (if feasible) training -> record.

Everything a trial measures goes to three places: the Optuna trial (values and user
attributes), its MLflow run, and its folder `${root}/${name}/trials/<number>/`.
"""

from __future__ import annotations

import errno
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tnsearch import interrupts, tn
from tnsearch import plan as plans
from tnsearch.budget import calibration
from tnsearch.files import atomic_path
from tnsearch.interrupts import Interrupted
from tnsearch.measure import latency, training
from tnsearch.measure.trial_latency import trial_latency
from tnsearch.study import budgets, duplicates, liveness, pruning, record
from tnsearch.study.record import Outcome, Record
from tnsearch.study.setup import Setup
from tnsearch.ui.console import trial_line
from tnsearch.ui.names import rounded, shown

#: The constraint a repeated plan's trial violates: it holds no trained model of its own.
UNTRAINED = "untrained"


def run_trial(setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker) -> Outcome:
    """Run one trial to its end; return how it ended.

    A trial that raises is recorded as failed with its reason and the worker goes on;
    an interrupt (Ctrl-C, SystemExit) fails the trial with that reason and propagates.
    """
    with liveness.heartbeat(trial):
        return _Trial(setup, study, trial, tracker).run()


class _Trial:
    """The steps of one trial, sharing its state."""

    def __init__(self, setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker) -> None:
        self.setup, self.cfg = setup, setup.cfg
        self.study, self.trial, self.tracker = study, trial, tracker
        self.start = time.perf_counter()
        self.run_id = None
        self.told = False  # Optuna knows how the trial ended
        self.ended: Outcome | None = None
        self.rec = Record(number=trial.number)  # what this trial has measured so far
        self.plan: dict[str, Any] = {"layers": {}}

    def update(self, **fields: Any) -> None:
        self.rec = self.rec.replace(**fields)

    def run(self) -> Outcome:
        try:
            self.propose()
            proposed = self.rec.replace(plan=self.plan, training_choices=self.training_choices)
            earlier = duplicates.find(self.study, proposed, self.setup.console, self.tracker)
            if earlier is not None:
                return self.duplicate(earlier)
            model = self.build()
            self.measure(model)
            if self.infeasible():
                return Outcome.INFEASIBLE
            self.train(model)
            return Outcome.COMPLETE
        except optuna.TrialPruned as exc:
            # Pruned at the zero-shot rung, before its first epoch, a trial was not trained
            # (and does not count towards `trials`); after an epoch, it was.
            self.update(
                trained=bool(self.rec.history),
                prune_reason=str(exc),
                seconds=time.perf_counter() - self.start,
            )
            self.end(Outcome.PRUNED, state=TrialState.PRUNED, tags={"prune_reason": str(exc)})
            return Outcome.PRUNED
        except Interrupted as exc:
            self.fail(f"interrupted ({exc.name})", killed=True)
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            self.fail(f"interrupted ({type(exc).__name__})", killed=True)
            raise
        except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the study goes on
            if self.told:  # it was recorded and told; what failed came after
                return self.ended
            self.fail(_reason(exc), trace=traceback.format_exc())
            liveness.retry(self.study, self.trial.number, self.cfg["retries"])
            return Outcome.FAILED

    # -- steps ------------------------------------------------------------------------------
    def propose(self) -> None:
        """Ask the sampler for this trial's plan (and training choices)."""
        setup, trial = self.setup, self.trial
        self.plan = plans.make(self.cfg["model"], setup.inputs, setup.space.suggest(trial))
        self.training_choices = setup.space.suggest_training(trial)
        self.optimizer = healing_optimizer(self.cfg, warm=setup.pretrained is not None)
        self.optimizer.update(self.training_choices)  # a searched lr is used as chosen

    def duplicate(self, earlier: Record) -> Outcome:
        """Tell the earlier trial's values again instead of training the same plan twice.

        Its one constraint, `untrained`, is violated, so that Optuna and optuna-dashboard never
        offer this copy as a best trial (its model was not trained: the earlier one's was)."""
        self.trial.set_constraint(UNTRAINED, 1.0)
        self.update(**duplicates.copied(earlier))
        self.end(Outcome.DUPLICATE, values=list(earlier.values))
        return Outcome.DUPLICATE

    def build(self) -> torch.nn.Module:
        """Build the planned model (from the trained dense weights when warm)."""
        setup, trial = self.setup, self.trial
        record.write_fields(trial, training_choices=self.training_choices)
        self.seed = self.cfg["seed"] + trial.number
        torch.manual_seed(self.seed)
        model = plans.build_dense(self.plan, trusted=plans.trusted_models(self.cfg))
        if setup.pretrained is not None:
            model.load_state_dict(setup.pretrained)
        warm = setup.pretrained is not None
        if warm and self.cfg["decompose"]["calibration"] and self.plan["layers"]:
            inputs, stats = budgets.calibrated(setup)  # measured once per worker
            steps = self.cfg["decompose"]["steps"]
            calibration.tensorize(model, self.plan["layers"], stats, steps=steps)
            if self.cfg["decompose"]["batchnorm"]:
                calibration.reestimate_batchnorm(model, inputs)
        else:
            plans.tensorize(model, self.plan, init="decompose" if warm else "random")
        self.plan["params"] = tn.n_params(model)
        self.update(
            plan=self.plan,
            training_choices=self.training_choices,
            params=self.plan["params"],
            compression=setup.dense_params / self.plan["params"],
        )
        record.write_fields(trial, plan=self.plan)
        self.folder = setup.study_dir / "trials" / str(trial.number)
        plans.save(self.plan, self.folder / "plan.json")
        # The run is made on the tracker's thread, which stores its id with the trial (liveness
        # closes a dead worker's run by it); self.rec never holds it, so the record written at
        # the end leaves it be.
        self.run_id = self.tracker.start_trial(
            trial.number,
            self.plan,
            _run_params(
                self.cfg,
                self.plan,
                self.seed,
                self.optimizer,
                [layer.name for layer in setup.space.layers],
            ),
            on_run_id=lambda run_id: record.write_fields(trial, mlflow_run_id=run_id),
        )
        return model

    def measure(self, model: torch.nn.Module) -> None:
        """Time the model beside the dense reference, as the study's `latency.Timing` says."""
        stats = trial_latency(
            model,
            self.setup.datamodule,
            self.setup.timing,
            tensorized=bool(self.plan["layers"]),
            reference=self.setup.latency_reference,
            reference_onnx=self.setup.latency_reference_onnx,
            train_compile=self.cfg["trainer"]["compile"],
        )
        self.update(**stats.fields())

    def infeasible(self) -> bool:
        """Record the constraints; an infeasible trial is told at once and not trained."""
        violations = _constraints(self.cfg["constraints"], self.rec)
        for key, value in violations.items():
            self.trial.set_constraint(key, value)
        broken = [k for k, v in violations.items() if v > 0]
        if not broken:
            return False
        # Not trained: the sampler still learns that this region is infeasible.
        self.update(
            trained=False,
            quality=0.0,
            infeasible=", ".join(f"{k} exceeded by {violations[k]:.4g}" for k in broken),
        )
        self.end(
            Outcome.INFEASIBLE,
            values=self.rec.values_for(self.cfg["objectives"]),
            tags={"infeasible": self.rec.infeasible},
        )
        return True

    def train(self, model: torch.nn.Module) -> None:
        """Train (or, for the warm-started dense model, only evaluate), then record."""
        cfg, setup = self.cfg, self.setup
        warm = setup.pretrained is not None
        epochs = 0 if warm and not self.plan["layers"] else cfg["epochs"]
        torch.manual_seed(self.seed)
        mode = cfg["trainer"]["compile"]
        module = setup.task(
            model if mode == "none" else latency.compiled(model, mode), _instantiate(self.optimizer)
        )
        finished = (
            record.records(self.study, (TrialState.COMPLETE,)) if setup.pruner is not None else []
        )

        def judge(epoch: int, quality: float) -> None:
            # Only while training is left to save: never after the last epoch.
            if setup.pruner is not None and epoch + 1 < epochs:
                reason = setup.pruner.dominator(finished, self.rec, epoch, quality)
                if reason:
                    raise optuna.TrialPruned(reason)

        def on_epoch(metrics: dict[str, float]) -> None:
            self.update(history=(*(self.rec.history or ()), metrics))
            self.tracker.log_metrics(
                self.run_id,
                # the validation quality by epoch, under the name of the final one: one figure
                {"train_loss": metrics["train_loss"], setup.metric: metrics["val_acc"]},
                step=int(metrics["epoch"]),
            )
            judge(int(metrics["epoch"]), metrics["val_acc"])

        def on_zero_shot(value: float) -> None:  # kept even when the trial is pruned here
            self.update(zero_shot_quality=value)
            judge(pruning.ZERO_SHOT, value)

        spectra = self.bond_logger(model)
        result = training.fit(
            module,
            setup.datamodule,
            epochs=epochs,
            trainer_cfg=cfg["trainer"],
            on_epoch=on_epoch,
            metric=setup.metric,
            on_zero_shot=on_zero_shot if warm and self.plan["layers"] else None,
            callbacks=[spectra] if spectra is not None else [],
        )
        if spectra is not None:
            self.tracker.log_metrics(self.run_id, {"bonds_seconds": spectra.seconds})
        self.update(
            trained=True,
            quality=result.val_acc,
            test_quality=result.test_acc,
            history=tuple(result.history),
            seconds=time.perf_counter() - self.start,
        )
        with atomic_path(self.folder / "weights.pt") as tmp:  # never half a file
            torch.save(model.state_dict(), tmp)
        self.end(Outcome.COMPLETE, values=self.rec.values_for(cfg["objectives"]))

    def bond_logger(self, model: torch.nn.Module) -> training.BondsPerEpoch | None:
        """With `tracking.bonds` (and a tensorized layer, a tracker): each epoch's bond spectrum
        summary goes to the trial's MLflow run, step = epochs trained (0: before training)."""
        if not (self.plan["layers"] and self.tracker.enabled):
            return None
        if (self.cfg.get("tracking") or {}).get("bonds") is False:
            return None

        def sink(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(self.run_id, metrics, step=step)

        return training.BondsPerEpoch(model, sink)

    # -- endings ----------------------------------------------------------------------------
    def end(
        self,
        outcome: Outcome,
        *,
        values: list[float] | None = None,
        state: TrialState = TrialState.COMPLETE,
        tags: dict[str, Any] | None = None,
        mlflow_state: str | None = None,
    ) -> None:
        """Record the trial, tell Optuna, close its MLflow run, say it: the one way a trial ends.

        A signal in the middle waits until the trial is told (`interrupts.deferred`), so a trial
        is never left half-recorded nor told twice."""
        with interrupts.deferred():
            if outcome == Outcome.FAILED:
                record.write_fields(self.trial, fail_reason=self.rec.fail_reason)
            else:
                record.write(self.trial, self.rec)
            self.study.tell(self.trial, values, state=state)
            self.told, self.ended = True, outcome
        metrics = {} if outcome == Outcome.FAILED else _final_metrics(self.rec, self.setup.metric)
        state_name = mlflow_state or ("PRUNED" if state == TrialState.PRUNED else state.name)
        if self.run_id is not None:
            tags = {**_latency_tags(self.rec), **(tags or {})}
            self.tracker.end_trial(self.run_id, state=state_name, metrics=metrics, tags=tags)
        self.say(outcome)

    def fail(self, reason: str, *, killed: bool = False, trace: str | None = None) -> None:
        if self.told:  # it ended before the error (e.g. in MLflow after the tell)
            return
        self.update(fail_reason=reason)
        tags = {"fail_reason": reason}
        if trace:
            tags["traceback"] = trace[-4000:]
        self.end(
            Outcome.FAILED,
            state=TrialState.FAIL,
            tags=tags,
            mlflow_state="KILLED" if killed else "FAIL",
        )

    def say(self, outcome: Outcome) -> None:
        self.setup.console.say(
            trial_line(
                self.rec,
                plans.summary(self.plan),
                outcome.value,
                time.perf_counter() - self.start,
                metric=self.setup.metric,
            )
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {' '.join(str(exc).split())[:300]}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on {exc.filename or 'the device'}"
    if "unexpected pos" in str(exc) or "file write failed" in str(exc):  # torch.save, disk full
        return f"no space left on the device (writing failed: {' '.join(str(exc).split())[:200]})"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write {exc.filename or ''}: {exc.strerror}".strip()
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def _constraints(constraints: Mapping[str, Any], rec: Record) -> dict[str, float]:
    """Constraint values (<= 0 means satisfied), for the limits that are set."""
    out = {}
    if constraints.get("max_params") is not None:
        out["max_params"] = float(rec.params - constraints["max_params"])
    if constraints.get("max_latency") is not None:  # a ratio to the dense model's latency
        out["max_latency"] = float(rec.latency_ratio - constraints["max_latency"])
    if constraints.get("max_latency_ms") is not None:
        out["max_latency_ms"] = float(rec.latency_ms - constraints["max_latency_ms"])
    return out


#: The record fields a trial's run ends with as metrics.
_FIGURES = (
    "quality",
    "test_quality",
    "zero_shot_quality",
    "params",
    "compression",
    *(name for name in latency.FIELDS if name not in latency.TAG_FIELDS),
)


def _final_metrics(rec: Record, metric: str) -> dict[str, float]:
    """A trial's final MLflow metrics, the quality under the task's name `metric` (e.g.
    `accuracy`, `test_accuracy`, `zero_shot_accuracy`)."""
    found = {shown(field, metric): getattr(rec, field) for field in _FIGURES}
    return {name: rounded(name, value) for name, value in found.items() if value is not None}


def _latency_tags(rec: Record) -> dict[str, str]:
    """MLflow tags of a trial's latency measurement: the device's name, and whether it was
    noisy (ratios are compared within one device only)."""
    values = {name: getattr(rec, name) for name in latency.TAG_FIELDS}
    return {
        name: str(bool(value)).lower() if name == "latency_noisy" else str(value)
        for name, value in values.items()
        if value is not None
    }


def _instantiate(node: Mapping[str, Any]):
    from hydra.utils import instantiate

    return instantiate(dict(node))


def _run_params(
    cfg: Mapping[str, Any],
    plan: Mapping[str, Any],
    seed: int,
    optimizer: Mapping[str, Any],
    searched: Sequence[str] = (),
) -> dict[str, Any]:
    """MLflow params of a trial: the flattened plan (the `searched` layers it keeps dense as
    `topology=dense`) and the training hyperparameters."""
    params = plans.flatten(plan, dense=searched)
    params.update(
        epochs=cfg["epochs"],
        seed=seed,
        batch_size=cfg["data"].get("batch_size"),
        data=cfg["data"]["_target_"].rsplit(".", 1)[-1],
        compile=cfg["trainer"]["compile"],
        latency_compile=cfg["latency"]["compile"],
        latency_dtype=cfg["latency"]["dtype"],
        warm_start=cfg["model"].get("checkpoint")
        or (
            f"pretrain {cfg['pretrain']['epochs']} epochs" if cfg["pretrain"]["epochs"] else "none"
        ),
    )
    for key, value in optimizer.items():
        if not key.startswith("_"):
            params[f"optimizer.{key}"] = value
    params["optimizer"] = optimizer["_target_"].rsplit(".", 1)[-1]
    return params


def healing_optimizer(cfg: Mapping[str, Any], *, warm: bool) -> dict[str, Any]:
    """`trainer.optimizer`, its learning rate times `heal.lr_scale` when the trial heals a
    decomposed trained model (warm): fine-tuning wants a smaller step than training from
    scratch (a ResNet-20 at 0.96 zero-shot fell to 0.10 in one epoch at the SGD preset's 0.05,
    and kept 0.96 at 0.005)."""
    node = dict(cfg["trainer"]["optimizer"])
    scale = float((cfg.get("heal") or {}).get("lr_scale", 1.0))
    if warm and "lr" in node and scale != 1.0:
        node["lr"] = float(node["lr"]) * scale
    return node
