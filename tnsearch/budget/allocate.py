"""Rank allocation: the plan that loses the least quality within a budget, from a profile.

Each group either stays dense (in float32) or takes one of its profiled options (tensorized, or
dense in int8, at a precision); the loss of a plan is predicted as the sum of its options'
losses (each measured alone), its parameters, bytes and latency as sums too. Choosing one
option per group under a budget is a multiple-choice knapsack. We solve its Lagrangian
relaxation: for a price `lam` each group independently takes the option of
least `loss + lam * cost`, and a bisection finds the smallest price whose plan fits (this is
exact on each group's lower convex hull of (cost, loss), and takes O(groups x options) per
price); then a greedy pass spends what the relaxation left of the budget on the upgrades that
buy back the most quality per unit of budget. A dynamic program would be exact but needs the
costs on a grid, and the loss model's additivity is the larger error anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tnsearch.budget.profile import Entry, Profile
from tnsearch.plan import FLOAT32

__all__ = ["Allocation", "UnreachableBudget", "allocate", "candidates"]


class UnreachableBudget(ValueError):
    """No plan of the profile meets the budget; `smallest` is the least fraction reachable."""

    def __init__(self, key: str, smallest: float, asked: float) -> None:
        super().__init__(
            f"{key}: no plan meets {asked:g}; the smallest reachable is {smallest:.4g} "
            "(every eligible layer at its smallest option; widen space.ranks, space.orders"
            + (", space.precisions" if key == "budget.bytes" else "")
            + " or space.layers to go further)"
        )
        self.key, self.smallest, self.asked = key, smallest, asked


@dataclass(frozen=True)
class Allocation:
    """The chosen option per group (None: dense) and what the profile predicts for it."""

    choices: dict[str, Entry | None]
    params: int  # the whole model's parameters
    params_fraction: float
    latency_fraction: float  # predicted whole-model latency / dense
    loss: float  # predicted quality lost
    bytes_fraction: float = 1.0  # the weights' bytes as deployed / the dense float32 model's
    precision: dict[str, str] = field(default_factory=dict)  # layer -> int8 (plan.precision)

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        """The plan's layers."""
        return {n: s for e in self.choices.values() if e is not None for n, s in e.layers.items()}


Costs = tuple[float, float, float]  # (params, latency, bytes): fractions of the dense model's
BUDGETS = ("params", "latency", "bytes")


def _costs(profile: Profile, group: str, entry: Entry | None) -> Costs:
    """(params, latency, bytes) of a group's choice, as fractions of the whole dense model."""
    g = profile.groups[group]
    if entry is None:
        return (g.params / profile.dense_params, g.latency_ms / profile.dense_latency_ms,
                g.weight_bytes / profile.weight_bytes)  # fmt: skip
    return (
        entry.params / profile.dense_params,
        g.latency_ms * entry.latency_ratio / profile.dense_latency_ms,
        entry.weight_bytes / profile.weight_bytes,
    )


def _fixed(profile: Profile) -> Costs:
    """(params, latency, bytes) fractions of everything outside the groups."""
    groups = profile.groups.values()
    params = 1.0 - sum(g.params for g in groups) / profile.dense_params
    latency = 1.0 - sum(g.latency_ms for g in groups) / profile.dense_latency_ms
    size = 1.0 - sum(g.weight_bytes for g in groups) / profile.weight_bytes
    return params, max(latency, 0.0), max(size, 0.0)


def allocate(
    profile: Profile,
    *,
    params: float | None = None,
    latency: float | None = None,
    bytes: float | None = None,  # noqa: A002 - the budget's key, as users write it
    topologies: Sequence[str] | None = None,
    measured_only: bool = False,
) -> Allocation:
    """The least lossy plan with at most `params` of the dense model's parameters, `latency`
    of its latency and `bytes` of its float32 weights' bytes (fractions, `params` and `bytes`
    in (0, 1]; None: no limit).

    Args:
        topologies: only these topologies (default: all the profile holds).
        measured_only: only the options the profile measured (not those it predicted).

    Raises:
        UnreachableBudget: no plan fits (naming `budget.params`, `budget.latency` or
            `budget.bytes`).
    """
    for key, value in (("params", params), ("bytes", bytes)):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"budget.{key}: must be a fraction in (0, 1], got {value}")
    if latency is not None and not latency > 0:  # a ladder may allow more than dense's
        raise ValueError(f"budget.latency: must be a positive fraction, got {latency}")
    asked = (params, latency, bytes)
    limits = tuple(float("inf") if a is None else a for a in asked)
    weights = tuple(0.0 if a is None else 1.0 for a in asked)
    base = _fixed(profile)
    menus: dict[str, list[tuple[Entry | None, float, Costs]]] = {}
    for group in profile.groups:
        menu = [(None, 0.0, _costs(profile, group, None))]
        for e in profile.options(group):
            if (topologies is None or e.topology in topologies) and (
                e.measured or not measured_only
            ):
                loss = e.loss(profile.dense_quality, profile.maximize)
                menu.append((e, loss, _costs(profile, group, e)))
        menus[group] = menu

    def totals(pick: Mapping[str, int]) -> tuple[Costs, float]:
        costs, loss = list(base), 0.0
        for g, k in pick.items():
            _, lo, c = menus[g][k]
            costs, loss = [a + b for a, b in zip(costs, c, strict=True)], loss + lo
        return tuple(costs), loss

    def fits(pick: Mapping[str, int]) -> bool:
        costs, _ = totals(pick)
        return all(c <= limit + 1e-12 for c, limit in zip(costs, limits, strict=True))

    def weighed(c: Costs) -> float:
        return sum(w * x for w, x in zip(weights, c, strict=True))

    def priced(lam: float) -> dict[str, int]:
        pick = {}
        for g, menu in menus.items():
            scores = [lo + lam * weighed(c) for _, lo, c in menu]
            pick[g] = min(range(len(menu)), key=lambda k: (scores[k], k))
        return pick

    smallest = {  # each group at its cheapest choice for the budgets given
        g: min(range(len(m)), key=lambda k: weighed(m[k][2])) for g, m in menus.items()
    }
    if not fits(smallest):
        costs, _ = totals(smallest)
        for key, c, limit, a in zip(BUDGETS, costs, limits, asked, strict=True):
            if c > limit + 1e-12:
                raise UnreachableBudget(f"budget.{key}", c, a)
    lo, hi = 0.0, 1.0
    while not fits(priced(hi)) and hi < 1e12:
        hi *= 4
    pick = priced(hi) if fits(priced(hi)) else smallest
    for _ in range(60):
        mid = (lo + hi) / 2
        trial = priced(mid)
        if fits(trial):
            hi, pick = mid, trial
        else:
            lo = mid
    pick = _spend(pick, menus, fits, weights)
    (p, t, b), loss = totals(pick)
    choices = {g: menus[g][k][0] for g, k in pick.items()}
    count = round(p * profile.dense_params)
    precision = {
        layer: e.precision
        for g, e in choices.items()
        if e is not None and e.precision != FLOAT32
        for layer in profile.groups[g].layers
    }
    return Allocation(choices, count, p, t, loss, b, precision)


def _spend(pick, menus, fits, weights) -> dict[str, int]:
    """Greedy upgrades within the budget: the largest loss saved per unit of cost added."""
    pick = dict(pick)
    while True:
        best, best_gain = None, 0.0
        for g, menu in menus.items():
            current = menu[pick[g]]
            for k, (_, lo, c) in enumerate(menu):
                if lo >= current[1] - 1e-12:
                    continue
                trial = {**pick, g: k}
                if not fits(trial):
                    continue
                added = sum(w * (c[i] - current[2][i]) for i, w in enumerate(weights))
                gain = (current[1] - lo) / max(added, 1e-9)
                if gain > best_gain:
                    best, best_gain = trial, gain
        if best is None:
            return pick
        pick = best


def candidates(
    profile: Profile,
    budgets: Sequence[Mapping[str, float | None]],
    *,
    neighbours: int = 1,
    tolerance: float = 0.0,
) -> set[tuple[str, str, int, int]]:
    """The options worth measuring for these budgets: what the allocation picks at each, and
    per group the `neighbours` options on either side of that pick along the group's lower
    convex hull of (cost, loss), which a better-known loss could make it pick instead. A budget
    whose allocation over the measured options alone is predicted to lose at most `tolerance`
    more than its allocation over all options asks for nothing more.

    Args:
        budgets: each a mapping of `allocate`'s keywords (params=, latency=, bytes=);
            unreachable ones are skipped.
    """
    found: set[tuple[str, str, int, int]] = set()
    for budget in budgets:
        try:
            chosen = allocate(profile, **budget)
        except UnreachableBudget:
            continue
        if all(e is None or e.measured for e in chosen.choices.values()):
            continue
        try:
            known = allocate(profile, **budget, measured_only=True)
            if known.loss <= chosen.loss + tolerance:
                continue
        except UnreachableBudget:
            pass
        weights = tuple(float(budget.get(k) is not None) for k in BUDGETS)
        for group, entry in chosen.choices.items():
            menu = [(None, 0.0)] + [
                (e, e.loss(profile.dense_quality, profile.maximize)) for e in profile.options(group)
            ]
            points = []
            for e, loss in menu:
                costs = _costs(profile, group, e)
                points.append((sum(w * c for w, c in zip(weights, costs, strict=True)), loss, e))
            hull = _lower_hull(points)
            at = next((k for k, p in enumerate(hull) if p[2] is entry), None)
            if at is None:  # the greedy pass may pick off the hull: its nearest hull points
                cost = next(p[0] for p in points if p[2] is entry)
                at = min(range(len(hull)), key=lambda k: abs(hull[k][0] - cost))
            if entry is not None:
                found.add(entry.option)
            for k in range(max(0, at - neighbours), min(len(hull), at + neighbours + 1)):
                if hull[k][2] is not None:
                    found.add(hull[k][2].option)
    return found


def _lower_hull(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The lower convex hull of (cost, loss, item) points, by increasing cost (Andrew's monotone
    chain on the lower side; only points that no other beats on both counts)."""
    ordered = sorted(points, key=lambda p: (p[0], p[1]))
    hull: list[tuple[float, float, Any]] = []
    for p in ordered:
        if hull and p[1] >= hull[-1][1]:
            continue  # dearer and no better: never picked
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull
