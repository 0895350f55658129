"""The search space: eligible layers, define-by-run choices, and bad `space.*` values."""

from __future__ import annotations

import optuna
import pytest
from torch import nn

from tnsearch import models, tn
from tnsearch.config import ConfigError
from tnsearch.space import Space, candidate_layers

SPACE = {
    "layers": ["*"],
    "exclude": [],
    "min_size": 1024,
    "granularity": "layer",
    "group_depth": 1,
    "topologies": ["mpo", "tucker", "cp", "tree"],
    "orders": [1, 2, 3],
    "ranks": [2, 4, 8],
    "factorizations": "search",
}


def resnet() -> nn.Module:
    return models.ResNet(depth=8, width=8, in_channels=1, image_size=28, num_classes=10)


def space(**changes) -> dict:
    return {**SPACE, **changes}


def test_min_size_and_exclude_decide_eligibility():
    net = resnet()
    s = Space.from_config(space(exclude=["conv1"]), net)
    names = [layer.name for layer in s.layers]
    assert "conv1" not in names
    assert all(layer.size >= 1024 for layer in s.layers)
    small = [c.name for c in candidate_layers(net) if c.size < 1024]
    assert small and not set(small) & set(names)


def test_group_granularity_shares_one_choice_per_group():
    s = Space.from_config(space(granularity="group", group_depth=1), resnet())
    assert set(s.groups) <= {"conv1", "layer1", "layer2", "layer3", "fc"}
    assert len(s.groups["layer2"]) >= 2
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        chosen = s.suggest(trial)
        members = [layer.name for layer in s.groups["layer2"]]
        picked = [chosen[n] for n in members if n in chosen]
        assert len(picked) in (0, len(members))
        if picked:
            assert len({(p["topology"], p["rank"], p["order"]) for p in picked}) == 1
        study.tell(trial, 0.0)


def test_dense_params_keep_every_layer_dense():
    s = Space.from_config(SPACE, resnet())
    trial = optuna.trial.FixedTrial(s.dense_params())
    assert s.suggest(trial) == {}


def test_precisions_are_one_choice_per_group_dense_or_tensorized():
    s = Space.from_config(space(granularity="group", precisions=["fp32", "int8"]), resnet())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        layers, precision = s.suggest(trial), s.suggest_precision(trial)
        assert set(precision) == {layer.name for layer in s.layers}  # dense ones too
        for group, members in s.groups.items():
            assert len({precision[m.name] for m in members}) == 1
            assert trial.params[f"{group}.precision"] == precision[members[0].name]
            seen.add((precision[members[0].name], members[0].name in layers))
        # enqueuing the plan asks for the same choices again
        again = optuna.trial.FixedTrial(s.params_for(layers, precision))
        assert s.suggest(again) == layers and s.suggest_precision(again) == precision
        study.tell(trial, 0.0)
    assert {("int8", True), ("int8", False), ("fp32", True), ("fp32", False)} <= seen
    dense = optuna.trial.FixedTrial(s.dense_params())
    assert set(s.suggest_precision(dense).values()) == {"fp32"} and s.suggest(dense) == {}


def test_one_precision_asks_nothing():
    s = Space.from_config(SPACE, resnet())
    trial = optuna.trial.FixedTrial(s.dense_params())
    assert set(s.suggest_precision(trial).values()) == {"fp32"}
    assert not any(k.endswith(".precision") for k in s.dense_params())


def test_suggested_modes_multiply_to_at_least_the_dimension():
    s = Space.from_config(SPACE, resnet())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_orders = set()
    for _ in range(30):
        trial = study.ask()
        for name, spec in s.suggest(trial).items():
            layer = next(x for x in s.layers if x.name == name)
            assert len(spec["in_modes"]) == len(spec["out_modes"]) == spec["order"]
            assert layer.in_dim <= _prod(spec["in_modes"]) < 2 * layer.in_dim
            assert layer.out_dim <= _prod(spec["out_modes"]) < 2 * layer.out_dim
            assert spec["topology"] in tn.TOPOLOGIES
            seen_orders.add(spec["order"])
        study.tell(trial, 0.0)
    assert seen_orders == {1, 2, 3}


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"topologies": ["mpo", "banana"]}, "space.topologies"),
        ({"ranks": [0, 4]}, "space.ranks"),
        ({"orders": [2, 9]}, "space.orders"),
        ({"orders": [0]}, "space.orders"),
        ({"layers": ["layer9.*"]}, "space.layers"),
        ({"exclude": ["nothing*"]}, "space.exclude"),
        ({"min_size": 10**9}, "space.layers"),
        ({"granularity": "block"}, "space.granularity"),
        ({"factorizations": "all"}, "space.factorizations"),
        ({"precisions": ["fp32", "int4"]}, "space.precisions"),
        ({"precisions": []}, "space.precisions"),
        ({"precisions": ["int8", "int8"]}, "space.precisions"),
    ],
)
def test_bad_space_values_name_the_key(changes, key):
    with pytest.raises(ConfigError) as info:
        Space.from_config(space(**changes), resnet())
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)
