"""Choosing a layer's computation path by measuring it.

A key is ``(input shape, device, dtype, training)``, where dtype is the autocast dtype when
autocast is on and training means grad mode is on (a backward pass will follow). For a new key the
candidate paths are run round-robin (warm-up, then timed repetitions; forward only, or forward +
backward through :func:`torch.autograd.grad` so no ``.grad`` is touched) and the one with the
lowest lower-quartile time wins: other processes on the machine only ever add time, so a low
quantile ranks the paths more reliably than the mean or the median on a busy CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["PathKey", "measure_paths", "path_key"]

PathKey = tuple  # (shape, device, dtype, training)

_BUDGET_S = 0.15  # timed seconds per key and candidate, at most
_MIN_REPS, _MAX_REPS = 3, 15
_PRUNE = 3.0  # after warm-up, drop candidates this much slower than the best (in both warm-ups)


def path_key(x: torch.Tensor) -> PathKey:
    """The cache key for input ``x`` in the current grad / autocast state."""
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    return (tuple(x.shape), x.device, dtype, torch.is_grad_enabled())


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def _runner(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    training: bool,
) -> Callable[[], None]:
    if not training or not (params or x.requires_grad):

        def forward() -> None:
            with torch.no_grad():
                fn(x)

        return forward
    xi = x.detach().requires_grad_(x.requires_grad)
    inputs = ([xi] if x.requires_grad else []) + list(params)

    def forward_backward() -> None:
        with torch.enable_grad():
            out = fn(xi)
            torch.autograd.grad(out, inputs, torch.ones_like(out))

    return forward_backward


def _timed(run: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def measure_paths(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
) -> tuple[str, dict[str, float]]:
    """Time each candidate on ``x``; return the fastest name and the seconds of each.

    Args:
        fns: path name -> function computing the layer's output from ``x``.
        x: a real input (its values are only read).
        params: the layer's parameters (gradients are taken for those that require them).
    """
    training = torch.is_grad_enabled()
    runs = {name: _runner(fn, x, params, training) for name, fn in fns.items()}
    if len(runs) == 1:
        return next(iter(runs)), {}
    first = {name: float("inf") for name in runs}
    for _ in range(2):  # warm-up: allocations, kernel selection; keep the faster time
        for name, run in runs.items():
            first[name] = min(first[name], _timed(run, x.device))
    best = min(first.values())
    alive = [n for n in runs if first[n] <= _PRUNE * best]
    reps = int(_BUDGET_S / max(sum(first[n] for n in alive), 1e-9))
    reps = max(_MIN_REPS, min(_MAX_REPS, reps))
    times: dict[str, list[float]] = {n: [] for n in alive}
    for _ in range(reps):
        for name in alive:
            times[name].append(_timed(runs[name], x.device))
    low = {n: sorted(t)[(len(t) - 1) // 4] for n, t in times.items()}  # lower quartile
    return min(low, key=low.get), low
