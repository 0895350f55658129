"""A user's own objective, as a user would register it: the activations a forward pass keeps
(elements of every leaf module's output, per example). `imports: [this module]` registers it."""

from __future__ import annotations

from torch import nn

from tnsearch import objectives


def activations(model: nn.Module, example) -> float:
    """Elements of every leaf module's output for `example`, per example."""
    counted = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: counted.append(out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted) / example.shape[0]


OBJECTIVE = objectives.Objective(
    key="activations", metric="activations", measure=activations, label="activations", log=True
)
if objectives.get("activations") is None:
    objectives.register(OBJECTIVE)
