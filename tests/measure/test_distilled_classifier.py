"""Distillation healing of a classifier (`heal.distill=true`): the loss, and what learns."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tnsearch.measure.distill import DistilledClassifier, distilled_loss, last_linear

STUDENT = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])  # (B=2, classes=3)
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 2.0, 1.0]])
LABELS = torch.tensor([0, 2])


def by_hand(student, teacher, labels, temperature, alpha):
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE, written
    out in plain Python: the mean over the batch of sum_c p_c (log p_c - log q_c)."""

    def softmax(row, t):
        exp = [math.exp(v / t) for v in row]
        return [e / sum(exp) for e in exp]

    kl = ce = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        p, q = softmax(t, temperature), softmax(s, temperature)
        kl += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q, strict=True))
        ce -= math.log(softmax(s, 1.0)[y])
    n = len(labels)
    return alpha * temperature**2 * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.5), (1.0, 1.0), (4.0, 0.0), (0.5, 0.3)])
def test_the_distilled_loss_is_the_formula(temperature, alpha):
    got = distilled_loss(STUDENT, TEACHER, LABELS, temperature=temperature, alpha=alpha)
    assert got.item() == pytest.approx(by_hand(STUDENT, TEACHER, LABELS, temperature, alpha))


def test_the_kl_term_vanishes_when_the_student_gives_the_teacher_s_logits():
    same = distilled_loss(TEACHER, TEACHER, LABELS, temperature=3.0, alpha=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert distilled_loss(STUDENT, TEACHER, LABELS, temperature=3.0, alpha=1.0).item() > 0.1


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def module(features: bool = False, **kwargs) -> DistilledClassifier:
    return DistilledClassifier(
        mlp(0),
        mlp(1),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        features=features,
        **kwargs,
    )


def test_the_training_loss_distills_the_frozen_teacher_s_logits():
    task = module(temperature=3.0, alpha=0.7).train()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    assert not task.teacher.training and task.model.training  # the teacher's dropout stays off
    torch.manual_seed(7)
    got = task.loss((x, y))
    torch.manual_seed(7)  # the same dropout mask for the student
    expected = distilled_loss(task.model(x), task.teacher(x), y, temperature=3.0, alpha=0.7)
    assert got.item() == pytest.approx(expected.item())
    got.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(not p.requires_grad for p in task.teacher.parameters())
    trained = {id(p) for p in task.trained_parameters()}
    assert trained == {id(p) for p in task.model.parameters()}


def test_the_teacher_is_a_copy_and_the_accuracy_is_unchanged():
    teacher = mlp(1)
    before = copy.deepcopy(teacher.state_dict())
    task = DistilledClassifier(mlp(0), teacher, optimizer=torch.optim.SGD)
    assert task.teacher is not teacher and teacher.training  # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    task.eval()
    x = torch.randn(6, 4)
    y = task.model(x).argmax(dim=1)
    assert task.score((x, y)) == (6.0, 6)  # the accuracy of the student, as Classifier scores it
    assert DistilledClassifier.metric == "accuracy"


def test_features_add_alpha_times_the_mse_of_the_last_linear_s_inputs():
    task = module(features=True, temperature=2.0, alpha=0.25).eval()  # no dropout: one forward
    assert task.feature_layer == last_linear(task.teacher) == "3"
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    task.on_fit_start()
    got = task.loss((x, y))
    task.on_validation_epoch_start()  # validating while the hooks are on counts as ever
    task.validation_step((x, task.model(x).argmax(dim=1)), 0)
    task.on_validation_epoch_end()
    task.on_fit_end()
    assert task.val_quality == 1.0
    mine, theirs = task.model[:3](x), task.teacher[:3](x)  # the input of the last Linear (B, 8)
    expected = distilled_loss(task.model(x), task.teacher(x), y, temperature=2.0, alpha=0.25)
    expected = expected + 0.25 * F.mse_loss(mine, theirs)
    assert got.item() == pytest.approx(expected.item())
    assert not task.model[3]._forward_pre_hooks  # the hooks are gone after fitting
    plain = module(features=False, temperature=2.0, alpha=0.25).eval()
    assert plain.loss((x, y)).item() < got.item()


def test_features_need_a_linear_and_an_eager_model():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="^heal.features: the model has no nn.Linear"):
        DistilledClassifier(conv, conv, optimizer=torch.optim.SGD, features=True)
    compiled = torch.compile(mlp(0))  # wraps it; nothing is compiled before its first call
    with pytest.raises(ValueError, match="^heal.features: reads features by forward hooks"):
        DistilledClassifier(compiled, mlp(1), optimizer=torch.optim.SGD, features=True)
