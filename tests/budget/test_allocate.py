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


def with_bytes(e: Entry, precision: str = "fp32") -> Entry:
    """`e` with its weights' bytes as deployed (float32: 4 a parameter; int8: 1, plus scales)."""
    from dataclasses import replace

    size = 4 * e.params if precision == "fp32" else e.params + 20
    return replace(e, precision=precision, bytes=size)


@pytest.fixture
def precisions() -> Profile:
    """One group, fp32 at ranks 2 and 8, int8 at rank 8, and dense int8."""
    groups = {"fc": Group(("fc",), 1000, 4.0, 4000), "head": Group(("head",), 100, 1.0, 400)}
    entries = [
        with_bytes(entry("fc", 2, 100, 0.60)),  # 400 bytes
        with_bytes(entry("fc", 8, 400, 0.88)),  # 1,600 bytes
        with_bytes(entry("fc", 8, 400, 0.878), "int8"),  # 420 bytes: rank 8 in int8
        with_bytes(
            Entry("fc", "dense", 0, 0, {}, 1000, 0.0, 1.0, 0.899, precision="int8"), "int8"
        ),  # 1,020 bytes
    ]
    found = profile(entries, groups)
    found.dense_bytes = 4000 + 400 + 400  # the groups and 100 parameters outside them
    return found


def test_a_byte_budget_takes_a_higher_rank_in_int8_over_a_lower_rank_in_float32(precisions):
    chosen = allocate(precisions, bytes=(420 + 400 + 400) / 4800)
    assert chosen.choices["fc"].option == ("fc", "mpo", 2, 8, "int8")
    assert chosen.precision == {"fc": "int8"} and chosen.layers == {"fc": {"rank": 8}}
    assert chosen.bytes_fraction == pytest.approx(1220 / 4800)
    # without int8 the same budget buys only rank 2 in float32
    fp32 = profile([e for e in precisions.entries if e.precision == "fp32"], precisions.groups)
    fp32.dense_bytes = precisions.dense_bytes
    assert allocate(fp32, bytes=1220 / 4800).choices["fc"].rank == 2


def test_a_group_may_stay_dense_in_int8(precisions):
    chosen = allocate(precisions, bytes=(1020 + 800) / 4800)
    assert chosen.choices["fc"].topology == "dense" and chosen.layers == {}
    assert chosen.precision == {"fc": "int8"}


def test_an_unreachable_byte_budget_names_its_key_and_the_precisions(precisions):
    with pytest.raises(UnreachableBudget, match=r"^budget\.bytes: no plan meets 0\.1; the smallest "
                       r"reachable is 0\.25 .*space\.precisions"):  # fmt: skip
        allocate(precisions, bytes=0.1)
    with pytest.raises(ValueError, match=r"^budget\.bytes: must be a fraction in \(0, 1\]"):
        allocate(precisions, bytes=0)


def test_a_profile_from_before_precisions_reads_as_float32(two_layers):
    """Entries and groups without bytes (profiles written before) weigh 4 bytes a parameter."""
    e = two_layers.entries[0]
    assert e.precision == "fp32" and e.weight_bytes == 4 * e.params
    assert two_layers.weight_bytes == 4 * two_layers.dense_params
    chosen = allocate(two_layers, bytes=1500 / 2100)
    assert chosen.bytes_fraction == pytest.approx(chosen.params_fraction)
