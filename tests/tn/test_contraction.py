"""The contraction compiler/executor against opt_einsum on random networks."""

from __future__ import annotations

import math
import random

import opt_einsum
import pytest
import torch

from tnsearch.tn._contract import compile_contraction, run_contraction


def _random_network(rng: random.Random):
    n_ops = rng.randint(2, 6)
    names = [f"i{k}" for k in range(rng.randint(3, 9))]
    sizes = {i: rng.choice([1, 2, 3, 5]) for i in names}
    ops = [tuple(rng.sample(names, rng.randint(1, min(4, len(names))))) for _ in range(n_ops)]
    used = sorted({i for op in ops for i in op})
    counts = {i: sum(i in op for op in ops) for i in used}
    # indices in one operand only must be kept; others kept at random (hyperedges included)
    out = tuple(i for i in used if counts[i] == 1 or rng.random() < 0.3)
    return ops, sizes, out


@pytest.mark.parametrize("seed", range(40))
def test_random_networks_match_opt_einsum(seed):
    rng = random.Random(seed)
    ops, sizes, out = _random_network(rng)
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn([sizes[i] for i in op], generator=g, dtype=torch.float64) for op in ops]
    split = rng.randint(0, len(out))
    groups = tuple(grp for grp in (out[:split], out[split:]) if grp)
    contraction = compile_contraction(tuple(ops), tuple(sorted(sizes.items())), out, groups)
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(sorted(sizes))}
    eq = ",".join("".join(sym[i] for i in op) for op in ops) + "->" + "".join(sym[i] for i in out)
    ref = opt_einsum.contract(eq, *tensors).reshape(
        [math.prod(sizes[i] for i in grp) for grp in groups]
    )
    got = run_contraction(contraction, tensors)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_given_input_shape_is_reshaped():
    sizes = {"b": 3, "m0": 4, "m1": 5, "r": 2, "n": 6}
    ops = (("b", "m0", "m1"), ("m0", "m1", "r"), ("r", "n"))
    contraction = compile_contraction(
        ops, tuple(sorted(sizes.items())), ("b", "n"), (("b",), ("n",)), ((3, 20),)
    )
    x, a, c = torch.randn(3, 20), torch.randn(4, 5, 2), torch.randn(2, 6)
    assert torch.allclose(
        run_contraction(contraction, (x, a, c)), x @ a.reshape(20, 2) @ c, atol=1e-5
    )


@pytest.mark.parametrize("seed", range(40))
def test_a_plan_runs_on_any_size_of_its_dynamic_index(seed):
    """Planned for a batch of 5, the contraction runs on batches of 1, 2 and 9 (torch.export's
    case)."""
    rng = random.Random(seed)
    ops, sizes, out = _random_network(rng)
    for n in {0, rng.randrange(len(ops))}:  # the input, and maybe a factor (a batched matmul)
        k = rng.randint(0, len(ops[n]))
        ops[n] = (*ops[n][:k], "b", *ops[n][k:])
    k = rng.randint(0, len(out))
    out = (*out[:k], "b", *out[k:])
    split = rng.randint(0, len(out))
    groups = tuple(grp for grp in (out[:split], out[split:]) if grp)
    planned = tuple(sorted({**sizes, "b": 5}.items()))
    contraction = compile_contraction(tuple(ops), planned, out, groups, (), ("b",))
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(sorted({*sizes, "b"}))}
    eq = ",".join("".join(sym[i] for i in op) for op in ops) + "->" + "".join(sym[i] for i in out)
    g = torch.Generator().manual_seed(seed)
    for batch in (1, 2, 9):
        size = {**sizes, "b": batch}
        shapes = [[size[i] for i in op] for op in ops]
        tensors = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        ref = opt_einsum.contract(eq, *tensors).reshape(
            [math.prod(size[i] for i in grp) for grp in groups]
        )
        got = run_contraction(contraction, tensors)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)
