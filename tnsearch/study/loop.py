"""One worker's loop on a study: ask and run trials until the study holds `trials`.

`work` is the ask/tell loop (with the live status line); `_Stuck` gives up when every recent
trial failed or was a repeat; `pretrain` trains the dense model once per study for warm starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import optuna
import torch
from optuna.trial import TrialState

from tnsearch import plan as plans
from tnsearch.config import Config
from tnsearch.study import liveness, optuna_internals, record, sensitivity, warmstart, workers
from tnsearch.study.record import Outcome, Record
from tnsearch.study.setup import Setup, seed_for
from tnsearch.study.trial import run_trial
from tnsearch.ui import Console, Progress, Snapshot, warn


class StudyStopped(RuntimeError):
    """The worker gave up: every recent trial failed or was infeasible."""


def work(setup: Setup, study: optuna.Study, tracker, *, show_status: bool | None = None) -> int:
    """Ask and run trials until the study holds `trials` counted trials; return how many ran.

    Args:
        show_status: draw the live status line (None: when stdout is a terminal).
    """
    target = setup.cfg.trials
    console = setup.console
    started = time.monotonic()
    timeout = setup.cfg.timeout
    ensure_pretrained(setup)
    if setup.cfg.epochs == 0 and setup.pretrained is None and not workers.is_spawned():
        warn(
            "epochs=0 on a cold study (no pretrain.epochs, model.checkpoint or pretrained "
            "model): no trial is trained, their accuracies are an untrained model's; only "
            "parameters and latency are measured"
        )
    sensitivity.narrow(setup, say=console.say)
    sensitivity.enqueue_ladder(setup, study, say=console.say)
    console.say(
        f"worker {liveness.worker_id()} joined study {study.study_name!r}: "
        f"{record.counted(study)}/{target} trials done"
    )
    ran = 0
    stuck = _Stuck(target)
    status = Progress(
        target,
        enabled=show_status,
        workers=workers.count(setup.cfg.workers) if setup.cfg.worker is None else 1,
    )
    console.status = status
    try:
        with status:
            status.update(snapshot(study, target, status.elapsed, workers=status.workers))
            while True:
                # One read of the trials before the ask (again only when a dead worker's trial
                # was reaped), one after it: another worker may have asked meanwhile.
                found = record.records(study, LIVE)
                if liveness.reap(study, tracker, retries=setup.cfg.retries, found=found):
                    found = record.records(study, LIVE)
                if sum(r.counts for r in found) >= target:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    console.say(f"timeout: {timeout} s passed, no new trial started")
                    break
                if _ahead(found, None) >= target:  # the running trials make up the rest
                    break
                trial = study.ask()
                seed = seed_for(setup.cfg, trial.number)
                # before the first suggestion: relative sampling is lazy
                if seed is not None and not optuna_internals.reseed(study.sampler, seed):
                    raise RuntimeError(f"{type(study.sampler).__name__}: no random state to seed")
                if _surplus(study, trial, target):  # another worker asked meanwhile
                    reason = "surplus: the study reached its target meanwhile (not a failure)"
                    record.write_fields(trial, fail_reason=reason, surplus=True)
                    study.tell(trial, state=TrialState.FAIL)
                    break
                outcome = run_trial(setup, study, trial, tracker)
                status.update(snapshot(study, target, status.elapsed, workers=status.workers))
                ran += 1
                stuck.check(outcome)
    finally:
        console.status = None
    return ran


def snapshot(study: optuna.Study, target: int, elapsed: float, *, workers: int = 1) -> Snapshot:
    """What the status line shows; the ETA is the mean trial time times the trials left, over
    `workers`."""
    found = record.records(study, record.COUNTED)
    counted = [r for r in found if r.counts]
    spans = [
        (r.completed - r.started).total_seconds()
        for r in found
        if r.state == TrialState.COMPLETE and r.started and r.completed
    ]
    left = max(0, target - len(counted))
    eta = sum(spans) / len(spans) * left / max(1, workers) if spans else None
    accuracies = [  # of finished trials: a pruned trial's accuracy is a partial one
        r.quality for r in counted if r.state == TrialState.COMPLETE and r.quality is not None
    ]
    return Snapshot(
        done=len(counted),
        target=target,
        elapsed=elapsed,
        eta=0.0 if left == 0 else eta,
        best_quality=max(accuracies) if accuracies else None,
        front=len(record.front(study)),
        metric=record.quality_metric(study),
    )


class _Stuck:
    """Gives up when no trial has counted for too long: every recent plan failed, or was
    infeasible, a repeat or pruned (at zero-shot or later). One bad plan fails alone; a broken
    setup fails them all."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.untrained = self.failed = 0

    def check(self, outcome: Outcome) -> None:
        untrained = outcome in (Outcome.INFEASIBLE, Outcome.DUPLICATE, Outcome.PRUNED)
        self.untrained = self.untrained + 1 if untrained else 0
        self.failed = self.failed + 1 if outcome == Outcome.FAILED else 0
        if self.untrained >= max(100, 10 * self.target):
            raise StudyStopped(
                f"{self.untrained} infeasible, repeated or pruned plans in a row: "
                "loosen constraints.* or pruning.margin, or widen the space"
            )
        if self.failed >= max(5, self.target):
            raise StudyStopped(
                f"{self.failed} failed trials in a row (see their fail_reason): "
                "something is wrong beyond one plan"
            )


def trained_setup(cfg: Config, console: Console, *, checks=None) -> Setup:
    """The checked setup of a command that works on the trained dense model (the profile,
    compress), with its weights (pretrained once if asked); `checks` (a callable of the setup)
    runs before anything is trained or written."""
    from tnsearch.study import setup

    ready = setup.prepare(cfg, console)
    if ready.pretrained is None and not cfg.pretrain.epochs:
        sensitivity.dense_model(ready)  # raises: nothing trained to compress
    sensitivity.calibration_inputs(ready)  # an empty or unreadable calibration split stops here
    if checks is not None:
        checks(ready)
    ensure_pretrained(ready)
    return ready


def ensure_pretrained(setup: Setup) -> None:
    """With `pretrain.epochs`, the study's trained dense weights (trained once per study)."""
    if setup.cfg.pretrain.epochs and setup.pretrained is None:
        setup.pretrained = warmstart.pretrained(
            setup.study_dir,
            setup.cfg.pretrain.epochs,
            lambda: pretrain(setup),
            say=setup.console.say,
            cfg=setup.cfg,
        )


def pretrain(setup: Setup) -> dict[str, torch.Tensor]:
    """Train the dense model for `pretrain.epochs` (seeded with `seed`); return its weights."""
    from hydra.utils import instantiate

    from tnsearch.measure import training

    cfg = setup.cfg
    torch.manual_seed(cfg.seed)
    plan = plans.make(cfg.model, setup.inputs, {})
    model = plans.build_dense(plan, trusted=plans.trusted_models(cfg.model))
    module = training.Classifier(
        model,
        optimizer=instantiate(dict(cfg.trainer.optimizer)),
        scheduler=cfg.trainer.scheduler,
    )
    from tnsearch.ui import Steps

    epochs = cfg.pretrain.epochs
    with Steps("pretrain", epochs, say=setup.console.say) as steps:
        result = training.fit(
            module,
            setup.datamodule,
            epochs=epochs,
            trainer_cfg=cfg.trainer,
            on_epoch=lambda m: steps.advance(note=f"val acc {m['val_quality']:.4f}"),
        )
    setup.console.say(f"pretrained dense model: val acc {result.val_quality:.4f}")
    return model.state_dict()


#: The states of the trials that count or may still count: the loop reads only these.
LIVE = (*record.COUNTED, TrialState.RUNNING)


def _ahead(found: Sequence[Record], number: int | None) -> int:
    """Trials of `found` (before trial `number`, if given) that count or may still count:
    finished and trained, or running."""
    return sum(
        1
        for r in found
        if r.state in LIVE and (number is None or r.number < number) and r.is_trained
    )


def _surplus(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    """True when earlier trials (counted or still running) already make up the target."""
    return _ahead(record.records(study, LIVE), trial.number) >= target


def running(study: optuna.Study) -> int:
    """Trials still running (on any worker)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
