"""Bond analysis and truncation: known ranks, canonical spectra, exactness and energy kept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tnsearch
from tnsearch import bonds, tn
from tnsearch import plan as plans

#: Small layers: (name, module, input shape, tensorize kwargs).
CASES = [
    ("linear_o2", lambda: nn.Linear(36, 24), (5, 36), {"order": 2}),
    ("linear_padded", lambda: nn.Linear(30, 7), (3, 30), {"in_modes": (4, 8), "out_modes": (2, 4)}),
    ("linear_o3", lambda: nn.Linear(27, 8), (5, 27), {"order": 3}),
    ("conv_o1", lambda: nn.Conv2d(8, 16, 3, stride=2), (2, 8, 9, 9), {"order": 1}),
    ("conv_o2", lambda: nn.Conv2d(16, 12, 3, padding=1), (2, 16, 6, 6), {"order": 2}),
]
IDS = [c[0] for c in CASES]
TOPOLOGIES = sorted(tn.TOPOLOGIES)


def make(case, topology: str, *, rank: int = 64, dtype=torch.float32) -> tn.TNLayer:
    _, module, _, kwargs = case
    torch.manual_seed(0)
    rank = min(rank, 16) if topology == "cp" else rank  # CP-ALS is slow at high rank
    layer = tn.tensorize(module().to(dtype), topology=topology, rank=rank, **kwargs)
    layer.path = "einsum"
    return layer


def nonzero(bond: bonds.Bond) -> int:
    return sum(1 for v in bond.singular_values if v > 1e-10)


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def weight_tensor(layer: tn.TNLayer) -> tuple[torch.Tensor, list[str]]:
    """The (unpadded) weight as ``(n.., m.., [k])`` float64, and the mode name of each axis."""
    d, g = len(layer.in_modes), layer.geometry
    w = layer.dense_weight().detach().double()
    w = w.reshape(*layer.out_modes, *layer.in_modes, *((g.kernel,) if g.conv else ()))
    return w, [f"n{k}" for k in range(d)] + [f"m{k}" for k in range(d)] + ["k"] * g.conv


def linear_from(weight: torch.Tensor) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


# -- known ranks ---------------------------------------------------------------------------------


def test_mpo_of_known_rank_has_exactly_that_many_singular_values():
    ins, outs, ranks = (2, 3, 2, 2), (2, 2, 3, 2), (2, 1, 3)
    g = torch.Generator().manual_seed(0)
    r = [1, *ranks, 1]
    cores = [torch.randn(r[k], ins[k], outs[k], r[k + 1], generator=g).double() for k in range(4)]
    w = torch.einsum("aibx,xjcy,ykdz,zlew->bcdeijkl", *cores).reshape(24, 24)  # (N, M)
    layer = tn.tensorize(linear_from(w), topology="mpo", rank=16, in_modes=ins, out_modes=outs)
    assert layer.rank == (4, 16, 4)  # larger than the true ranks
    found = bonds.analyze(nn.Sequential(layer))["0"]
    assert [nonzero(b) for b in found.bonds] == [2, 1, 3] == [b.rank for b in found.bonds]
    assert [b.modes for b in found.bonds][:2] == [("m0", "n0"), ("m0", "n0", "m1", "n1")]
    assert found.bonds[1].entropy == pytest.approx(0.0, abs=1e-12)
    assert min(found.bonds[0].entropy, found.bonds[2].entropy) > 0.1
    for b in found.bonds:
        assert sum(v * v for v in b.singular_values) == pytest.approx(1.0)
        assert b.entropy <= math.log(b.rank) + 1e-12
    assert found.norm == pytest.approx(w.norm().item())

    # Any gauge on the bonds (G, G^-1) gives the same canonical spectra.
    with torch.no_grad():
        for k, core in enumerate(layer.factors()[:-1]):
            n = core.shape[-1]
            gauge = (
                torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=g).double()
            )
            core.copy_(core @ gauge)
            nxt = layer.factors()[k + 1]
            nxt.copy_(torch.tensordot(torch.linalg.inv(gauge), nxt, dims=([1], [0])))
    again = bonds.analyze_layer(layer)
    for a, b in zip(found.bonds, again.bonds, strict=True):
        torch.testing.assert_close(
            f64(a.singular_values), f64(b.singular_values), atol=1e-10, rtol=0
        )
    exact = bonds.truncate(layer, energy=1.0)
    assert isinstance(exact, tn.MPOLayer) and exact.rank == (2, 1, 3)


def test_tree_of_known_rank_has_exactly_that_many_singular_values():
    # Hierarchical Tucker with edge ranks m0:1, n0:2, (m0 n0):2, m1:3, n1:2, (m1 n1):2.
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).double()

    m0, n0, m1, n1 = 3, 4, 4, 3
    w = torch.einsum(
        "ia,jb,abx,kc,ld,cdy,xy->jlik",
        *(rand(m0, 1), rand(n0, 2), rand(1, 2, 2), rand(m1, 3), rand(n1, 2), rand(3, 2, 2)),
        rand(2, 2),
    ).reshape(n0 * n1, m0 * m1)
    layer = tn.tensorize(
        linear_from(w), topology="tree", rank=16, in_modes=(m0, m1), out_modes=(n0, n1)
    )
    assert layer.rank == (3, 4, 12, 4, 3, 12)  # m0 keeps no factor: it is an open mode
    found = bonds.analyze_layer(layer)
    assert [nonzero(b) for b in found.bonds] == [1, 2, 2, 3, 2, 2]
    assert [b.modes for b in found.bonds] == [("m0",), ("n0",), ("m0", "n0"), ("m1",), ("n1",)] + [
        ("m1", "n1")
    ]
    assert found.bonds[0].entropy == pytest.approx(0.0, abs=1e-12)
    assert all(b.entropy > 1e-6 for b in found.bonds[1:]), [b.entropy for b in found.bonds]
    exact = bonds.truncate(layer, energy=1.0)
    # m1 (rank 3 of 4) stays without a factor: cutting it would add more than it saves.
    assert exact.rank == (1, 2, 2, 4, 2, 2) and "leaf_m0" in exact.network.names
    x = torch.randn(3, m0 * m1, dtype=torch.float64)
    torch.testing.assert_close(exact(x), layer(x), atol=1e-10, rtol=1e-10)


# -- contract over the registry ------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_topology_declares_its_bond_layout(topology):
    cls = tn.TOPOLOGIES[topology]
    assert cls.bond_layout is not tn.TNLayer.bond_layout, f"{cls.__name__} declares no layout"
    for case in CASES:
        torch.manual_seed(0)
        kwargs = case[3]
        layer = tn.tensorize(case[1](), topology=topology, rank=3, init="random", **kwargs)
        layout = layer.bond_layout()
        assert isinstance(layout, tn.BondLayout) and bonds.method(layer) is not None
        if isinstance(layout, tn.TreeLayout):
            assert len(layout.bonds) == len(layer.rank) and layout.root in layer.network.names
            index = list(layout.bonds)
        else:
            assert all(layout.component in idx for idx in layer.network.factors)
            index = [layout.component]
        found = bonds.analyze_layer(layer)  # analyzable
        assert [b.index for b in found.bonds] == index and len(index) == len(layer.rank)


def test_a_layer_without_a_layout_is_not_analyzed():
    class Opaque(tn.MPOLayer):  # not registered: only its missing layout matters here
        topology = "opaque"

        def bond_layout(self):
            return None

    layer = Opaque.from_module(nn.Linear(6, 6), rank=2, in_modes=(2, 3), out_modes=(3, 2))
    assert bonds.method(layer) is None and bonds.analyze(nn.Sequential(layer)) == {}
    with pytest.raises(ValueError, match="^topology: no bond analysis for 'opaque'"):
        bonds.analyze_layer(layer)
    copied = bonds.truncate(layer)
    assert type(copied) is Opaque and copied is not layer and copied.rank == layer.rank


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_spectra_are_those_of_the_weight_across_each_bond(case, topology):
    layer = make(case, topology, rank=8, dtype=torch.float64)
    assert bonds.method(layer) is not None, f"no bond method for topology {topology!r}"
    found = bonds.analyze_layer(layer, energy=0.95)
    assert found.topology == topology and found.rank == layer.rank
    assert found.padded == (case[0] == "linear_padded")
    assert len(found.bonds) == len(layer.rank)
    for b in found.bonds:
        s = b.singular_values
        assert list(s) == sorted(s, reverse=True) and sum(v * v for v in s) == pytest.approx(1)
        assert b.effective_rank == b.rank_at(0.95) and b.kept(b.effective_rank) >= 0.95 - 1e-12
        assert b.effective_rank == 1 or b.kept(b.effective_rank - 1) < 0.95
    if found.kind != "singular values" or found.padded:  # (the spectra include the padding)
        return
    w, axes = weight_tensor(layer)
    assert found.norm == pytest.approx(w.norm().item())
    for b in found.bonds:
        rows = [axes.index(m) for m in b.modes]
        mat = w.permute(rows + [a for a in range(w.dim()) if a not in rows])
        s = torch.linalg.svdvals(mat.reshape(math.prod(mat.shape[: len(rows)]), -1)) / w.norm()
        n = min(len(s), len(b.singular_values))
        torch.testing.assert_close(f64(b.singular_values[:n]), s[:n], atol=1e-9, rtol=0)
        assert max([*b.singular_values[n:], *s[n:].tolist(), 0.0]) < 1e-9


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_truncate_at_full_energy_changes_no_output(case, topology):
    layer = make(case, topology)
    model = nn.Sequential(layer, nn.Identity())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = tnsearch.truncate(model, energy=1.0)
    new = small[0]
    assert type(new) is type(layer) and new is not layer
    assert all(a <= b for a, b in zip(new.rank, layer.rank, strict=True))
    assert tn.n_params(small) <= tn.n_params(model)
    x = torch.randn(case[2])
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(new.to_dense().weight, layer.dense_weight())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("case", CASES[::3], ids=IDS[::3])
def test_truncate_keeps_the_energy_of_each_bond(case, topology):
    layer = make(case, topology, dtype=torch.float64)
    found = bonds.analyze_layer(layer, energy=0.9)
    small = bonds.truncate(layer, energy=0.9)
    assert small.n_params < layer.n_params
    kept = [b.kept(r) for b, r in zip(found.bonds, small.rank, strict=True)]
    assert min(kept) >= 0.9 - 1e-12, kept
    if found.kind == "singular values":  # each cut is an orthogonal projection at its bond
        w, w_small = layer.dense_weight(), small.dense_weight()
        error = ((w - w_small).norm() / w.norm()).item() ** 2
        assert error <= sum(1 - k for k in kept) + 1e-9


# -- models, plans, CP, errors -------------------------------------------------------------------


def test_cp_drops_zero_components_exactly():
    layer = make(CASES[0], "cp", dtype=torch.float64)
    with torch.no_grad():
        layer.factors()[0][[3, 7]] = 0.0  # two components of norm 0
    found = bonds.analyze_layer(layer)
    assert found.kind == "component norms" and found.bonds[0].rank == layer.rank[0] - 2
    small = bonds.truncate(layer, energy=1.0)
    assert small.rank == (layer.rank[0] - 2,)
    x = torch.randn(4, 36, dtype=torch.float64)
    torch.testing.assert_close(small(x), layer(x))


def test_truncated_plan_rebuilds_the_truncated_model():
    layers = {
        "fc1": {"topology": "mpo", "order": 2, "rank": 16},
        "fc2": {"topology": "tree", "order": 2, "rank": 8},
        "fc3": {"topology": "tucker", "order": 1, "rank": 4},
    }
    for spec in layers.values():
        spec.update(in_modes=None, out_modes=None)
    model_cfg = {"_target_": "tnsearch.models.MLP", "hidden": [120, 40]}
    plan = plans.make(model_cfg, {"in_channels": 1, "image_size": 8, "num_classes": 10}, layers)
    torch.manual_seed(0)
    model = plans.build(plan)
    plan = plan.but(params=tn.n_params(model))
    small = bonds.truncate(model, energy=0.8)
    assert tn.n_params(small) < tn.n_params(model)
    new_plan = bonds.truncated_plan(plan, small)
    assert new_plan["params"] == tn.n_params(small) and plan.layers["fc1"]["rank"] == 16
    rebuilt = plans.build(new_plan)
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), small(x))
    with pytest.raises(ValueError, match="^plan: layer 'fc1' is not a cp layer"):
        bonds.truncated_plan(plan.but(layers={"fc1": {"topology": "cp"}}), small)


@pytest.mark.parametrize("energy", [0, 1.5, -0.1, "0.9", True])
def test_energy_must_be_in_0_1(energy):
    layer = make(CASES[0], "mpo", rank=4)
    with pytest.raises(ValueError, match="^energy: "):
        bonds.truncate(layer, energy=energy)
    with pytest.raises(ValueError, match="^energy: "):
        bonds.analyze(layer, energy=energy)


# -- the report section --------------------------------------------------------------------------


def _trial(number, accuracy, layers, root):
    import optuna

    from tests.helpers import _INPUTS

    specs = {
        name: {"topology": t, "order": o, "rank": r, "in_modes": None, "out_modes": None}
        for name, (t, o, r) in layers.items()
    }
    plan = plans.make({"_target_": "tnsearch.models.MLP", "hidden": [32, 16]}, _INPUTS, specs)
    torch.manual_seed(number)
    model = plans.build(plan)
    folder = root / "bonds" / "trials" / str(number)
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    params = tn.n_params(model)
    attrs = {"plan": plan.but(params=params).to_json(), "params": params, "accuracy": accuracy}
    attrs.update(latency_ms=0.1, trained=True, compression=2618 / params)
    return optuna.trial.create_trial(values=[accuracy, params, 0.1], user_attrs=attrs)


def test_report_section_shows_spectra_and_truncation(tmp_path):
    from tests.helpers import constructed_study
    from tests.test_report import check_html
    from tnsearch.report import SECTIONS, build_report

    trials = [
        _trial(0, 0.9, {}, tmp_path),
        _trial(1, 0.8, {"fc1": ("mpo", 2, 8), "fc2": ("tucker", 1, 4)}, tmp_path),
        _trial(2, 0.7, {"fc1": ("tree", 2, 4), "fc2": ("cp", 1, 4)}, tmp_path),
    ]
    study = constructed_study(trials, name="bonds")
    data = {"_target_": "tnsearch.data.DigitsDataModule", "batch_size": 64, "seed": 0}
    cfg = {"root": str(tmp_path), "name": "bonds", "data": data}
    cfg["report"] = {"interactive": False, "bonds": {"max_trials": 5, "energy": 0.9}}
    (section,) = [s for s in SECTIONS if s.title == "Bonds"]
    text = build_report(study, cfg, sections=[section])
    checker = check_html(text)
    # a spectra figure per trial, and the truncation curve of the most accurate one
    assert len(checker.images) == 3 and "This section failed" not in text
    assert "Truncation you can trust: trial 1" in text and "1 (as trained)" in text
    assert "Dense, so without bonds: trial 0" in text
    assert "params at 90%" in text and "Accuracies left out" not in text
    for name in ("fc1 (mpo)", "fc2 (tucker)", "fc1 (tree)", "fc2 (cp)"):
        assert name.split()[0] in text
    # Without data the table still shows sizes; without weights the section says so.
    del cfg["data"]
    (tmp_path / "bonds" / "trials" / "2" / "weights.pt").unlink()
    text = build_report(study, cfg, sections=[section])
    assert "Accuracies left out" in text and "No trained weights found for trial 2" in text
    assert len(check_html(text).images) == 2
