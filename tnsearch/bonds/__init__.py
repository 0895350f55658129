"""Bond analysis of tensorized layers, and truncation to the ranks the weights actually use.

>>> from tnsearch import bonds
>>> found = bonds.analyze(model)                 # layer name -> LayerBonds
>>> found["fc1"].bonds[0].singular_values        # normalized: squares sum to 1
>>> small = bonds.truncate(model, energy=0.99)   # a new model, every bond cut to its rank

For MPO, tree and Tucker layers a bond's spectrum is that of the weight matricized across the
bond (mixed-canonical form); for CP it is the component norms. Entropies are in nats.
"""

from tnsearch.bonds._methods import METHODS, BondMethod, ComponentBonds, TreeBonds, tree_layout
from tnsearch.bonds._model import analyze, analyze_layer, truncate, truncate_layer, truncated_plan
from tnsearch.bonds._network import TreeNetwork
from tnsearch.bonds._spectrum import RTOL, Bond, LayerBonds, effective_rank, entropy

__all__ = [
    "METHODS",
    "RTOL",
    "Bond",
    "BondMethod",
    "ComponentBonds",
    "LayerBonds",
    "TreeBonds",
    "TreeNetwork",
    "analyze",
    "analyze_layer",
    "effective_rank",
    "entropy",
    "tree_layout",
    "truncate",
    "truncate_layer",
    "truncated_plan",
]
