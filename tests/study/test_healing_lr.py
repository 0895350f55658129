"""A warm trial heals at trainer.optimizer.lr x heal.lr_scale; `heal.layers=tensorized` trains
only the tensorized layers."""

import pytest
import torch
from torch import nn

from tests.helpers import compose_cfg
from tnsearch import tn
from tnsearch.cli import resolve
from tnsearch.config import ConfigError, check_heal
from tnsearch.measure import training
from tnsearch.study.trial_training import healing_optimizer


def test_a_warm_trial_heals_at_a_scaled_learning_rate():
    cfg = resolve(compose_cfg(["study=resnet", "data=mnist5k"]))
    assert cfg.heal.lr_scale == 0.1
    base = cfg.trainer.optimizer["lr"]
    assert healing_optimizer(cfg, warm=True)["lr"] == pytest.approx(base * 0.1)
    assert healing_optimizer(cfg, warm=False)["lr"] == base  # from scratch: as configured
    assert cfg.trainer.optimizer["lr"] == base  # the config is not changed


@pytest.mark.parametrize(
    ("key", "value"), [("lr_scale", 0), ("lr_scale", "x"), ("epochs", -1), ("layers", "dense")]
)
def test_bad_healing_values_name_the_key(key, value):
    heal = resolve(compose_cfg([])).heal.to_dict()
    with pytest.raises(ConfigError, match=rf"^heal\.{key}: must be"):
        check_heal({**heal, key: value})


def test_healing_the_tensorized_layers_keeps_the_dense_ones():
    torch.manual_seed(0)
    model = nn.Sequential(
        tn.tensorize(nn.Embedding(64, 16), topology="tucker", rank=4, order=1),
        tn.tensorize(nn.Linear(16, 16), topology="mpo", rank=2, order=2),
        nn.LayerNorm(16),
        nn.Linear(16, 4),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = tn.n_params(model)
    with training.dense_frozen(model) as frozen:
        assert frozen == 16 * 2 + 16 * 4 + 4  # the LayerNorm's and the last Linear's
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randint(0, 64, (8, 5))).square().mean().backward()
            opt.step()
    assert tn.n_params(model) == trainable  # the whole model is counted again
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("0.", "1.")) for k in changed)
    assert {k for k in after if k.startswith(("2.", "3."))}.isdisjoint(changed)
