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
    dense = tn.n_params(spec.build())

    def compression(fraction):  # counted on the built model, not on the per-layer estimate
        return dense / tn.n_params(hardware.tensorized(spec, topology, fraction))

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
    dense, spec = rows["dense"], hardware.MODELS["lenet300"]
    assert dense.train_ratio == pytest.approx(1.0) and dense.infer_ratio == pytest.approx(1.0)
    for name, row in rows.items():
        assert row.train_ms > 0 and row.infer_ms > 0
        assert row.train_ratio == pytest.approx(row.train_ms / dense.train_ms)
        if name == "dense":
            continue
        v = row.variant
        # run() drops a model's modules once its rows are taken: count the same model again
        built = hardware.tensorized(spec, v.topology, v.fraction)
        assert v.compression >= 3.0 and v.params == tn.n_params(built)
        if v.path == "auto":  # the auto row names the paths its layers picked
            assert row.picks and " / " in row.picks
    table = hardware.format_table(report.rows)
    assert table.count("\n| LeNet-300-100 |") == len(rows)
    assert any("not evaluated (no ResNet" in line for line in hardware.targets(report.rows, "cpu"))


def test_quick_flag_is_ci_sized():
    cfg = hardware.config(["--quick", "--device", "cpu"])
    assert cfg.models == ("resnet8", "lenet300") and cfg.dtypes == ("float32",)
    assert cfg.levels == hardware.LEVELS[:1] and not cfg.all_paths
    vs, top, seconds = hardware.plan(cfg)
    assert top >= 0 and seconds > 0  # the targets' pair is compiled
    assert {v.path for v in vs} == {"auto"} and len(vs) == 2 * (1 + len(tn.TOPOLOGIES))
