"""The parent run's figures, params and description of a study."""

from __future__ import annotations

from tests.helpers import compose_cfg, constructed_study, constructed_trial
from tnsearch.cli import resolve
from tnsearch.results import summary


def _study():
    return constructed_study(
        [
            constructed_trial(0.95, 50610, 1.0),
            constructed_trial(0.90, 9000, 0.61234, {"fc1": ("mpo", 2, 4)}),
            constructed_trial(0.50, 8000, 2.0, {"fc1": ("cp", 2, 2)}, trained=False),
        ]
    )


def test_metrics_tell_the_study_rounded():
    found = summary.metrics(_study())
    assert found["best_accuracy"] == 0.95 and found["dense_accuracy"] == 0.95
    assert found["dense_param_count"] == 50610 and found["trials_trained"] == 2
    assert found["pareto_trials"] == 2 and 0 < found["hypervolume"] <= 1
    assert found["hypervolume"] == round(found["hypervolume"], 4)


def test_description_is_the_front_as_a_markdown_table():
    text = summary.description(_study(), ["accuracy", "param_count", "latency_ratio"])
    assert "| trial | accuracy | param_count |" in text
    assert "| 1 | 0.9000 | 9,000 |" in text and "0.612x" in text
    assert "| 2 |" not in text  # not trained: not on the front


def test_params_are_the_resolved_space_and_budget():
    found = summary.params(resolve(compose_cfg(["study=mlp"])))
    assert found["space.topologies"] == "['mpo', 'tucker', 'cp', 'tree']"
    assert found["budget.params"] == "None" and found["objectives"]
