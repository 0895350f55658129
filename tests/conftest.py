"""Shared fixtures; the helpers they use live in tests/helpers."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, compose_cfg

#: A user's objective module registers on import: only the test that names it imports it (not
#: the doctest collection, which imports every module).
collect_ignore = ["study/activations_objective.py"]


@pytest.fixture
def cfg_factory():
    return compose_cfg


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One real 3-trial study (TINY, run in this process), shared by the report and export
    tests: `root`, `overrides` (for the commands), `name`, and `load()` for the Optuna study."""
    from types import SimpleNamespace

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tnsearch.__main__ import run as run_search

    root = tmp_path_factory.mktemp("tiny")
    overrides = [f"root={root}", "trials=3", *TINY]
    assert run_search(compose_cfg(overrides)) == 0
    journal = str(root / "mlp" / "optuna.journal")

    def load():
        return optuna.load_study(
            study_name="mlp", storage=JournalStorage(JournalFileBackend(journal))
        )

    return SimpleNamespace(root=root, overrides=overrides, name="mlp", load=load)
