"""What tnsearch keeps off the console: the libraries' chatter that says nothing to a user."""

from __future__ import annotations

import warnings

__all__ = ["quiet"]


def quiet() -> None:
    """Silence library chatter that says nothing to a tnsearch user."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", message=".*multivariate.*")
