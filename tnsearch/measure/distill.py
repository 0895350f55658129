"""Distillation healing: the dense model teaches its tensorized copy.

`task=distill` (`Distill`): the student learns to give the teacher's output embedding: the pooled
last hidden state, as sentence-transformers defines it for its models (mean over the attention
mask, then L2 normalized). The loss is 1 - cosine similarity of the two embeddings; the quality
metric is `fidelity`, the mean cosine similarity on held-out data (1.0: the same embeddings).

`heal.distill=true` with `task=classify` (`DistilledClassifier`): the student learns the labels
and the teacher's softened class probabilities (Hinton et al. 2015, `distilled_loss`); the
quality stays the accuracy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tnsearch.measure.training import Classifier, logits

__all__ = ["DistilledClassifier", "Distill", "distilled_loss", "embedding", "last_linear", "pooled"]


def pooled(
    output: Any, attention_mask: torch.Tensor | None, key: str = "last_hidden_state"
) -> torch.Tensor:
    """The mean-pooled, L2-normalized embedding (B, H) of a model's output.

    Args:
        output: a tensor (B, L, H) or (B, H), or a dict / ModelOutput with `key` (default
            `last_hidden_state`; `pooler_output`, a sentence embedding, ...), or a tuple whose
            first element is it.
        attention_mask: (B, L), 1 for real tokens; None: every position counts.
    """
    if isinstance(output, Mapping):
        if key not in output:
            raise TypeError(f"task.output: the model's output has no {key!r} ({', '.join(output)})")
        hidden = output[key]
    elif isinstance(output, tuple | list):
        hidden = output[0]
    else:
        hidden = output
    if hidden.dim() == 3:  # (B, L, H): mean over the real tokens
        if attention_mask is None:
            hidden = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            hidden = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(hidden.float(), dim=-1)


def embedding(
    model: nn.Module, batch: Mapping[str, torch.Tensor], key: str = "last_hidden_state"
) -> torch.Tensor:
    """`model`'s pooled embedding (B, H) of a tokenized batch."""
    return pooled(model(**batch), batch.get("attention_mask"), key)


class Taught(Classifier):
    """A task whose `model` learns from a frozen `teacher` (a copy: the caller's stays as it is).

    The teacher is a submodule, so Lightning moves it to the student's device; it stays in eval
    mode (no dropout, fixed batch-norm statistics), without gradients, and out of the optimizer.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Taught:
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout stays off
        return self

    def trained_parameters(self):
        """Only the student learns."""
        return self.model.parameters()


class Distill(Taught):
    """Heal `model` toward `teacher` (a frozen copy of the dense model by default).

    Args:
        model: the student (a tensorized model).
        teacher: the dense model; it is never trained (eval mode, no gradients).
        optimizer, scheduler, nan_check_every: as for `Classifier`.
    """

    metric = "fidelity"

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: str = "cosine",
        nan_check_every: int = 20,
        output: str = "last_hidden_state",
    ) -> None:
        super().__init__(
            model,
            teacher,
            optimizer=optimizer,
            scheduler=scheduler,
            nan_check_every=nan_check_every,
            output=output,
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return embedding(self.model, batch, self._output)

    def _targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        memo = getattr(self, "_memo", None)
        if memo is not None and id(batch) in memo:
            return memo[id(batch)][1]
        with torch.no_grad():
            found = embedding(self.teacher, batch, self._output)
        if memo is not None:
            memo[id(batch)] = (batch, found)  # the batch is kept: its id stays its own
        return found

    def remember_targets(self) -> None:
        """Keep the teacher's embedding of each batch once computed: for scoring the same
        held-out batches many times (a profile), not for training on fresh ones."""
        self._memo = {}

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (1.0 - (self(batch) * self._targets(batch)).sum(dim=-1)).mean()

    def score(self, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
        cosine = (self(batch) * self._targets(batch)).sum(dim=-1)  # (B,)
        return float(cosine.sum()), int(cosine.numel())


def distilled_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Knowledge distillation of a classifier: the KL divergence of the student's softened
    class probabilities from the teacher's, and cross-entropy on the labels.

    ``alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``; the
    KL term is the mean over the batch, scaled by T**2 so that its gradients keep their size
    whatever the temperature (Hinton et al. 2015).

    Args:
        student, teacher: logits (B, classes); the teacher's carry no gradient.
        labels: (B,) class indices.
        temperature: T > 0; above 1 it softens both distributions.
        alpha: the weight of the KL term, in [0, 1].
    """
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student.float() / t, dim=-1),
        F.log_softmax(teacher.detach().float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1.0 - alpha) * F.cross_entropy(student.float(), labels)


def last_linear(model: nn.Module) -> str | None:
    """The name of `model`'s last `nn.Linear` in module order (a classifier's head), or None."""
    found = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return found[-1] if found else None


class DistilledClassifier(Taught):
    """Heal a tensorized classifier with the dense one as teacher (`heal.distill=true`).

    The training loss is `distilled_loss` of the student's and the teacher's logits; with
    `features`, plus ``alpha`` times the mean squared error between the inputs of the model's
    last `nn.Linear` (the penultimate features, (B, H)) in the student and in the teacher, read
    by forward pre-hooks on the module of that name (the same in both, tensorized or not).
    Validation and test score the accuracy, as `Classifier` does.

    Args:
        model: the student (a tensorized model), maps inputs to (B, classes) logits.
        teacher: the dense model with the trained weights; never trained.
        temperature, alpha: as for `distilled_loss`.
        features: also match the last Linear's input features.
        optimizer, scheduler, nan_check_every, output: as for `Classifier`.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        temperature: float = 2.0,
        alpha: float = 0.5,
        features: bool = False,
        scheduler: str = "cosine",
        nan_check_every: int = 20,
        output: str = "logits",
    ) -> None:
        super().__init__(
            model,
            teacher,
            optimizer=optimizer,
            scheduler=scheduler,
            nan_check_every=nan_check_every,
            output=output,
        )
        self.temperature, self.alpha = float(temperature), float(alpha)
        #: The module whose input features are matched (None: the logits only).
        self.feature_layer = last_linear(self.teacher) if features else None
        if features and self.feature_layer is None:
            raise ValueError("heal.features: the model has no nn.Linear whose input to match")
        if features and hasattr(model, "_orig_mod"):  # torch.compile's wrapper
            raise ValueError("heal.features: reads features by forward hooks; needs an eager model")
        self._features: dict[str, torch.Tensor] = {}  # "student" / "teacher" -> features (B, H)
        self._hooks: list[Any] = []

    def on_fit_start(self) -> None:  # hooks only while training: the student is left clean
        if self.feature_layer is None:
            return
        for role, net in (("student", self.model), ("teacher", self.teacher)):
            layer = net.get_submodule(self.feature_layer)  # the same name, tensorized or not
            self._hooks.append(layer.register_forward_pre_hook(functools.partial(self._tap, role)))

    def on_fit_end(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._features.clear()

    def _tap(self, role: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features[role] = args[0]

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        student = self(x)
        with torch.no_grad():
            teacher = logits(self.teacher(x), self._output)
        loss = distilled_loss(student, teacher, y, temperature=self.temperature, alpha=self.alpha)
        if self.feature_layer is not None:
            mine, theirs = self._features.pop("student"), self._features.pop("teacher")
            loss = loss + self.alpha * F.mse_loss(mine.float(), theirs.detach().float())
        return loss
