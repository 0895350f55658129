"""The layers transformers have: Hugging Face's Conv1D (GPT-2) next to nn.Linear (BERT)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers import tiny_bert_config  # noqa: E402


def _tiny_gpt2():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2Model(config).eval().double()


def test_conv1d_layers_are_candidates_and_decompose_exactly_at_full_rank():
    from tnsearch import plan as plans
    from tnsearch.space import candidate_layers

    model = _tiny_gpt2()
    found = {layer.name: layer for layer in candidate_layers(model)}
    assert {"h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.1.mlp.c_proj"} <= set(found)
    assert (found["h.0.attn.c_attn"].in_dim, found["h.0.attn.c_attn"].out_dim) == (32, 96)
    ids = torch.randint(0, 97, (2, 7))
    expected = model(ids).last_hidden_state
    layers = {
        name: {"topology": topology, "order": 2, "in_modes": None, "out_modes": None, "rank": 10**4}
        for name, topology in (
            ("h.0.attn.c_attn", "mpo"),
            ("h.0.mlp.c_fc", "tucker"),
            ("h.1.attn.c_proj", "tree"),
            ("h.1.mlp.c_proj", "cp"),
        )
    }
    plans.tensorize(model, {"layers": layers}, init="decompose")
    got = model(ids).last_hidden_state
    cp_error = 1e-2  # CP-ALS at a full rank is close, not exact
    assert torch.allclose(got, expected, atol=cp_error, rtol=cp_error)
    assert type(model.get_submodule("h.0.attn.c_attn")).__name__ != "Conv1D"


def test_a_bert_s_embeddings_and_linears_are_candidates_and_tensorize():
    from tnsearch import plan as plans
    from tnsearch.space import candidate_layers

    config = tiny_bert_config(90, positions=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval().double()
    found = {layer.name: layer for layer in candidate_layers(model)}
    word = found["embeddings.word_embeddings"]
    assert (word.in_dim, word.out_dim) == (90, 32)
    assert "encoder.layer.0.attention.self.query" in found
    ids = torch.randint(0, 90, (2, 6))
    expected = model(ids).last_hidden_state
    spec = {"topology": "mpo", "order": 2, "in_modes": None, "out_modes": None, "rank": 10**4}
    plans.tensorize(model, {"layers": {"embeddings.word_embeddings": spec}}, init="decompose")
    assert torch.allclose(model(ids).last_hidden_state, expected, atol=1e-8)
    small = {**spec, "rank": 2}
    plans.tensorize(model, {"layers": {"encoder.layer.0.output.dense": small}}, init="decompose")
    assert model(ids).last_hidden_state.shape == expected.shape
