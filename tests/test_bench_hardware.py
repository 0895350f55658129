"""bench/hardware.py on a CI-sized grid: the rows, ratios and rank levels it reports are right.

Times are not checked (never gate CI on a wall-clock number); what the table claims about each
variant (parameters, compression, which path ran, ratio to the dense row) is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import hardware  # noqa: E402
from tnsearch import tn  # noqa: E402


@pytest.mark.parametrize("topology", ["tucker", "mpo"])
def test_rank_level_is_the_largest_fraction_that_is_small_enough(topology):
    spec = hardware.MODELS["lenet300"]
    f = hardware.rank_fraction(spec, topology, 3.0)
    dense = spec.build()
    layers = hardware._targets(dense, spec.layers)
    rest = tn.n_params(dense) - sum(tn.n_params(m) for m in layers.values())

    def compression(fraction):
        params = rest + sum(
            hardware._tn_params(
                tuple(m.weight.shape), m.bias is not None, topology, 2, hardware._rank(fraction, m)
            )
            for m in layers.values()
        )
        return tn.n_params(dense) / params

    assert compression(f) >= 3.0
    assert compression(f + 1 / 256) < 3.0


def test_eager_grid_rows_ratios_and_table():
    cfg = hardware.Config(
        models=("lenet300",),
        topologies=("tucker", "mpo"),
        levels=(3.0,),
        modes=("eager",),
        dtypes=("float32",),
        steps=2,
        batch=4,
        device="cpu",
        budget=60.0,
        max_wait=0.1,
    )
    report = hardware.run(cfg)
    rows = {r.variant.name: r for r in report.rows}
    expected = {"dense"} | {f"{t} >=3x auto" for t in cfg.topologies}
    for t in cfg.topologies:  # each path forced on every layer, beside the measured choice
        expected |= {f"{t} >=3x {p}" for p in tn.TOPOLOGIES[t].available_paths(conv=False)}
    assert set(rows) == expected
    dense = rows["dense"]
    assert dense.train_ratio == pytest.approx(1.0) and dense.infer_ratio == pytest.approx(1.0)
    for name, row in rows.items():
        assert row.train_ms > 0 and row.infer_ms > 0
        assert row.train_ratio == pytest.approx(row.train_ms / dense.train_ms)
        if name == "dense":
            continue
        v = row.variant
        assert v.compression >= 3.0 and v.params == tn.n_params(_rebuilt(v))
        if v.path == "auto":  # the auto row names the paths its layers picked
            assert row.picks and " / " in row.picks
    table = hardware.format_table(report.rows)
    assert table.count("\n| LeNet-300-100 |") == len(rows)
    assert any("not evaluated (no ResNet" in line for line in hardware.targets(report.rows, "cpu"))


def _rebuilt(variant):
    # run() drops a model's modules once its rows are taken; count the same model again
    spec = hardware.MODELS[variant.model]
    model = spec.build()
    for name, m in hardware._targets(model, spec.layers).items():
        layer = tn.tensorize(
            m, topology=variant.topology, rank=hardware._rank(variant.fraction, m), order=2
        )
        model.set_submodule(name, layer)
    return model


def test_quick_flag_is_ci_sized():
    cfg = hardware.config(["--quick", "--device", "cpu"])
    assert cfg.models == ("resnet8", "lenet300") and cfg.dtypes == ("float32",)
    assert cfg.levels == hardware.LEVELS[:1] and not cfg.all_paths
    vs, top, seconds = hardware.plan(cfg)
    assert top >= 0 and seconds > 0  # the targets' pair is compiled
    assert {v.path for v in vs} == {"auto"} and len(vs) == 2 * (1 + len(tn.TOPOLOGIES))
