"""Every config file composes, and every object it names can be built."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.utils import instantiate

from tests.helpers import compose_cfg
from tnsearch.cli import resolve
from tnsearch.config import Config, ConfigError
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
    cfg = resolve(compose_cfg([f"study={study}"]))  # checked as it is loaded
    assert isinstance(cfg, Config)
    assert cfg.name == study
    assert cfg.tracking.uri == "sqlite:///studies/mlflow.db"
    assert cfg.objectives == ["quality", "params", "latency"]


def test_cli_group_choice_beats_the_preset():
    cfg = resolve(compose_cfg(["study=resnet", "data=mnist5k"]))
    assert cfg.data["_target_"].endswith("MNIST5kDataModule")
    assert cfg.model["depth"] == 20


#: What a model config needs besides its group choice (hf: a saved folder, tests/test_hf_model.py).
MODEL_NEEDS = {"custom": ["model._target_=tnsearch.models.MLP"]}


@pytest.mark.parametrize("model", [m for m in options("model") if m != "hf"])
def test_every_model_config_builds(model):
    from tnsearch import plan as plans

    cfg = resolve(compose_cfg([f"model={model}", *MODEL_NEEDS.get(model, [])]))
    inputs = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    net = plans.build_dense(
        plans.make(cfg.model, inputs, {}), trusted=plans.trusted_models(cfg.model)
    )
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("data", ["digits", "mnist5k"])
def test_embedded_data_configs_build(data):
    cfg = resolve(compose_cfg([f"data={data}"]))
    dm = instantiate(cfg.data)
    dm.check()
    assert dm.num_classes == 10


@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_file_data_configs_build_and_name_the_missing_root(data, tmp_path):
    cfg = resolve(compose_cfg([f"data={data}", f"data.root={tmp_path}"]))
    dm = instantiate(cfg.data)
    with pytest.raises(FileNotFoundError, match=r"^data\.root: "):
        dm.check()


@pytest.mark.parametrize("sampler", options("sampler"))
def test_every_sampler_config_builds(sampler):
    cfg = resolve(compose_cfg([f"sampler={sampler}"]))
    assert isinstance(instantiate(cfg.sampler), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_local_storage_configs_build(storage, tmp_path):
    cfg = resolve(compose_cfg([f"storage={storage}", f"root={tmp_path}"]))
    store = instantiate(cfg.storage)
    optuna.create_study(storage=store, study_name="x")
    assert str(tmp_path) in str(list(tmp_path.rglob("*"))[0])


def test_postgres_needs_a_url():
    with pytest.raises(ConfigError, match=r"^storage\.url: is required"):
        resolve(compose_cfg(["storage=postgres"]))


def test_trainer_optimizer_is_a_partial():
    cfg = resolve(compose_cfg([]))
    import torch

    make = instantiate(cfg.trainer.optimizer)
    opt = make([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.SGD)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objectives=[accuracy,memory]", "objectives"),
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
    with pytest.raises(ConfigError) as info:
        check_objectives(resolve(compose_cfg([override])))
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)


# -- the typed configuration (tnsearch.config.schema) ------------------------------------------


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        *[("config", [f"study={study}"]) for study in options("study")],
        ("config", ["model=hf", "model.path=x", "data=text", "task=distill", "storage=sqlite"]),
        ("report", []),
        ("export", ["trial=3"]),
        ("probe", ["trial=3", "layer=fc1", "bond=0"]),
    ],
)
def test_the_schema_holds_every_key_of_every_config(config, overrides):
    """The typed config gives back exactly the composed data: no YAML key is missing from the
    schema (it would be refused) and none is changed on the way (an int stays an int)."""
    from omegaconf import OmegaConf

    from tnsearch.config import SCHEMAS, load

    composed = OmegaConf.to_container(compose_cfg(overrides, config=config), resolve=True)
    typed = load(composed)
    assert type(typed) is SCHEMAS[config]
    assert typed.to_dict() == composed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("space.ranks=[2,a]", "space.ranks[1]: must be an integer, got 'a'"),
        ("space.ranks=4", "space.ranks: must be a list, e.g. space.ranks=[...], got 4"),
        ("heal.alpha=0.5x", "heal.alpha: must be a number in [0, 1], got '0.5x'"),
        ("decompose.batchnorm=maybe", "decompose.batchnorm: must be true or false, got 'maybe'"),
        ("+colour=red", "colour: is not a key of this config"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        resolve(compose_cfg([override]))
    assert str(info.value) == message


def test_code_reads_attributes_and_a_section_builds_from_plain_data():
    from tnsearch.config import LatencyConfig, TrainerConfig

    cfg = resolve(compose_cfg(["latency.threads=2", "trials=3"]))
    assert (cfg.trials, cfg.latency.threads, cfg.latency.batch_size) == (3, 2, 64)
    assert LatencyConfig.of(cfg.latency) is cfg.latency
    partial = LatencyConfig.of({"repeats": "7"})  # what a command line gives: converted
    assert (partial.repeats, partial.warmup) == (7, LatencyConfig().warmup)
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator: "):
        TrainerConfig.of({"accelerator": ["cpu"]})


def test_a_primary_config_of_ones_own_takes_the_schema_as_its_base(tmp_path):
    """Registered in Hydra's ConfigStore, the schema makes Hydra itself check the types while it
    composes a user's primary config that names it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from tnsearch.config import Config, LatencyConfig, register

    register()
    (tmp_path / "mine.yaml").write_text("defaults:\n  - schema/config\n  - config\n  - _self_\n")
    with initialize_config_dir(str(tmp_path), version_base=None):
        search = "hydra.searchpath=[pkg://tnsearch.conf]"
        cfg = compose("mine", overrides=[search, "trials=5"])
        assert OmegaConf.get_type(cfg) is Config
        assert OmegaConf.get_type(cfg, "latency") is LatencyConfig
        assert cfg.trials == 5
        with pytest.raises(ConfigCompositionException):
            compose("mine", overrides=[search, "trials=five"])
