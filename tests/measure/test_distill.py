"""Distillation healing: a tensorized tiny BERT learns its dense teacher's embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.helpers import bert_tokenizer, tiny_bert_config  # noqa: E402
from tnsearch import plan as plans  # noqa: E402
from tnsearch.data import TextDataModule, embedded_sentences  # noqa: E402
from tnsearch.measure import training  # noqa: E402
from tnsearch.measure.distill import Distill, pooled  # noqa: E402


def test_pooling_is_the_masked_mean_normalized():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    got = pooled({"last_hidden_state": hidden}, mask)
    expected = torch.nn.functional.normalize(torch.tensor([[2.0, 2.0]]), dim=-1)
    assert torch.allclose(got, expected)


def test_healing_raises_the_fidelity_of_a_truncated_student(tmp_path):
    sentences = embedded_sentences()[:300]
    tokenizer = bert_tokenizer(tmp_path / "tok", sentences)
    data = TextDataModule(tokenizer=str(tokenizer), max_length=24, batch_size=32, limit=300)
    data.setup()
    vocab = data.facts["vocab_size"]
    config = tiny_bert_config(vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    teacher = transformers.BertModel(config).eval()
    student = copy.deepcopy(teacher)
    spec = {"topology": "mpo", "order": 2, "in_modes": None, "out_modes": None, "rank": 2}
    names = ("embeddings.word_embeddings", "encoder.layer.0.attention.self.value")
    layers = {name: spec for name in names}
    plans.tensorize(student, {"layers": layers}, init="decompose")
    module = Distill(
        student, teacher, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), scheduler="none"
    )
    zero_shot = []
    result = training.fit(
        module,
        data,
        epochs=4,
        trainer_cfg={"accelerator": "cpu"},
        on_zero_shot=zero_shot.append,
    )
    print(f"fidelity zero-shot {zero_shot[0]:.4f}, healed {result.val_quality:.4f}")
    assert Distill.metric == "fidelity"
    assert 0.0 < zero_shot[0] < 0.99  # the truncation cost fidelity
    assert result.val_quality > zero_shot[0]  # healing brought it back towards the teacher
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            module.teacher.state_dict().values(), teacher.state_dict().values(), strict=True
        )
    )


def test_the_task_names_the_output_it_needs():
    hidden = torch.randn(2, 3, 4)
    other = torch.randn(2, 4)
    assert torch.allclose(
        pooled({"pooler_output": other}, None, "pooler_output"),
        torch.nn.functional.normalize(other, dim=-1),
    )
    with pytest.raises(TypeError, match="^task.output: the model's output has no 'nope'"):
        pooled({"last_hidden_state": hidden}, None, "nope")
    assert training.logits({"scores": other}, "scores") is other
