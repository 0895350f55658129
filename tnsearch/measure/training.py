"""Training of one trial's model with Lightning: a classifier module and the fit/evaluate steps."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from tnsearch import bonds, tn
from tnsearch.config import TrainerConfig

#: Epoch metrics handed to the epoch callback: {"epoch", "train_loss", "val_quality"} (floats).
EpochSink = Callable[[dict[str, float]], None]
#: Bond metrics handed to the bond callback: (epochs trained, {"bonds/<layer>/entropy_<k>": ...}).
BondSink = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial fails with this reason."""


def quiet_lightning() -> None:
    """Silence Lightning's messages that tell a user of tnsearch nothing."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # a teacher
    warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")


def logits(output: Any, key: str = "logits") -> torch.Tensor:
    """The logits in a model's output: a tensor as it is, a dict's or ModelOutput's `key`
    ("logits" unless the task names another: `task.output`), or a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and key in output:  # also transformers' ModelOutput
        return output[key]
    if isinstance(output, tuple | list) and output:
        return output[0]
    raise TypeError(
        f"model: its output ({type(output).__name__}) holds no {key!r}: return a tensor, a tuple "
        f"whose first element is the logits, or a dict / ModelOutput with {key!r} "
        "(task.output names the key)"
    )


class Classifier(pl.LightningModule):
    """Cross-entropy training of any image classifier, with accuracy on val and test.

    Args:
        model: maps (B, C, H, W) images to (B, classes) logits.
        optimizer: a partial optimizer (Hydra `_partial_: true`), called with the parameters.
        scheduler: "cosine" (per step, down to zero over the whole run) or "none".
        nan_check_every: steps between checks that the loss is finite (each check syncs CUDA).
        output: the key of the logits in a dict / ModelOutput output (`task.output`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: str = "cosine",
        nan_check_every: int = 20,
        output: str = "logits",
    ) -> None:
        super().__init__()
        self._output = output
        self.model = model
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._nan_check_every = nan_check_every
        self._correct = 0
        self._seen = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.model(x), self._output)

    #: The name of the quality `val_quality` / `test_quality` hold (a subclass may measure another).
    metric = "accuracy"

    def loss(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (cross-entropy here)."""
        x, y = batch
        return F.cross_entropy(self(x), y)

    def score(self, batch: Any) -> tuple[float, int]:
        """(sum of the quality over the batch's examples, number of examples): correct ones."""
        x, y = batch
        return float((self(x).argmax(dim=1) == y).sum()), int(y.numel())

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        loss = self.loss(batch)
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_steps += 1
        if index % self._nan_check_every == 0 and not math.isfinite(detached.item()):
            raise NonFiniteLossError(
                f"training loss became {detached.item()} at epoch {self.current_epoch}, "
                f"step {index}"
            )
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_steps = None, 0

    def epoch_train_loss(self) -> float:
        """The mean training loss of the epoch so far (NaN before its first step).

        Callbacks read it in their `on_train_epoch_end`, which Lightning calls before the
        module's own: a value the module set there would be one epoch late."""
        if self._loss_sum is None:
            return float("nan")
        mean = self._loss_sum.item() / self._loss_steps
        if not math.isfinite(mean):
            raise NonFiniteLossError(f"training loss became {mean} in epoch {self.current_epoch}")
        return mean

    def on_train_epoch_end(self) -> None:
        self.train_loss = self.epoch_train_loss()

    def _count(self, batch: Any) -> None:
        total, seen = self.score(batch)
        self._correct += total
        self._seen += seen

    def on_validation_epoch_start(self) -> None:
        self._correct, self._seen = 0, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        self._count(batch)

    def on_validation_epoch_end(self) -> None:
        self.val_quality = self._correct / max(self._seen, 1)

    def on_test_epoch_start(self) -> None:
        self._correct, self._seen = 0, 0

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        self._count(batch)

    def on_test_epoch_end(self) -> None:
        self.test_quality = self._correct / max(self._seen, 1)

    def trained_parameters(self):
        """The parameters the optimizer updates (all of them here)."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        optimizer = self._optimizer(self.trained_parameters())
        if self._scheduler == "none":
            return optimizer
        if self._scheduler != "cosine":
            raise ValueError(f"trainer.scheduler: unknown {self._scheduler!r} (cosine, none)")
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class MetricNotLoggedError(ValueError):
    """A user's LightningModule did not log the metric the study optimizes."""


def val_quality(module: pl.LightningModule, trainer: pl.Trainer, metric: str) -> float:
    """The validation quality: a tnsearch task's own figure, or the metric a user's module
    logged (`self.log(metric, ...)`)."""
    if isinstance(module, Classifier):
        return float(getattr(module, "val_quality", float("nan")))
    found = trainer.callback_metrics.get(metric)
    if found is None:
        logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
        raise MetricNotLoggedError(
            f"task.metric: the module logged no {metric!r} in validation (it logged: {logged})"
        )
    return float(found)


def test_quality(module: pl.LightningModule, trainer: pl.Trainer, metric: str) -> float | None:
    """The test quality: a tnsearch task's own, or what a user's module logged as the metric
    with `val` read as `test` (val_f1 -> test_f1), or under the metric's own name."""
    if isinstance(module, Classifier):
        return float(module.test_quality)
    for name in (metric.replace("val", "test", 1), metric):
        if name in trainer.callback_metrics:
            return float(trainer.callback_metrics[name])
    return None


def _train_loss(module: pl.LightningModule, trainer: pl.Trainer) -> float:
    if isinstance(module, Classifier):
        return module.epoch_train_loss()
    for name in ("train_loss", "loss"):
        if name in trainer.callback_metrics:
            return float(trainer.callback_metrics[name])
    return float("nan")


def check_logs(module: pl.LightningModule, datamodule: pl.LightningDataModule, metric: str) -> None:
    """Validate `module` on one batch and check that it logs `metric`.

    Raises:
        MetricNotLoggedError: ``task.metric: the module logged no 'x' ...``.
    """
    quiet_lightning()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val_quality(module, trainer, metric)


class EpochEnd(pl.Callback):
    """Hands each epoch's train_loss and validation quality (as "val_quality") to `sink` (MLflow,
    learning curve, pruning)."""

    def __init__(self, sink: EpochSink, metric: str = "accuracy") -> None:
        self._sink, self._metric = sink, metric

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._sink(
            {
                "epoch": trainer.current_epoch,
                "train_loss": _train_loss(module, trainer),
                "val_quality": val_quality(module, trainer, self._metric),
            }
        )


class BondsPerEpoch(pl.Callback):
    """Hands the bond spectrum summary of `model`'s tensorized layers (`bonds.epoch_metrics`:
    entropy and effective rank per bond, from the factors) to `sink` as training starts (step 0,
    the layers as decomposed or initialized) and after each epoch (step = epochs trained), so
    that the bonds can be followed as the model trains or heals.

    Args:
        model: the trained model (not a compiled wrapper: its parameters are the same).
        sink: called with (step, metrics); nothing when the model has no tensorized layer.

    Attributes:
        seconds: the time spent on the summaries so far.
    """

    def __init__(self, model: nn.Module, sink: BondSink) -> None:
        self._model, self._sink = model, sink
        self.seconds = 0.0

    def _emit(self, step: int) -> None:
        start = time.perf_counter()
        metrics = bonds.epoch_metrics(self._model)
        self.seconds += time.perf_counter() - start
        if metrics:
            self._sink(step, metrics)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._emit(0)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._emit(trainer.current_epoch + 1)


@dataclass
class TrainResult:
    """What training gave: the final qualities (accuracy, fidelity, ...) and the learning curve."""

    val_quality: float
    test_quality: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def make_trainer(
    *,
    epochs: int,
    accelerator: str = "auto",
    precision: str = "32-true",
    gradient_clip_val: float | None = None,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """A Lightning Trainer with nothing a search does not need (no logger, no checkpoints)."""
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=gradient_clip_val,
        callbacks=callbacks or [],
    )


@contextlib.contextmanager
def dense_frozen(model: nn.Module, frozen: bool = True) -> Iterator[int]:
    """While open (and `frozen`), every parameter of `model` outside its tensorized layers
    (``tn.TNLayer``, ``tn.TNEmbedding``) stays as it is during training (``requires_grad=False``;
    optimizers skip a parameter without a gradient, weight decay included); yields how many
    parameters that holds. On leaving, those parameters are trainable again, so counts of
    trainable parameters (``tn.n_params``) see the whole model."""
    kept = {id(p) for m in model.modules() if isinstance(m, tn.TNLayer | tn.TNEmbedding)
            for p in m.parameters()}  # fmt: skip
    held = [p for p in model.parameters() if frozen and id(p) not in kept and p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield sum(p.numel() for p in held)
    finally:
        for p in held:
            p.requires_grad_(True)


def fit(
    module: Classifier,
    datamodule: pl.LightningDataModule,
    *,
    epochs: int,
    trainer_cfg: TrainerConfig | Mapping[str, Any],
    on_epoch: EpochSink | None = None,
    on_zero_shot: Callable[[float], None] | None = None,
    metric: str = "accuracy",
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    """Train `module` for `epochs` (validating after each), then measure val and test accuracy.

    With epochs == 0 the model is only evaluated (e.g. a trained model). With `on_zero_shot`, the
    validation accuracy before any training (a decomposed trained model) is measured too and
    handed to it at once, so a trial pruned later still keeps it. `callbacks` are called before
    the one that hands on each epoch's metrics (which may stop training: a pruned trial), e.g.
    `BondsPerEpoch`.
    """
    quiet_lightning()
    history: list[dict[str, float]] = []

    def sink(metrics: dict[str, float]) -> None:
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    settings = TrainerConfig.of(trainer_cfg)
    trainer = make_trainer(
        epochs=epochs,
        accelerator=settings.accelerator,
        precision=settings.precision,
        gradient_clip_val=settings.gradient_clip_val,
        callbacks=[*callbacks, EpochEnd(sink, metric)],
    )
    if epochs > 0:
        if on_zero_shot is not None:
            trainer.validate(module, datamodule=datamodule, verbose=False)
            on_zero_shot(val_quality(module, trainer, metric))
        trainer.fit(module, datamodule=datamodule)
        quality = history[-1]["val_quality"] if history else float("nan")
    else:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        quality = val_quality(module, trainer, metric)
        if on_zero_shot is not None:  # untrained: the evaluation is the zero-shot quality
            on_zero_shot(quality)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return TrainResult(
        val_quality=quality, test_quality=test_quality(module, trainer, metric), history=history
    )
