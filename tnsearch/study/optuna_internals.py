"""The private Optuna APIs tnsearch relies on, in one place (check them on an Optuna upgrade).

- setting a user attribute on a trial this process does not hold (reaping a dead worker's
  trial): `BaseStorage.set_trial_user_attr` through the study's `_storage` and `_trial_id`;
- the hypervolume of a point set: `optuna._hypervolume.compute_hypervolume`.
"""

from __future__ import annotations

from typing import Any

import optuna


def set_trial_user_attr(study: optuna.Study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial `number` of `study`, whichever process runs it."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def compute_hypervolume(points, reference) -> float:
    """Hypervolume dominated by `points` (n, m) below `reference` (m,), all minimized."""
    from optuna._hypervolume import compute_hypervolume as _compute

    return float(_compute(points, reference))
