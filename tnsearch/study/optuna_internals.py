"""The private Optuna APIs tnsearch relies on, in one place (check them on an Optuna upgrade).

- setting a user attribute on a trial this process does not hold (reaping a dead worker's
  trial): `BaseStorage.set_trial_user_attr` through the study's `_storage` and `_trial_id`;
- the hypervolume of a point set: `optuna._hypervolume.compute_hypervolume`;
- seeding a sampler's random state (`reseed_rng()` only draws a random seed): the samplers keep
  it in `LazyRandomState` / `numpy.random.RandomState` attributes, some in a nested sampler.
"""

from __future__ import annotations

from typing import Any

import optuna


def set_trial_user_attr(study: optuna.Study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial `number` of `study`, whichever process runs it."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def reseed(sampler: optuna.samplers.BaseSampler, seed: int, *, _seen=None) -> int:
    """Seed every random state of `sampler` (and of the samplers it holds) with `seed`;
    return how many were seeded."""
    import numpy as np

    seen = set() if _seen is None else _seen
    if id(sampler) in seen:
        return 0
    seen.add(id(sampler))
    count = 0
    for value in vars(sampler).values():
        if type(value).__name__ == "LazyRandomState":
            value.rng.seed(seed % 2**32)
            count += 1
        elif isinstance(value, np.random.RandomState):
            value.seed(seed % 2**32)
            count += 1
        elif isinstance(value, optuna.samplers.BaseSampler):
            count += reseed(value, seed + 1, _seen=seen)
    return count


def compute_hypervolume(points, reference) -> float:
    """Hypervolume dominated by `points` (n, m) below `reference` (m,), all minimized."""
    from optuna._hypervolume import compute_hypervolume as _compute

    return float(_compute(points, reference))
