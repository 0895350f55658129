"""One trial: plan -> model -> parameters and latency -> (if feasible) training -> record.

Everything a trial measures goes to three places: the Optuna trial (values and user
attributes), its MLflow run, and its folder `${root}/${name}/trials/<number>/`. The steps run
here, in order; what each step does at length lives beside it: `duplicates` (a repeated plan),
`measure.trial_latency` (the latency objective), `trial_training` (training), `trial_mlflow`
(the run's params, metrics and tags) and `ui.console.trial_line` (the console's line).
"""

from __future__ import annotations

import errno
import time
import traceback
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tnsearch import interrupts, objectives, tn
from tnsearch import plan as plans
from tnsearch.budget import calibration
from tnsearch.config import ConstraintsConfig
from tnsearch.files import atomic_path
from tnsearch.interrupts import Interrupted
from tnsearch.measure import latency
from tnsearch.measure.measured import measured
from tnsearch.measure.precision import size_bytes
from tnsearch.measure.trial_latency import trial_latency
from tnsearch.study import duplicates, liveness, record, sensitivity, trial_mlflow, trial_training
from tnsearch.study.record import Outcome, Record
from tnsearch.study.setup import Setup
from tnsearch.study.tracker import Tracker
from tnsearch.ui.console import trial_line

__all__ = ["UNTRAINED", "run_trial"]

#: The constraint a repeated plan's trial violates: it holds no trained model of its own.
UNTRAINED = "untrained"
#: What ends a trial as interrupted (its run KILLED) and goes on up: Ctrl-C, SIGTERM, exit.
_INTERRUPTS = (Interrupted, KeyboardInterrupt, SystemExit)
#: The Optuna state of each way a trial ends (the others: COMPLETE).
_STATES = {Outcome.PRUNED: TrialState.PRUNED, Outcome.FAILED: TrialState.FAIL}


def run_trial(setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker: Tracker) -> Outcome:
    """Run one trial to its end; return how it ended.

    A trial that raises is recorded as failed with its reason and the worker goes on;
    an interrupt (Ctrl-C, SystemExit) fails the trial with that reason and propagates.
    """
    with liveness.heartbeat(trial):
        return _Trial(setup, study, trial, tracker).run()


class _Trial:
    """The steps of one trial, in order, sharing its state."""

    def __init__(self, setup: Setup, study: optuna.Study, trial: optuna.Trial, tracker: Tracker):
        self.setup, self.cfg = setup, setup.cfg
        self.study, self.trial, self.tracker = study, trial, tracker
        self.start = time.perf_counter()
        self.run_id: Any = None  # the trial's MLflow run, once made
        self.told = False  # Optuna knows how the trial ended
        self.ended: Outcome | None = None
        self.rec = Record(number=trial.number)  # what this trial has measured so far
        self.plan = plans.Plan()
        self.training_choices: dict[str, Any] = {}
        self.optimizer: dict[str, Any] = {}  # trainer.optimizer as this trial uses it
        self.seed = self.cfg.seed + trial.number
        self.folder = setup.study_dir / "trials" / str(trial.number)

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
            # at the zero-shot rung, before an epoch: not trained (nor counted in `trials`)
            seconds = time.perf_counter() - self.start
            self.update(trained=bool(self.rec.history), prune_reason=str(exc), seconds=seconds)
            self.end(Outcome.PRUNED, prune_reason=str(exc))
            return Outcome.PRUNED
        except _INTERRUPTS as exc:
            self.fail(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the study goes on
            if self.told:  # it was recorded and told; what failed came after
                return self.ended
            self.fail(exc)
            liveness.retry(self.study, self.trial.number, self.cfg.retries)
            return Outcome.FAILED

    def propose(self) -> None:
        """Ask the sampler for this trial's plan (and training choices)."""
        setup, trial = self.setup, self.trial
        layers, precision = setup.space.suggest(trial), setup.space.suggest_precision(trial)
        self.plan = plans.make(self.cfg.model, setup.inputs, layers, precision)
        self.training_choices = setup.space.suggest_training(trial)
        warm = setup.pretrained is not None
        self.optimizer = trial_training.healing_optimizer(self.cfg, warm=warm)
        self.optimizer.update(self.training_choices)  # a searched lr is used as chosen

    def duplicate(self, earlier: Record) -> Outcome:
        """Tell the earlier trial's values again instead of training the same plan twice, with
        the one constraint `untrained` violated: Optuna and optuna-dashboard never offer this
        copy as a best trial (its model was not trained: the earlier one's was)."""
        self.trial.set_constraint(UNTRAINED, 1.0)
        self.update(**duplicates.copied(earlier))
        self.end(Outcome.DUPLICATE, list(earlier.values))
        return Outcome.DUPLICATE

    def build(self) -> torch.nn.Module:
        """Build the planned model, record its size, and make the trial's MLflow run."""
        setup, trial = self.setup, self.trial
        record.write_fields(trial, training_choices=self.training_choices)
        torch.manual_seed(self.seed)
        model = _model(setup, self.plan)
        params = tn.n_params(model)
        self.plan = self.plan.but(params=params)
        self.update(plan=self.plan, params=params, compression=setup.dense_params / params)
        self.update(training_choices=self.training_choices)
        record.write_fields(trial, plan=self.plan)
        plans.save(self.plan, self.folder / "plan.json")
        searched = [layer.name for layer in setup.space.layers]
        mlflow = trial_mlflow.run_params(self.cfg, self.plan, self.seed, self.optimizer, searched)
        self.run_id = trial_mlflow.start_run(self.tracker, trial, self.plan, mlflow)
        return model

    def measure(self, model: torch.nn.Module) -> None:
        """Time the deployed model beside the dense one, count its bytes, measure the rest."""
        stats = trial_latency(
            model,
            self.setup.datamodule,
            self.setup.timing,
            plan=self.plan,
            reference=self.setup.latency_reference,
            reference_onnx=self.setup.latency_reference_onnx,
            train_compile=self.cfg.trainer.compile,
        )
        self.update(**stats.fields(), size_bytes=size_bytes(model, self.plan.precision))
        if found := objectives.measured(self.cfg.objectives):
            example = latency.example_batch(self.setup.datamodule, self.setup.timing.batch_size)
            self.update(measures=measured(model, example, found))

    def infeasible(self) -> bool:
        """Record the constraints; an infeasible trial is told at once and not trained (the
        sampler still learns that this region is infeasible)."""
        violations = _constraints(self.cfg.constraints, self.rec)
        for key, value in violations.items():
            self.trial.set_constraint(key, value)
        broken = ", ".join(f"{k} exceeded by {v:.4g}" for k, v in violations.items() if v > 0)
        if not broken:
            return False
        self.update(trained=False, quality=0.0, infeasible=broken)
        self.end(Outcome.INFEASIBLE, self.rec.values_for(self.cfg.objectives), infeasible=broken)
        return True

    def train(self, model: torch.nn.Module) -> None:
        """Train (or, for the warm-started dense model, only evaluate), then record."""
        self.update(**trial_training.fit(self, model), seconds=time.perf_counter() - self.start)
        with atomic_path(self.folder / "weights.pt") as tmp:  # never half a file
            torch.save(model.state_dict(), tmp)
        self.end(Outcome.COMPLETE, self.rec.values_for(self.cfg.objectives))

    def end(
        self, outcome: Outcome, values: list[float] | None = None, killed: bool = False, **tags: str
    ) -> None:
        """Record, tell Optuna (a signal waits: never half-recorded nor told twice), close the
        MLflow run (with `tags`; KILLED when `killed`), say it: the one way a trial ends."""
        state = _STATES.get(outcome, TrialState.COMPLETE)
        with interrupts.deferred():
            if outcome == Outcome.FAILED:
                record.write_fields(self.trial, fail_reason=self.rec.fail_reason)
            else:
                record.write(self.trial, self.rec)
            self.study.tell(self.trial, values, state=state)
            self.told, self.ended = True, outcome
        mlflow = "KILLED" if killed else state.name
        trial_mlflow.end_run(self.tracker, self.run_id, mlflow, self.rec, self.setup.metric, tags)
        seconds, summary = time.perf_counter() - self.start, plans.summary(self.plan)
        line = trial_line(self.rec, summary, outcome.value, seconds, metric=self.setup.metric)
        self.setup.console.say(line)

    def fail(self, exc: BaseException) -> None:
        """End the trial as failed by `exc` (an interrupt's run KILLED, an error's traceback
        with its run), unless it ended before (e.g. in MLflow after the tell)."""
        if self.told:
            return
        killed = isinstance(exc, _INTERRUPTS)
        self.update(fail_reason=_reason(exc))
        trace = {} if killed else {"traceback": traceback.format_exc()[-4000:]}
        self.end(Outcome.FAILED, killed=killed, fail_reason=self.rec.fail_reason, **trace)


def _model(setup: Setup, plan: plans.Plan) -> torch.nn.Module:
    """The planned model: the dense one (with the trained weights when warm), its planned
    layers tensorized (decomposed from those weights when warm, with `decompose.calibration`
    from calibration statistics)."""
    cfg = setup.cfg
    model = plans.build_dense(plan, trusted=plans.trusted_models(cfg.model))
    if setup.pretrained is not None:
        model.load_state_dict(setup.pretrained)
    warm = setup.pretrained is not None
    if warm and cfg.decompose.calibration and plan.layers:
        inputs, stats = sensitivity.calibrated(setup)  # measured once per worker
        steps = cfg.decompose.steps
        calibration.tensorize(model, plan.layers, stats, steps=steps)
        if cfg.decompose.batchnorm:
            calibration.reestimate_batchnorm(model, inputs)
    else:
        plans.tensorize(model, plan, init="decompose" if warm else "random")
    return model


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _INTERRUPTS):
        return f"interrupted ({exc.name if isinstance(exc, Interrupted) else type(exc).__name__})"
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


def _constraints(constraints: ConstraintsConfig, rec: Record) -> dict[str, float]:
    """Constraint values (<= 0 means satisfied), for the limits that are set."""
    values = {  # max_latency: a ratio to the dense model's latency
        "max_params": rec.params,
        "max_latency": rec.latency_ratio,
        "max_latency_ms": rec.latency_ms,
        "max_bytes": rec.size_bytes,
    }
    return {key: float(values[key] - limit) for key, limit in constraints.limits().items()}
