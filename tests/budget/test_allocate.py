"""The allocator: within the budget, least predicted loss, cheap layers first."""

import itertools

import pytest

from tnsearch.budget.allocate import UnreachableBudget, allocate
from tnsearch.budget.profile import Entry, Group, Profile


def entry(group: str, rank: int, params: int, quality: float, ratio: float = 1.0) -> Entry:
    return Entry(group, "mpo", 2, rank, {group: {"rank": rank}}, params, 0.0, ratio, quality)


def profile(entries, groups) -> Profile:
    return Profile(
        key="k",
        metric="accuracy",
        maximize=True,
        dense_quality=0.9,
        dense_params=sum(g.params for g in groups.values()) + 100,
        dense_latency_ms=10.0,
        batch_size=8,
        groups=groups,
        entries=entries,
    )


@pytest.fixture
def two_layers() -> Profile:
    groups = {"cheap": Group(("cheap",), 1000, 4.0), "dear": Group(("dear",), 1000, 4.0)}
    entries = [
        # compressing "cheap" costs almost nothing, "dear" loses a lot
        entry("cheap", 2, 100, 0.89, 0.5),
        entry("cheap", 8, 400, 0.899, 0.7),
        entry("dear", 2, 100, 0.50, 0.5),
        entry("dear", 8, 400, 0.80, 0.7),
    ]
    return profile(entries, groups)


def test_the_cheap_layer_is_compressed_first(two_layers):
    chosen = allocate(two_layers, params=1500 / 2100)
    assert chosen.choices["dear"] is None  # stays dense
    assert chosen.choices["cheap"].rank == 8  # the least lossy option that fits
    assert chosen.params <= 1500


@pytest.mark.parametrize("fraction", [0.95, 0.8, 0.6, 0.45, 0.2])
def test_the_budget_is_met_with_the_least_loss_of_all_plans(two_layers, fraction):
    chosen = allocate(two_layers, params=fraction)
    assert chosen.params_fraction <= fraction + 1e-12
    menus = {g: [None, *two_layers.options(g)] for g in two_layers.groups}
    best = min(
        sum(0 if e is None else e.loss(0.9, True) for e in pick)
        for pick in itertools.product(*menus.values())
        if 100 + sum(two_layers.groups[g].params if e is None else e.params
                     for g, e in zip(menus, pick, strict=True)) <= fraction * 2100
    )  # fmt: skip
    assert chosen.loss == pytest.approx(best)


def test_a_latency_budget_uses_the_measured_ratios(two_layers):
    chosen = allocate(two_layers, latency=0.75)  # 2 + 4 * r1 + 4 * r2 <= 7.5
    assert chosen.latency_fraction <= 0.75
    assert chosen.choices["cheap"] is not None


def test_an_unreachable_budget_names_the_smallest_reachable(two_layers):
    with pytest.raises(UnreachableBudget, match=r"^budget\.params: .*smallest reachable is 0\.142"):
        allocate(two_layers, params=0.1)


def test_a_budget_outside_the_unit_interval_is_refused(two_layers):
    with pytest.raises(ValueError, match=r"^budget\.params: must be a fraction in \(0, 1\]"):
        allocate(two_layers, params=1.5)
