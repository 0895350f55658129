"""tnsearch: find the best tensorized version of a neural network.

The layers live in `tnsearch.tn` (pure PyTorch); the search is `python -m tnsearch`.
"""

__version__ = "0.1.0"
