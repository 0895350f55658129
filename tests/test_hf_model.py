"""`model=hf`: a Hugging Face model with its pretrained weights from a local folder."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers import compose_cfg  # noqa: E402
from tnsearch.config import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT with random weights, saved as a Hugging Face folder (safetensors)."""
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bert")
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_from_pretrained_loads_the_saved_weights(bert_folder):
    from tnsearch import plan as plans

    plan = plans.make(
        {"_target_": "tnsearch.models.from_pretrained", "path": str(bert_folder)}, {}, {}
    )
    model = plans.build_dense(plan)  # tnsearch's own loader: no trust needed
    saved = transformers.BertModel.from_pretrained(bert_folder)
    ids = torch.randint(0, 64, (2, 5))
    assert torch.equal(model(ids).last_hidden_state, saved.eval()(ids).last_hidden_state)
    assert not model.training


def test_a_pretrained_model_starts_warm(bert_folder, tmp_path):
    from tnsearch.cli import resolve
    from tnsearch.study.setup import prepare

    cfg = resolve(
        compose_cfg([f"root={tmp_path}", "model=hf", f"model.path={bert_folder}", "data=digits"])
    )
    setup = prepare(cfg)
    saved = transformers.BertModel.from_pretrained(bert_folder).state_dict()
    assert setup.pretrained is not None and set(setup.pretrained) == set(saved)
    assert all(torch.equal(setup.pretrained[k], saved[k]) for k in saved)
    names = [layer.name for layer in setup.space.layers]
    assert "encoder.layer.0.attention.self.query" in names  # every Linear is a candidate


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("model.path={tmp}", "model.path", "is not a Hugging Face model folder"),
        ("model.auto_class=AutoTokenizer", "model.auto_class", "must be one of"),
    ],
)
def test_bad_hf_input_is_one_line(bert_folder, tmp_path, override, key, words):
    from tnsearch.__main__ import run as run_search

    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = [f"root={tmp_path}/r", "model=hf", f"model.path={bert_folder}", "data=digits"]
    overrides.append(override.format(tmp=empty))
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg(overrides))
    assert str(info.value).startswith(f"{key}: ") and words in str(info.value)
    assert not (tmp_path / "r").exists()


def test_pickled_weights_are_not_read(bert_folder, tmp_path):
    import shutil

    from tnsearch.models import from_pretrained

    folder = tmp_path / "bin"
    shutil.copytree(bert_folder, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"^model.path: .* no .safetensors weights"):
        from_pretrained(str(folder))
