"""Plans: space -> plan -> model, JSON round trip, and the parameter count a plan records."""

from __future__ import annotations

import optuna
import pytest
import torch

from tests.test_space import SPACE
from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.space import Space

MODELS = {
    "mlp": {"_target_": "tnsearch.models.MLP", "hidden": [300, 100]},
    "lenet5": {"_target_": "tnsearch.models.LeNet5"},
    "resnet": {"_target_": "tnsearch.models.ResNet", "depth": 8, "width": 8},
}
INPUTS = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def sampled_plans(model_cfg, n: int, seed: int = 0):
    dense = plans.build_dense(plans.make(model_cfg, INPUTS, {}))
    space = Space.from_config({**SPACE, "min_size": 256}, dense)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(plans.make(model_cfg, INPUTS, space.suggest(trial)))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_space_to_plan_to_model(name, tmp_path):
    x = torch.randn(2, 1, 28, 28)
    tensorized = 0
    for i, plan in enumerate(sampled_plans(MODELS[name], 4)):
        torch.manual_seed(i)
        model = plans.build(plan)
        plan = plan.but(params=tn.n_params(model))
        tensorized += len(plan.layers)
        for layer_name in plan.layers:
            assert isinstance(model.get_submodule(layer_name), tn.TNLayer)
        # JSON round trip: the same architecture, and the trained weights load into it.
        plans.save(plan, tmp_path / f"{i}.json")
        again = plans.load(tmp_path / f"{i}.json")
        assert again == plan
        rebuilt = plans.build(again)
        assert tn.n_params(rebuilt) == plan.params
        rebuilt.load_state_dict(model.state_dict())
        model.eval(), rebuilt.eval()
        torch.testing.assert_close(rebuilt(x), model(x))
    assert tensorized > 0


def test_dense_plan_builds_the_plain_model():
    plan = plans.make(MODELS["resnet"], INPUTS, {})
    model = plans.build(plan)
    assert not any(isinstance(m, tn.TNLayer) for m in model.modules())
    assert plans.summary(plan) == "dense"


def test_summary_and_flatten_describe_the_plan():
    plan = plans.make(
        MODELS["mlp"],
        INPUTS,
        {
            "fc1": {
                "topology": "mpo",
                "order": 2,
                "in_modes": [28, 28],
                "out_modes": [15, 20],
                "rank": 8,
            },
            "fc2": {
                "topology": "tucker",
                "order": 1,
                "in_modes": [300],
                "out_modes": [100],
                "rank": 4,
            },
        },
    )
    assert plans.summary(plan, eligible=3) == "mpo x1, tucker x1 (o1-2, r4-8), 1 dense"
    flat = plans.flatten(plan)
    assert flat["fc1.in_modes"] == "28x28"
    assert flat["fc2.topology"] == "tucker"
    assert flat["tensorized_layers"] == "2"


def test_unsupported_plan_version_is_refused(tmp_path):
    (tmp_path / "p.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match=r"^plan: unsupported version"):
        plans.load(tmp_path / "p.json")


def test_flatten_names_the_searched_layers_a_plan_keeps_dense():
    from tnsearch import plan as plans

    plan = {"model": {"_target_": "m"}, "layers": {"fc1": {"topology": "mpo", "rank": 4}}}
    flat = plans.flatten(plan, dense=["fc1", "fc2"])
    assert flat["fc1.topology"] == "mpo" and flat["fc1.rank"] == "4"
    assert flat["fc2.topology"] == "dense" and flat["fc2.rank"] == "0"
    assert "fc2.topology" not in plans.flatten(plan)


def test_precision_travels_with_the_plan_and_float32_is_left_out(tmp_path):
    layers = {"fc1": {"topology": "mpo", "order": 2, "in_modes": [8, 8], "out_modes": [10, 10],
                      "rank": 4}}  # fmt: skip
    plan = plans.make({"_target_": "m.MLP"}, {}, layers, {"fc1": "int8", "fc2": "fp32"})
    assert plan.precision == {"fc1": "int8"}
    assert plans.Plan.from_json(plan.to_json()) == plan
    assert "precision" not in plans.make({"_target_": "m.MLP"}, {}, layers).to_json()
    assert plans.summary(plan) == "mpo x1 (o2, r4), int8 x1"
    assert plans.summary(plans.make({}, {}, {}, {"fc1": "int8", "fc2": "int8"})) == "dense, int8 x2"
    assert plans.flatten(plan)["fc1.precision"] == "int8"
    with pytest.raises(ValueError, match="precision"):
        plans.Plan.from_json({"precision": {"fc1": 8}})
