"""The names people see for a trial's figures, and how each is rounded (`tnsearch.ui.names`)."""

from __future__ import annotations

import pytest

from tnsearch.ui.names import rounded, shown


def test_rounded_as_people_read_them():
    assert rounded("compression", 8.390294561) == 8.39
    assert rounded("latency_ratio", 0.612345) == 0.612
    assert rounded("latency_ratio_p90", 1.23456) == 1.235
    assert rounded("latency_ms", 12.34567) == 12.35
    assert rounded("dense_latency_ms", 0.0512345) == 0.05123  # the same figure as a trial's
    assert rounded("param_count", 50610) == 50610
    assert rounded("hypervolume", 0.123456) == 0.1235


def test_a_trials_quality_is_logged_as_measured_the_studys_best_to_4_digits():
    assert rounded("accuracy", 0.912345678) == 0.912345678
    assert rounded("best_accuracy", 0.912345678) == 0.9123
    assert rounded("dense_fidelity", 12.34567) == 12.35
    assert rounded("trials_trained", 3) == 3.0


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("quality", "val_f1"),
        ("test_quality", "test_f1"),
        ("zero_shot_quality", "zero_shot_val_f1"),
        ("params", "param_count"),
        ("compression", "compression"),
        ("latency_ratio", "latency_ratio"),
    ],
)
def test_shown_names_the_quality_after_the_task(field, name):
    assert shown(field, "val_f1") == name
