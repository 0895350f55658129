"""Bond analysis of tensorized layers, and truncation to the ranks the weights actually use.

>>> from collections import OrderedDict
>>> import torch
>>> from torch import nn
>>> from tnsearch import bonds, tn
>>> _ = torch.manual_seed(0)
>>> a, b = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
>>> dense = nn.Linear(64, 32, dtype=torch.float64)
>>> with torch.no_grad():  # a Kronecker product: rank 1 across the bond of a 2-core MPO
...     _ = dense.weight.copy_(torch.kron(a, b))
>>> fc1 = tn.tensorize(dense, topology="mpo", rank=8, in_modes=(8, 8), out_modes=(4, 8))
>>> model = nn.Sequential(OrderedDict(fc1=fc1, act=nn.ReLU(), fc2=nn.Linear(32, 10)))
>>> found = bonds.analyze(model)                 # layer name -> LayerBonds
>>> list(found), found["fc1"].rank
(['fc1'], (8,))
>>> bond = found["fc1"].bonds[0]
>>> bond.modes, bond.rank, bond.effective_rank   # the modes on one side, the ranks across it
(('m0', 'n0'), 1, 1)
>>> round(sum(v * v for v in bond.singular_values), 12)  # normalized: squares sum to 1
1.0
>>> small = bonds.truncate(model, energy=0.99)   # a new model, every bond cut to its rank
>>> small.fc1.rank, tn.n_params(small.fc1), tn.n_params(model.fc1)
((1,), 128, 800)

For MPO, tree and Tucker layers a bond's spectrum is that of the weight matricized across the
bond (mixed-canonical form); for CP it is the component norms. Entropies are in nats.
"""

from tnsearch.bonds._methods import BondMethod, BondTerms, ComponentBonds, Cut, TreeBonds, method
from tnsearch.bonds._model import (
    METRIC_PREFIX,
    analyze,
    analyze_layer,
    epoch_metrics,
    tensorized_layers,
    truncate,
    truncate_layer,
    truncated_plan,
)
from tnsearch.bonds._network import TreeNetwork
from tnsearch.bonds._probe import bond_activations, bond_terms, probe
from tnsearch.bonds._quantities import (
    QUANTITIES,
    Spectrum,
    SpectrumCache,
    layer_quantities,
    option_quantities,
    unfolding_spectrum,
)
from tnsearch.bonds._spectrum import RTOL, Bond, LayerBonds, effective_rank, entropy

__all__ = [
    "METRIC_PREFIX",
    "QUANTITIES",
    "RTOL",
    "Bond",
    "BondMethod",
    "BondTerms",
    "ComponentBonds",
    "Cut",
    "LayerBonds",
    "Spectrum",
    "SpectrumCache",
    "TreeBonds",
    "TreeNetwork",
    "analyze",
    "analyze_layer",
    "bond_activations",
    "bond_terms",
    "effective_rank",
    "entropy",
    "epoch_metrics",
    "layer_quantities",
    "method",
    "option_quantities",
    "probe",
    "tensorized_layers",
    "truncate",
    "truncate_layer",
    "truncated_plan",
    "unfolding_spectrum",
]
