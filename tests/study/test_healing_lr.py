"""A warm trial heals at trainer.optimizer.lr x heal.lr_scale."""

import pytest

from tests.helpers import compose_cfg
from tnsearch.cli import resolve
from tnsearch.config import ConfigError, check_heal
from tnsearch.study.trial_training import healing_optimizer


def test_a_warm_trial_heals_at_a_scaled_learning_rate():
    cfg = resolve(compose_cfg(["study=resnet", "data=mnist5k"]))
    assert cfg.heal.lr_scale == 0.1
    base = cfg.trainer.optimizer["lr"]
    assert healing_optimizer(cfg, warm=True)["lr"] == pytest.approx(base * 0.1)
    assert healing_optimizer(cfg, warm=False)["lr"] == base  # from scratch: as configured
    assert cfg.trainer.optimizer["lr"] == base  # the config is not changed


@pytest.mark.parametrize(("key", "value"), [("lr_scale", 0), ("lr_scale", "x"), ("epochs", -1)])
def test_bad_healing_values_name_the_key(key, value):
    heal = resolve(compose_cfg([])).heal.to_dict()
    with pytest.raises(ConfigError, match=rf"^heal\.{key}: must be"):
        check_heal({**heal, key: value})
