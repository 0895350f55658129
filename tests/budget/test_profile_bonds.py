"""The profile records each option's bond quantities; profiles measured before them still load."""

from __future__ import annotations

import torch

from tnsearch import bonds
from tnsearch.budget import calibration
from tnsearch.budget.profile import Profile, Profiler, assemble
from tnsearch.models import MLP
from tnsearch.space import Space

SPACE = {
    "layers": ["*"],
    "exclude": [],
    "min_size": 1,
    "granularity": "layer",
    "group_depth": 1,
    "topologies": ["mpo", "tucker"],
    "orders": [2],
    "ranks": [2, 4],
    "factorizations": "balanced",
    "lr": None,
}


def test_each_option_holds_the_quantities_of_its_layers_as_built():
    torch.manual_seed(0)
    model = MLP(in_channels=1, image_size=4, num_classes=3, hidden=[12]).eval()
    space = Space.from_config(SPACE, model)
    x = torch.randn(32, 1, 4, 4)
    stats = calibration.collect(model, [x], [layer.name for layer in space.layers])
    profiler = Profiler(
        model, space, stats, lambda m: float((m(x).argmax(1) == 0).float().mean()), x[:8], steps=3
    )
    menu = [o for g in space.groups for o in profiler.menu(g)]
    measured = {o.key: profiler.measure(o) for o in menu}  # every option measured
    found = assemble(profiler.dense(), menu, measured, key="k", metric="accuracy", maximize=True)
    assert found.entries
    for e in found.entries:
        # the same layers built again the same way give the same quantities
        built = {}
        for name, spec in e.layers.items():
            dense = calibration._module_for(model, name)
            copy = MLP(in_channels=1, image_size=4, num_classes=3, hidden=[12])
            copy.load_state_dict(model.state_dict())
            calibration.tensorize(copy, {name: spec}, stats, steps=3)
            built[name] = (copy.get_submodule(name), dense)
        layers = {n: b[0] for n, b in built.items()}
        dense = {n: b[1] for n, b in built.items()}
        again = bonds.option_quantities(layers, dense, stats)
        assert set(e.bonds) == set(again) >= {"discarded", "discarded_white", "entropy"}
        assert all(abs(e.bonds[k] - again[k]) < 1e-6 for k in again)
    # a profile saved before the quantities existed (no "bonds" in its entries) still loads
    data = found.to_json()
    for entry in data["entries"]:
        del entry["bonds"]
    old = Profile.from_json(data)
    assert [e.bonds for e in old.entries] == [{}] * len(found.entries)
