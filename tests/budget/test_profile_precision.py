"""The profile at each precision: every tensorized option in float32 and int8, each group dense
in int8, the bytes of each counted exactly, and an allocation to a byte budget that builds the
model it predicts."""

from __future__ import annotations

import re

import pytest

from tests.budget.test_anytime_profile import ready_setup
from tnsearch.budget import allocate
from tnsearch.measure import precision, quantize

INT8_SPACE = ["profile.measure=all", "space.precisions=[fp32,int8]", "space.ranks=[4,16]",
              "space.orders=[2]", "space.topologies=[mpo,tucker]"]  # fmt: skip


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from tnsearch.study import sensitivity

    root = tmp_path_factory.mktemp("int8")
    ready = ready_setup(root, *INT8_SPACE)
    lines: list[str] = []
    found, _ = sensitivity.profile(ready, say=lines.append)
    return found, ready, root, lines


@pytest.mark.slow  # a pretrained LeNet-300-100 and 20 options measured: ~15 s
def test_each_option_is_profiled_at_each_precision_with_its_bytes_exact(measured):
    from tnsearch import plan as plans
    from tnsearch.study import sensitivity

    found, ready, _, _ = measured
    dense = sensitivity.dense_model(ready)
    assert found.dense_bytes == quantize.weight_bytes(dense) == 4 * found.dense_params
    by_key = {e.option: e for e in found.entries}
    for group, g in found.groups.items():
        assert g.bytes == 4 * g.params
        twin = by_key[(group, "dense", 0, 0, "int8")]  # the group left dense, in int8
        module = dense.get_submodule(group)
        assert twin.bytes == quantize.weight_bytes(module, "int8") < g.bytes / 3
        assert abs(twin.quality - found.dense_quality) <= 0.02  # int8 weights lose next to nothing
    tensorized = [e for e in found.entries if e.topology != "dense"]
    assert {e.precision for e in tensorized} == {"fp32", "int8"}
    for e in tensorized:
        if e.precision != "int8":
            continue
        fp32 = by_key[(*e.option[:4], "fp32")]
        assert e.params == fp32.params and e.layers == fp32.layers
        model = plans.build_dense(plans.make(ready.cfg.model, ready.inputs, {}))
        spec = e.layers[e.group]
        built = plans.tensorize_module(model.get_submodule(e.group), spec, init="random")
        assert fp32.bytes == quantize.weight_bytes(built) == 4 * e.params
        assert e.bytes == quantize.weight_bytes(built, "int8")
        bias = built.bias.numel()  # float32; each core: a byte an element, 5 for its scale
        assert e.bytes == 4 * bias + (e.params - bias) + 5 * len(built.network.names)
        assert e.error >= fp32.error - 1e-9  # int8 only adds to the decomposition's error
        assert abs(e.quality - fp32.quality) <= 0.03, (e.name, e.quality, fp32.quality)


@pytest.mark.slow
def test_a_byte_budget_builds_the_model_it_predicts(measured):
    from tnsearch.study import sensitivity

    found, ready, _, _ = measured
    chosen = sensitivity.budget_plan(ready, found, bytes=0.1)
    assert chosen.precision and chosen.bytes_fraction <= 0.1
    # only int8 meets it: float32 options of this space weigh at least 4 x their parameters
    fp32 = allocate.allocate(found, params=1.0)
    assert fp32.bytes_fraction > 0.1
    model, _ = sensitivity.build(ready, chosen.layers)
    size = precision.size_bytes(model, chosen.precision)
    assert size == round(chosen.bytes_fraction * found.dense_bytes)
    deployed = precision.deployed(model, chosen.precision)
    quality = sensitivity.evaluator(ready, deployed)()
    assert quality >= found.dense_quality - chosen.loss - 0.1  # the profile's sum, roughly


@pytest.mark.slow
def test_int8_options_are_files_of_their_own_and_a_rerun_measures_none(measured):
    from tnsearch.study import sensitivity

    found, _, root, lines = measured
    files = sorted(p.name for p in (root / "mlp" / "profile" / found.key).glob("*--*.json"))
    assert len(files) == len(found.entries)
    assert "fc1--dense-o0-r0-int8.json" in files and "fc1--mpo-o2-r4.json" in files
    assert "fc1--mpo-o2-r4-int8.json" in files
    assert any(" int8: " in line and " bytes, " in line for line in lines)  # progress
    again = ready_setup(root, *INT8_SPACE)
    redone, _ = sensitivity.profile(again, say=lines.append)
    assert [e.quality for e in redone.entries] == [e.quality for e in found.entries]


@pytest.mark.slow
def test_the_ladder_has_byte_rungs_when_int8_is_in_the_space(measured):
    """`search.bytes` (null: search.budgets' fractions when int8 is searched): the plans that
    lose least within a fraction of the dense bytes, enqueued with their precisions."""
    import optuna

    from tnsearch.study import sensitivity

    _, _, root, _ = measured
    ready = ready_setup(root, *INT8_SPACE, "search.budgets=[0.1]")
    assert sensitivity.byte_rungs(ready) == [0.1]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    lines: list[str] = []
    count = sensitivity.enqueue_ladder(ready, study, say=lines.append)
    rung = next(line for line in lines if line.startswith("budget bytes 0.1:"))
    assert "int8 x" in rung and float(re.search(r"([\d.]+) of the bytes", rung)[1]) <= 0.1
    fixed = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[-1].system_attrs[
        "fixed_params"
    ]
    assert count == 2 and any(v == "int8" for k, v in fixed.items() if k.endswith(".precision"))
    plain = ready_setup(root, "profile.measure=all", "search.budgets=[0.1]")
    assert sensitivity.byte_rungs(plain) == []  # float32 only: the params rung is the same plan


@pytest.mark.parametrize("value", ["[0]", "[1.5]"])
def test_a_byte_rung_outside_the_unit_interval_is_refused_before_anything_runs(tmp_path, value):
    from tests.helpers import compose_cfg
    from tnsearch.cli import resolve
    from tnsearch.config import ConfigError
    from tnsearch.study import setup

    with pytest.raises(ConfigError, match=r"must be fractions in \(0, 1\]") as found:
        setup.prepare(resolve(compose_cfg([f"root={tmp_path}", f"search.bytes={value}"])))
    assert found.value.key == "search.bytes" and not any(tmp_path.iterdir())
