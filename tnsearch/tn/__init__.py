"""Tensor-network layers: MPO, Tucker, CP and tree replacements for ``nn.Linear`` / ``nn.Conv2d``
(and ``nn.Embedding``: :class:`TNEmbedding`).

>>> import torch
>>> from torch import nn
>>> from tnsearch import tn
>>> layer = tn.tensorize(nn.Linear(1024, 1024), topology="mpo", rank=16, order=4)
>>> layer.in_modes, layer.rank, tn.n_params(layer)  # the dense layer has 1049600
((4, 4, 8, 8), (16, 16, 16), 22784)
>>> layer.paths, layer.path            # equivalent computations; "auto" measures and caches
(('reconstruct', 'einsum'), 'auto')
>>> layer(torch.randn(8, 1024)).shape
torch.Size([8, 1024])
>>> layer.to_dense()                   # the equivalent nn.Linear
Linear(in_features=1024, out_features=1024, bias=True)

Pure PyTorch (with tensorly's decompositions and opt_einsum's contraction orders); no global
state is set on import.
"""

from tnsearch.tn import shapes
from tnsearch.tn._base import TNLayer
from tnsearch.tn._calibrate import InputStats, fit_to_inputs, output_error
from tnsearch.tn._cp import CPLayer
from tnsearch.tn._embedding import TNEmbedding
from tnsearch.tn._geometry import Geometry
from tnsearch.tn._mpo import MPOLayer
from tnsearch.tn._network import BondLayout, ComponentLayout, TreeLayout
from tnsearch.tn._registry import TOPOLOGIES, register
from tnsearch.tn._summary import describe, freeze_paths, n_params
from tnsearch.tn._tensorize import tensorize
from tnsearch.tn._tree import TreeLayer
from tnsearch.tn._tucker import TuckerLayer

__all__ = [
    "BondLayout",
    "CPLayer",
    "ComponentLayout",
    "Geometry",
    "InputStats",
    "MPOLayer",
    "TNEmbedding",
    "TNLayer",
    "TOPOLOGIES",
    "TreeLayer",
    "TreeLayout",
    "TuckerLayer",
    "describe",
    "fit_to_inputs",
    "freeze_paths",
    "n_params",
    "output_error",
    "register",
    "shapes",
    "tensorize",
]
