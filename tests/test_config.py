"""Every config file composes, and every object it names can be built."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.utils import instantiate

from tests.helpers import compose_cfg
from tnsearch.cli import resolve
from tnsearch.config import ConfigError, check_basic
from tnsearch.study.setup import check_objectives

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_the_spec_options():
    assert options("study") == ["lenet", "minilm", "mlp", "quick", "resnet"]
    assert options("task") == ["classify", "distill", "lightning"]
    assert options("optimizer") == ["adamw", "sgd"]
    assert options("model") == ["custom", "hf", "lenet5", "mlp", "resnet"]
    assert options("data") == ["cifar10", "digits", "mnist", "mnist5k", "text"]
    assert options("sampler") == ["gp", "nsga2", "random", "tpe"]
    assert options("storage") == ["journal", "postgres", "sqlite"]


@pytest.mark.parametrize("study", options("study"))
def test_study_presets_compose_and_pass_the_basic_checks(study):
    cfg = resolve(compose_cfg([f"study={study}"]))
    assert cfg["name"] == study
    check_basic(cfg)
    assert cfg["tracking"]["uri"] == "sqlite:///studies/mlflow.db"
    assert cfg["objectives"] == ["quality", "params", "latency"]


def test_cli_group_choice_beats_the_preset():
    cfg = resolve(compose_cfg(["study=resnet", "data=mnist5k"]))
    assert cfg["data"]["_target_"].endswith("MNIST5kDataModule")
    assert cfg["model"]["depth"] == 20


#: What a model config needs besides its group choice (hf: a saved folder, tests/test_hf_model.py).
MODEL_NEEDS = {"custom": ["model._target_=tnsearch.models.MLP"]}


@pytest.mark.parametrize("model", [m for m in options("model") if m != "hf"])
def test_every_model_config_builds(model):
    from tnsearch import plan as plans

    cfg = resolve(compose_cfg([f"model={model}", *MODEL_NEEDS.get(model, [])]))
    inputs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    net = plans.build_dense(plans.make(cfg["model"], inputs, {}), trusted=plans.trusted_models(cfg))
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("data", ["digits", "mnist5k"])
def test_embedded_data_configs_build(data):
    cfg = resolve(compose_cfg([f"data={data}"]))
    dm = instantiate(cfg["data"])
    dm.check()
    assert dm.num_classes == 10


@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_file_data_configs_build_and_name_the_missing_root(data, tmp_path):
    cfg = resolve(compose_cfg([f"data={data}", f"data.root={tmp_path}"]))
    dm = instantiate(cfg["data"])
    with pytest.raises(FileNotFoundError, match=r"^data\.root: "):
        dm.check()


@pytest.mark.parametrize("sampler", options("sampler"))
def test_every_sampler_config_builds(sampler):
    cfg = resolve(compose_cfg([f"sampler={sampler}"]))
    assert isinstance(instantiate(cfg["sampler"]), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_local_storage_configs_build(storage, tmp_path):
    cfg = resolve(compose_cfg([f"storage={storage}", f"root={tmp_path}"]))
    store = instantiate(cfg["storage"])
    optuna.create_study(storage=store, study_name="x")
    assert str(tmp_path) in str(list(tmp_path.rglob("*"))[0])


def test_postgres_needs_a_url():
    with pytest.raises(ConfigError, match=r"^storage\.url: is required"):
        resolve(compose_cfg(["storage=postgres"]))


def test_trainer_optimizer_is_a_partial():
    cfg = resolve(compose_cfg([]))
    import torch

    make = instantiate(cfg["trainer"]["optimizer"])
    opt = make([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.SGD)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objectives=[accuracy,size]", "objectives"),
        ("objectives=[]", "objectives"),
        ("trials=0", "trials"),
        ("workers=0", "workers"),
        ("latency.repeats=0", "latency.repeats"),
        ("latency.dtype=float16", "latency.dtype"),
        ("trainer.compile=fast", "trainer.compile"),
        ("constraints.max_params=-5", "constraints.max_params"),
    ],
)
def test_basic_checks_name_the_key(override, key):
    cfg = resolve(compose_cfg([override]))
    with pytest.raises(ConfigError) as info:
        check_objectives(cfg)
        check_basic(cfg)
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)
