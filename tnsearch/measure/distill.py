"""Distillation healing: the dense model teaches its tensorized copy (`task=distill`).

The student learns to give the teacher's output embedding: the pooled last hidden state, as
sentence-transformers defines it for its models (mean over the attention mask, then L2
normalized). The loss is 1 - cosine similarity of the two embeddings; the quality metric is
`fidelity`, the mean cosine similarity on held-out data (1.0: the same embeddings).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tnsearch.measure.training import Classifier

__all__ = ["Distill", "embedding", "pooled"]


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


class Distill(Classifier):
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
            optimizer=optimizer,
            scheduler=scheduler,
            nan_check_every=nan_check_every,
            output=output,
        )
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return embedding(self.model, batch, self._output)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout stays off
        return self

    def _targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return embedding(self.teacher, batch, self._output)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (1.0 - (self(batch) * self._targets(batch)).sum(dim=-1)).mean()

    def score(self, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
        cosine = (self(batch) * self._targets(batch)).sum(dim=-1)  # (B,)
        return float(cosine.sum()), int(cosine.numel())

    def trained_parameters(self):
        """Only the student learns."""
        return self.model.parameters()
