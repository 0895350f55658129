"""ONNX export of every topology and path: the graph is the timed path, with a dynamic batch.

Real torch.onnx and onnxruntime. A factorized path's graph must never produce a tensor with as
many entries as the dense weight (its shape, or a flattened or transposed equivalent); the
reconstruct path does, which shows the check can fail.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from tests.tn.cases import TOPOLOGIES
from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.measure import onnx as onnx_export
from tnsearch.results.export import FILES, write_package
from tnsearch.study.record import Record

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: (the dense layer, its input shape without the batch, the order of each topology)
KINDS = {
    "linear": (lambda: nn.Linear(64, 48), (64,), {}),
    "conv": (lambda: nn.Conv2d(8, 12, 3, padding=1), (8, 6, 6), {"tucker": 1, "cp": 1}),
}
EXAMPLE_BATCH, OTHER_BATCH = 4, 7

FACTORIZED = [
    (topology, kind, path)
    for topology in TOPOLOGIES
    for kind in KINDS
    for path in tn.TOPOLOGIES[topology].available_paths(kind == "conv")
    if path != "reconstruct"
]


def tensorized(topology: str, kind: str, path: str) -> tuple[tn.TNLayer, tuple[int, ...]]:
    make, shape, orders = KINDS[kind]
    torch.manual_seed(0)
    order = orders.get(topology, 2)
    return tn.tensorize(make(), topology=topology, rank=4, order=order, path=path), shape


def static_shapes(path) -> list[tuple[int, ...]]:
    """The shape of every value the graph computes whose dimensions are all known."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = []
    for value in (*model.graph.value_info, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes.append(tuple(d.dim_value for d in dims))
    return shapes


def dense_sized(path, layer: tn.TNLayer) -> list[tuple[int, ...]]:
    """The computed values with as many entries as the dense weight (out, in[, kh, kw])."""
    g = layer.geometry
    entries = g.out_features * g.fan_in
    return [s for s in static_shapes(path) if math.prod(s) == entries]


def export(layer: tn.TNLayer, shape, path) -> onnx_export.Exported:
    example = torch.randn(EXAMPLE_BATCH, *shape, generator=torch.Generator().manual_seed(1))
    return onnx_export.export(layer, example, path, output_name="output")


@pytest.mark.parametrize(("topology", "kind", "path"), FACTORIZED)
def test_factorized_paths_export_with_a_dynamic_batch(tmp_path, topology, kind, path):
    layer, shape = tensorized(topology, kind, path)
    file = tmp_path / "layer.onnx"
    exported = export(layer, shape, file)
    assert exported.paths == {"": path} and exported.error < onnx_export.ONNX_TOLERANCE
    # (a) another batch size than the example's runs and matches PyTorch
    x = torch.randn(OTHER_BATCH, *shape, generator=torch.Generator().manual_seed(2))
    (got,) = onnx_export.session(file).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = layer(x).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    # (b) no node rebuilds the dense weight
    assert dense_sized(file, layer) == []


@pytest.mark.parametrize(("topology", "kind"), [("mpo", "linear"), ("tucker", "conv")])
def test_the_reconstruct_path_does_rebuild_the_dense_weight(tmp_path, topology, kind):
    layer, shape = tensorized(topology, kind, "reconstruct")
    export(layer, shape, tmp_path / "layer.onnx")
    g = layer.geometry
    dense = (g.out_features, g.in_features, *(g.kernel_size if g.conv else ()))
    assert dense in dense_sized(tmp_path / "layer.onnx", layer)


def test_auto_layers_are_exported_on_the_path_they_chose(tmp_path):
    """An auto layer is exported on its choice for the example's shape; a forced one on its own."""
    conv, shape = tensorized("tucker", "conv", "auto")
    forced = tn.tensorize(nn.Conv2d(12, 8, 3), topology="cp", rank=3, path="einsum")
    model = nn.Sequential(conv, nn.ReLU(), forced)
    example = torch.randn(EXAMPLE_BATCH, *shape)
    chosen = tn.freeze_paths(model, example, grad=False)["0"]
    exported = export(model, shape, tmp_path / "model.onnx")
    assert exported.paths == {"0": next(iter(chosen.values())), "2": "einsum"}
    assert conv.path == "auto"  # the model itself is left as it was


def test_package_readme_states_the_onnxruntime_ratio_to_dense(tmp_path):
    inputs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    fc1 = {"topology": "mpo", "order": 2, "rank": 4, "in_modes": [8, 8], "out_modes": [4, 8]}
    plan = plans.make({"_target_": "tnsearch.models.MLP", "hidden": [32]}, inputs, {"fc1": fc1})
    torch.save(plans.build(plan).state_dict(), tmp_path / "weights.pt")
    trial = Record(number=3, plan=plan, quality=0.5, params=1000, compression=2.0)
    out = write_package(trial, tmp_path / "weights.pt", tmp_path / "pkg", study_name="s")
    readme = (out / "README.md").read_text()
    ratio = (
        r"onnxruntime: \d+\.\d\dx the dense model's ONNX \(\d+\.\d{3} ms vs \d+\.\d{3} ms "
        r"per batch of 64, [^\n]+ \(\d+ threads\)"
    )
    assert re.search(ratio, readme), readme
    assert re.search(r"`fc1`: mpo, order 2, .*, ONNX path (reconstruct|einsum)\n", readme)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def _tiny_token_model(kind: str):
    """A tiny Hugging Face model with its word embedding and one projection tensorized."""
    transformers = pytest.importorskip("transformers")
    from tests.helpers import tiny_bert_config

    torch.manual_seed(0)
    if kind == "bert":
        model = transformers.BertModel(tiny_bert_config(90, positions=32))
        names = ("embeddings.word_embeddings", "encoder.layer.0.attention.self.query")
    else:
        config = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=98, n_positions=32, bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
        model = transformers.GPT2Model(config)
        names = ("wte", "h.0.attn.c_attn")  # a Hugging Face Conv1D
    spec = {"order": 2, "rank": 4, "in_modes": None, "out_modes": None}
    layers = {names[0]: {"topology": "mpo", **spec}, names[1]: {"topology": "tucker", **spec}}
    plans.tensorize(model, {"layers": layers}, init="decompose")
    return model.eval(), model.config.vocab_size


def _tokens(vocab: int, batch: int, length: int, names, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # a padded sequence
    found = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: found[n] for n in names}


@pytest.mark.slow  # about 10 s each: torch.export of a transformer
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_token_models_export_with_dynamic_batch_and_sequence(tmp_path, kind):
    """Inputs named as Hugging Face's, any batch and sequence length, the tensorized embedding a
    lookup (gathers of factor slices), never the dense table."""
    model, vocab = _tiny_token_model(kind)
    names = ("input_ids", "attention_mask", "token_type_ids")[: 3 if kind == "bert" else 2]
    file = tmp_path / "model.onnx"
    exported = onnx_export.export(
        model, _tokens(vocab, 4, 12, names, 0), file, output_name="last_hidden_state"
    )
    assert exported.error < onnx_export.ONNX_TOLERANCE
    session = onnx_export.session(file)
    assert [i.name for i in session.get_inputs()] == list(names)
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    for batch, length in ((2, 5), (6, 20)):  # neither the example's batch nor its length
        feeds = _tokens(vocab, batch, length, names, batch)
        (got,) = session.run(None, {n: t.numpy() for n, t in feeds.items()})
        with torch.no_grad():
            expected = model(**feeds).last_hidden_state.numpy()
        assert got.shape == (batch, length, 32)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    graph = onnx.load(str(file)).graph
    table = vocab * 32
    assert not [s for s in static_shapes(file) if math.prod(s) == table]  # no dense table
    assert not [i.name for i in graph.initializer if math.prod(i.dims) == table]
    assert "Gather" in {n.op_type for n in graph.node}
    stored = sum(math.prod(i.dims) for i in graph.initializer)
    assert stored <= tn.n_params(model) + 64 < tn.n_params(model) + table
