"""Layer cases shared by the tn tests: small, odd-sized Linear and Conv2d modules."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tnsearch import tn


@dataclass(frozen=True)
class Case:
    """A dense module to tensorize, how, and an input shape for it."""

    name: str
    make: object  # () -> nn.Module
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)

    def module(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        torch.manual_seed(0)
        return self.make().to(dtype)

    def input(self, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=g, dtype=dtype)


CASES = [
    Case("linear_96x10", lambda: nn.Linear(96, 10), (5, 96), {"order": 2}),
    Case("linear_3d_input", lambda: nn.Linear(24, 12, bias=False), (2, 3, 24), {"order": 2}),
    Case(
        "linear_padded",
        lambda: nn.Linear(30, 7),
        (3, 30),
        {"in_modes": (4, 8), "out_modes": (2, 4)},
    ),
    Case("conv_3to16_s2", lambda: nn.Conv2d(3, 16, 3, stride=2), (2, 3, 9, 9), {"order": 1}),
    Case(
        "conv_dilated_nobias",
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), bias=False),
        (2, 4, 10, 9),
        {"order": 2},
    ),
    Case(
        "conv_padded_modes",
        lambda: nn.Conv2d(3, 10, 3, padding=1),
        (1, 3, 6, 5),
        {"in_modes": (2, 2), "out_modes": (2, 6)},
    ),
]

TOPOLOGIES = sorted(tn.TOPOLOGIES)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of ``a`` against ``b``."""
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def build(
    case: Case, topology: str, rank=3, dtype=torch.float64, **kw
) -> tuple[nn.Module, tn.TNLayer]:
    """The dense module and its tensorized version (decomposed)."""
    module = case.module(dtype)
    layer = tn.tensorize(module, topology=topology, rank=rank, **{**case.kwargs, **kw})
    return module, layer


@dataclass(frozen=True)
class EmbeddingCase:
    """A dense ``nn.Embedding(V, D)`` to tensorize, and how."""

    name: str
    num_embeddings: int
    embedding_dim: int
    kwargs: dict = field(default_factory=dict)
    padding_idx: int | None = None

    def module(self, dtype: torch.dtype = torch.float64) -> nn.Embedding:
        torch.manual_seed(0)
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        return emb.to(dtype)

    def indices(self, shape: tuple[int, ...] = (4, 6), seed: int = 1) -> torch.Tensor:
        """Random indices of ``shape``, with the first and last rows (and the padding row)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, self.num_embeddings, shape, generator=g)
        flat = idx.view(-1)
        flat[0], flat[-1] = 0, self.num_embeddings - 1
        if self.padding_idx is not None and flat.numel() > 2:
            flat[1] = self.padding_idx
        return idx


EMBEDDING_CASES = [
    EmbeddingCase("emb_96x10", 96, 10, {"order": 2}),
    EmbeddingCase("emb_padded_30x7", 30, 7, {"in_modes": (4, 8), "out_modes": (2, 4)}, 3),
    EmbeddingCase("emb_order3_60x12", 60, 12, {"order": 3}, 0),
]


def build_embedding(
    case: EmbeddingCase, topology: str, rank=3, dtype=torch.float64, **kw
) -> tuple[nn.Embedding, tn.TNEmbedding]:
    """The dense embedding and its tensorized version (decomposed)."""
    module = case.module(dtype)
    emb = tn.tensorize(module, topology=topology, rank=rank, **{**case.kwargs, **kw})
    return module, emb
