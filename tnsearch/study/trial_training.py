"""A trial's training: the optimizer it heals with, and `measure.training.fit` with the callbacks
that record each epoch, log it to the trial's MLflow run and ask the pruner whether to go on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import optuna
import torch
from optuna.trial import TrialState

from tnsearch.config import Config
from tnsearch.measure import latency, precision, training
from tnsearch.plan import Plan
from tnsearch.study import pruning, record
from tnsearch.study.record import Record
from tnsearch.study.setup import Setup
from tnsearch.study.tracker import Tracker

__all__ = ["Training", "fit", "healing_optimizer"]


class Training(Protocol):
    """What a trial's training reads and writes of the trial (`trial._Trial`)."""

    setup: Setup
    study: optuna.Study
    plan: Plan
    optimizer: dict[str, Any]
    seed: int
    rec: Record
    tracker: Tracker
    run_id: Any

    def update(self, **fields: Any) -> None: ...


def fit(trial: Training, model: torch.nn.Module) -> dict[str, Any]:
    """Train `trial`'s `model` (the warm-started dense model: only evaluate it); the record
    fields it measured. Each epoch, and a warm trial's zero-shot quality before the first, is
    recorded and judged by the pruner as it comes (a pruned trial keeps what it measured)."""
    setup, cfg = trial.setup, trial.setup.cfg
    warm = setup.pretrained is not None
    epochs = 0 if warm and not trial.plan.layers else cfg.epochs
    torch.manual_seed(trial.seed)
    mode = cfg.trainer.compile
    module = setup.task(
        model if mode == "none" else latency.compiled(model, mode), _instantiate(trial.optimizer)
    )
    finished = (
        record.records(trial.study, (TrialState.COMPLETE,)) if setup.pruner is not None else []
    )

    def judge(epoch: int, quality: float) -> None:
        # Only while training is left to save: never after the last epoch.
        if setup.pruner is not None and epoch + 1 < epochs:
            reason = setup.pruner.dominator(finished, trial.rec, epoch, quality)
            if reason:
                raise optuna.TrialPruned(reason)

    def on_epoch(metrics: dict[str, float]) -> None:
        trial.update(history=(*(trial.rec.history or ()), metrics))
        trial.tracker.log_metrics(
            trial.run_id,
            # the validation quality by epoch, under the name of the final one: one figure
            {"train_loss": metrics["train_loss"], setup.metric: metrics["val_quality"]},
            step=int(metrics["epoch"]),
        )
        judge(int(metrics["epoch"]), metrics["val_quality"])

    def on_zero_shot(value: float) -> None:  # kept even when the trial is pruned here
        trial.update(zero_shot_quality=value)
        judge(pruning.ZERO_SHOT, value)

    spectra = _bond_logger(trial, model)
    with training.dense_frozen(model, warm and cfg.heal.layers == "tensorized"):
        result = training.fit(
            module,
            setup.datamodule,
            epochs=epochs,
            trainer_cfg=cfg.trainer,
            on_epoch=on_epoch,
            metric=setup.metric,
            on_zero_shot=on_zero_shot if warm and trial.plan.layers else None,
            callbacks=[spectra] if spectra is not None else [],
        )
    if spectra is not None:
        trial.tracker.log_metrics(trial.run_id, {"bonds_seconds": spectra.seconds})
    quality, test = result.val_quality, result.test_quality
    if trial.plan.precision:  # what is deployed: the int8 copy of the trained weights
        quality, test = _deployed_quality(trial, model)
    return {
        "trained": True,
        "quality": quality,
        "test_quality": test,
        "history": tuple(result.history),
    }


def _deployed_quality(trial: Training, model: torch.nn.Module) -> tuple[float, float | None]:
    """The validation and test quality of `model` as deployed: its trained weights quantized
    as the plan's precision says (post-training, on the CPU: `measure.precision.deployed`)."""
    setup = trial.setup
    module = setup.task(
        precision.deployed(model, trial.plan.precision), _instantiate(trial.optimizer)
    )
    result = training.fit(
        module,
        setup.datamodule,
        epochs=0,
        trainer_cfg=setup.cfg.trainer.but(accelerator="cpu", precision="32-true"),
        metric=setup.metric,
    )
    return result.val_quality, result.test_quality


def _bond_logger(trial: Training, model: torch.nn.Module) -> training.BondsPerEpoch | None:
    """With `tracking.bonds` (and a tensorized layer, a tracker): each epoch's bond spectrum
    summary goes to the trial's MLflow run, step = epochs trained (0: before training)."""
    if not (trial.plan.layers and trial.tracker.enabled):
        return None
    if trial.setup.cfg.tracking.bonds is False:
        return None

    def sink(step: int, metrics: dict[str, float]) -> None:
        trial.tracker.log_metrics(trial.run_id, metrics, step=step)

    return training.BondsPerEpoch(model, sink)


def _instantiate(node: Mapping[str, Any]):
    from hydra.utils import instantiate

    return instantiate(dict(node))


def healing_optimizer(cfg: Config, *, warm: bool) -> dict[str, Any]:
    """`trainer.optimizer`, its learning rate times `heal.lr_scale` when the trial heals a
    decomposed trained model (warm): fine-tuning wants a smaller step than training from
    scratch (a ResNet-20 at 0.96 zero-shot fell to 0.10 in one epoch at the SGD preset's 0.05,
    and kept 0.96 at 0.005)."""
    node = dict(cfg.trainer.optimizer)
    scale = float(cfg.heal.lr_scale)
    if warm and "lr" in node and scale != 1.0:
        node["lr"] = float(node["lr"]) * scale
    return node
