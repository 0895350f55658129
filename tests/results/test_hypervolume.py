"""The hypervolume's one reference point: a front of tensorized trials slower than dense counts."""

from __future__ import annotations

from tests.helpers import constructed_study, constructed_trial
from tnsearch.results import pareto


def test_a_tensorized_trial_slower_than_dense_adds_to_the_hypervolume():
    dense = constructed_trial(0.95, 50610, 1.0)
    slower = constructed_trial(0.94, 5000, 2.0, {"fc1": ("mpo", 2, 8)})  # 10x smaller, 2x slower
    alone = pareto.hypervolume(constructed_study([dense]))
    both = pareto.hypervolume(constructed_study([dense, slower], name="both"))
    # its box: (1 - 0.94) .. 1 x 5000/50610 .. 1.1 x 2.0 .. 3.0, beyond the dense trial's
    assert both > alone > 0
    too_slow = constructed_trial(
        0.94, 5000, pareto.REFERENCE["latency"] + 0.1, {"fc1": ("cp", 2, 2)}
    )
    assert pareto.hypervolume(constructed_study([dense, too_slow], name="slow")) == alone


def test_the_reference_point_says_what_each_coordinate_is():
    text = pareto.reference_text("accuracy", ["accuracy", "param_count", "latency_ratio"])
    assert text == "accuracy 0 (1 - accuracy = 1), parameters 1.1x dense, latency 3x dense"
    assert pareto.reference_text("fidelity", ["fidelity", "param_count"]) == (
        "fidelity 0 (1 - fidelity = 1), parameters 1.1x dense"
    )
