"""Contractions: the pairwise order is chosen once per shape, torch runs it as mm/bmm.

The candidate orders are opt_einsum's (cheapest in FLOPs, greedy, smallest intermediates) and the
chain that takes the input through the factors one at a time; each is compiled and a cost model
(multiply-adds + elements moved by copies + a per-op overhead) picks one. ``torch.einsum`` costs ~30
us of overhead per call on CPU, more than a whole batch-1 contraction, so a contraction is compiled
down to plain ``reshape``/``permute``/``mm``/``bmm``/``addmm`` calls: for each pairwise step the
larger operand (usually the activation) is used in place whenever its memory order allows it, the
smaller one (a factor) is permuted to match, and the result's index order is chosen so that the
*next* step can use it in place too (or the final permutation moves whole rows).

A :class:`Contraction` is nested named tuples (:class:`Step`, :class:`Prep`): hashable, and a
constant under ``torch.compile`` (the planner runs eagerly at trace time).
:func:`compile_contraction` builds it (memoized), :func:`run_contraction` runs it.

The order is chosen for the sizes given, but a contraction need not be tied to them: indices
declared ``dynamic`` (a layer's batch) are never written into it. Every reshape infers the dimension
that holds them (``-1``) and a broadcast takes that size from its partner, so the contraction made
for a batch of 64 runs on any batch, and ``torch.export`` traces it with a symbolic batch axis (an
ONNX graph whose batch stays dynamic). In eager mode ``-1`` costs nothing measurable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import opt_einsum
import torch

__all__ = [
    "Contraction",
    "Prep",
    "Step",
    "compile_contraction",
    "contracted_size",
    "run_contraction",
]

Order = tuple[str, ...]


class Prep(NamedTuple):
    """How one tensor becomes a matmul argument (or the output): applied in field order.

    A field that is ``None`` / ``False`` is an op left out. E.g. an input ``(B, M)`` with indices
    ``(b, m1, m2)`` that is contracted over ``m2`` needs ``Prep(None, None, (B*m1, m2), False,
    None)``: one reshape, no copy; ``(-1, m2)`` if ``b`` is dynamic. A dimension holding a
    dynamic index is ``-1`` in ``shape``, ``view`` and ``expand``; :func:`run_contraction`
    broadcasts over the matmul partner's leading dimension, whatever ``expand`` says.
    """

    shape: tuple[int, ...] | None  # with perm: one dim per index (i_1, .., i_k) to permute
    perm: tuple[int, ...] | None  # permutation of those k dims (a copy, at the next reshape)
    view: tuple[int, ...] | None  # reshape to (rows, cols), (batch, rows, cols) or output groups
    transpose: bool  # swap the last two dims (a view, no copy)
    expand: tuple[int, ...] | None  # broadcast over a batch group it lacks: (G, rows, cols)


class Step(NamedTuple):
    """One pairwise contraction: operands ``i`` and ``j`` are popped, their product appended."""

    i: int  # position of one operand in the current operand list (i < j)
    j: int  # position of the other one
    i_left: bool  # operand i is the left argument of the matmul (else operand j is)
    left: Prep  # left argument -> (r, k) for mm, (B, r, k) for bmm
    right: Prep  # right argument -> (k, c) for mm, (B, k, c) for bmm
    bmm: bool  # batched matmul (B, r, k) @ (B, k, c) -> (B, r, c), else mm -> (r, c)


class Contraction(NamedTuple):
    """A compiled contraction: run by :func:`run_contraction`."""

    steps: tuple[Step, ...]  # pairwise contractions, in order (empty for one operand)
    out: Prep  # the last tensor left -> the output, one dimension per output group
    macs: int  # multiply-adds of all steps
    fusable: bool  # the last step is an mm whose result is the output: a bias fits in an addmm


class _Presented(NamedTuple):
    # what _present found for one operand
    prep: Prep
    copied: int  # elements a permute copies (weighted: a gather of the stride-1 index costs more)
    mat: tuple[int, ...]  # the matmul argument's shape: (rows, cols) or (batch, rows, cols)


class _Choice(NamedTuple):
    # the best layout _step found for one pairwise step
    cost: float  # estimated, in element copies (see _OP, _MAC)
    x_left: bool  # the larger operand X is the left argument
    x_prep: Prep
    y_prep: Prep
    order: Order  # index order of the result
    shape: tuple[int, ...]  # the result's shape: (r, c) or (B, r, c)
    bmm: bool


_BMM_MIN = 64  # a broadcast bmm only beats "copy, then one big mm" for matrices at least this wide
_GATHER = 3  # cost of a copy that moves the stride-1 index, relative to one that does not
# Cost model, in units of one element copied (~1.5 ns on a 2-core CPU): an op's call overhead
# (~6 us) and a multiply-add inside a mid-sized matmul (~0.07 ns).
_OP = 4096
_MAC = 0.05


def _numel(order, size) -> int:
    return math.prod(size[i] for i in order)


def _dims(groups, size, dynamic: frozenset[str] = frozenset()) -> tuple[int, ...]:
    """One dimension per group of indices: the product of their sizes, or -1 (inferred by the
    reshape) for the group that holds a dynamic index."""
    return tuple(-1 if dynamic.intersection(g) else _numel(g, size) for g in groups)


def _options(group: Order, nxt: set[str], out: Order) -> list[Order]:
    """Orders worth trying for a group we may reorder: as is, next-contracted last or first, and
    sorted as in the output (so the final permutation moves whole rows)."""
    inner = tuple(i for i in group if i in nxt)
    outer = tuple(i for i in group if i not in nxt)
    rank = {i: k for k, i in enumerate(out)}
    in_out = tuple(sorted((i for i in group if i in rank), key=rank.get))
    by_out = in_out + tuple(i for i in group if i not in rank)
    return list(dict.fromkeys([group, outer + inner, inner + outer, by_out]))


def _run(order: Order, subset: set[str]) -> str:
    """Where ``subset`` sits in ``order``: 'edge' (prefix/suffix), 'middle' run, or 'none'."""
    pos = [k for k, i in enumerate(order) if i in subset]
    if not pos:
        return "edge"
    if pos[-1] - pos[0] + 1 != len(pos):
        return "none"
    return "edge" if pos[0] == 0 or pos[-1] == len(order) - 1 else "middle"


def _present(src, shape, batch, rows, cols, size, bcast=None, dynamic=frozenset()) -> _Presented:
    """Prep showing a contiguous tensor (index order ``src``) as (batch, rows, cols).

    ``bcast`` is a batch group the tensor lacks: it is expanded over it (stride 0). ``dynamic``
    indices are left open in the prep (see :class:`Prep`).
    """
    lead = (batch,) if batch else ()
    if src == batch + rows + cols:
        perm, groups, tr = None, (*lead, rows, cols), False
    elif src == batch + cols + rows:
        perm, groups, tr = None, (*lead, cols, rows), True
    elif rows and src[-1] == rows[-1]:  # copy to (cols, rows): keeps the stride-1 index inside
        perm = tuple(src.index(i) for i in batch + cols + rows)
        groups, tr = (*lead, cols, rows), True
    else:
        perm = tuple(src.index(i) for i in batch + rows + cols)
        groups, tr = (*lead, rows, cols), False
    reshaped = perm is not None or tuple(shape) != _dims(groups, size)
    prep = Prep(
        _dims([(i,) for i in src], size, dynamic) if perm else None,
        perm,
        _dims(groups, size, dynamic) if reshaped else None,
        tr,
        _dims((bcast, rows, cols), size, dynamic) if bcast else None,
    )
    mat = _dims((bcast, rows, cols) if bcast else (*lead, rows, cols), size)
    copied = 0
    if perm:  # moving whole rows is cheap; gathering strided elements is ~3x slower
        inner = (batch + cols + rows)[-1] if tr else (batch + rows + cols)[-1]
        copied = _numel(src, size) * (1 if inner == src[-1] else _GATHER)
    return _Presented(prep, copied, mat)


class _Sim:
    """The operand list of a path, simulated by ids: who is consumed when, with whom."""

    def __init__(self, operands, size, output, path):
        self.size, self.output, self.n_in = size, set(output), len(operands)
        self.sets = [set(op) for op in operands]
        self.steps = []
        ids = list(range(len(operands)))
        for pos in path:
            pos = sorted(pos)
            picked = [ids[p] for p in pos]
            for p in reversed(pos):
                ids.pop(p)
            rest = set().union(*(self.sets[k] for k in ids)) if ids else set()
            merged = set().union(*(self.sets[k] for k in picked))
            self.sets.append({i for i in merged if i in rest or i in self.output})
            ids.append(len(self.sets) - 1)
            self.steps.append(picked)

    def keep(self, step: int) -> set[str]:
        """Indices the result of ``step`` must keep."""
        return self.sets[self.n_in + step]

    def next_use(self, step: int):
        """(indices the consuming step contracts, result is the larger operand there) or None."""
        rid = self.n_in + step
        for k in range(step + 1, len(self.steps)):
            if rid in self.steps[k]:
                (other,) = [p for p in self.steps[k] if p != rid]
                shared = self.sets[rid] & self.sets[other]
                contracted = shared - self.keep(k)
                big = _numel(self.sets[rid], self.size) >= _numel(self.sets[other], self.size)
                return contracted, big
        return None


def _result_cost(res, nxt, out, out_groups, size) -> int:
    n = _numel(res, size)
    if nxt is None:  # final: the output prep is free if each output group is a run, in order
        if res == out:
            return 0
        pos = {i: k for k, i in enumerate(res)}
        ok = all(
            [pos[i] for i in g] == list(range(pos[g[0]], pos[g[0]] + len(g)))
            for g in out_groups
            if g
        )
        if ok:
            return n // 4
        return n // 2 if res[-1] == out[-1] else n  # a copy of whole rows, or a gather
    contracted, big = nxt
    if not big:
        return n // 8
    return {"edge": 0, "middle": n // 2, "none": n}[_run(res, contracted)]


def _step(xo, xs, yo, ys, c_set, s_set, nxt, out, out_groups, size, dynamic) -> _Choice:
    """The cheapest layout for one step (X: the larger operand, Y: the other one)."""
    s = tuple(i for i in xo if i in s_set)
    fx = tuple(i for i in xo if i not in c_set and i not in s_set)
    fy = tuple(i for i in yo if i not in c_set and i not in s_set)
    nxt_set = nxt[0] if nxt else set(out)
    c_orders = dict.fromkeys(
        [tuple(i for i in xo if i in c_set), tuple(i for i in yo if i in c_set)]
    )
    best = None

    def consider(cost, x_left, xp: _Presented, yp: _Presented, res, bmm):
        nonlocal best
        cost += _result_cost(res, nxt, out, out_groups, size) + (2 if bmm else 0) + _OP
        for p in (xp.prep, yp.prep):  # ops: reshape, permute + reshape, transpose, expand
            ops = (p.view is not None) + 2 * (p.perm is not None) + p.transpose
            cost += _OP * (ops + (p.expand is not None))
        if best is None or cost < best.cost:
            lm, rm = (xp.mat, yp.mat) if x_left else (yp.mat, xp.mat)
            shape = (lm[0], lm[-2], rm[-1]) if bmm else (lm[-2], rm[-1])
            best = _Choice(cost, x_left, xp.prep, yp.prep, res, shape, bmm)

    for c in c_orders:
        for fxo in _options(fx, nxt_set, out):
            for fyo in _options(fy, nxt_set, out):
                for x_left in (True, False):
                    if x_left:
                        xp = _present(xo, xs, s, fxo, c, size, dynamic=dynamic)
                        yp = _present(yo, ys, s, c, fyo, size, dynamic=dynamic)
                        res = s + fxo + fyo
                    else:
                        xp = _present(xo, xs, s, c, fxo, size, dynamic=dynamic)
                        yp = _present(yo, ys, s, fyo, c, size, dynamic=dynamic)
                        res = s + fyo + fxo
                    consider(xp.copied + yp.copied, x_left, xp, yp, res, bool(s))
    # X batched over its leading free indices, the factor broadcast over them (no copy of X)
    if not s and _run(xo, c_set) == "middle":
        c = tuple(i for i in xo if i in c_set)
        start = xo.index(c[0])
        g, p = xo[:start], xo[start + len(c) :]
        if _numel(p, size) >= _BMM_MIN:
            for fyo in _options(fy, nxt_set, out):
                for x_left in (True, False):
                    if x_left:
                        xp = _present(xo, xs, g, p, c, size, dynamic=dynamic)
                        yp = _present(yo, ys, (), c, fyo, size, bcast=g, dynamic=dynamic)
                        res = g + p + fyo
                    else:
                        xp = _present(xo, xs, g, c, p, size, dynamic=dynamic)
                        yp = _present(yo, ys, (), fyo, c, size, bcast=g, dynamic=dynamic)
                        res = g + fyo + p
                    consider(xp.copied + yp.copied, x_left, xp, yp, res, True)
    return best


def _orders(operands, output, size) -> list[list[tuple[int, ...]]]:
    """Candidate pairwise orders: opt_einsum's cheapest in FLOPs, its greedy and smallest-
    intermediate ones, and the chain from the first operand (the input)."""
    names = sorted({i for op in operands for i in op})
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    eq = ",".join("".join(sym[i] for i in op) for op in operands)
    eq += "->" + "".join(sym[i] for i in output)
    shapes = [tuple(size[i] for i in op) for op in operands]
    strategies = ["optimal" if len(operands) <= 6 else "dp", "greedy"]
    if len(operands) <= 12:
        strategies.append(opt_einsum.DynamicProgramming(minimize="size"))
    found = []
    for how in strategies:
        path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=how)
        found.append([tuple(p) for p in path])
    # the chain, in opt_einsum's convention (contracted operands removed, result appended)
    ids, chain = list(range(len(operands))), []
    sets = {k: set(op) for k, op in enumerate(operands)}
    cur = 0
    while len(ids) > 1:
        nxt = next((k for k in ids if k != cur and sets[k] & sets[cur]), None)
        nxt = nxt if nxt is not None else next(k for k in ids if k != cur)
        chain.append(tuple(sorted((ids.index(cur), ids.index(nxt)))))
        ids = [k for k in ids if k not in (cur, nxt)]
        sets[len(sets)] = sets[cur] | sets[nxt]
        cur = len(sets) - 1
        ids.append(cur)
    found.append(chain)
    return list(dict.fromkeys(map(tuple, found)))


def _compile(ops, size, out, groups, out_groups, cur, path, dynamic) -> tuple[Contraction, float]:
    """Compile one pairwise order into a contraction and its estimated cost."""
    sim = _Sim(ops, size, out, path)
    orders, cur = list(ops), list(cur)
    steps, macs, cost = [], 0, 0
    for k, pos in enumerate(path):
        if len(pos) != 2:
            raise AssertionError(f"contraction path step {pos} is not pairwise")
        i, j = sorted(pos)
        a, b = orders[i], orders[j]
        keep = sim.keep(k)
        shared = set(a) & set(b)
        if any(x not in keep and x not in shared for x in a + b):
            raise AssertionError("an index is summed over inside one operand")
        macs += _numel(tuple(dict.fromkeys(a + b)), size)
        a_is_x = _numel(a, size) >= _numel(b, size)
        xo, xs, yo, ys = (a, cur[i], b, cur[j]) if a_is_x else (b, cur[j], a, cur[i])
        c_set, s_set = shared - keep, shared & keep
        nxt = sim.next_use(k)
        best = _step(xo, xs, yo, ys, c_set, s_set, nxt, out, groups, size, dynamic)
        cost += best.cost
        x_left = best.x_left
        left, right = (best.x_prep, best.y_prep) if x_left else (best.y_prep, best.x_prep)
        steps.append(Step(i, j, a_is_x == x_left, left, right, best.bmm))
        for p in (j, i):
            orders.pop(p)
            cur.pop(p)
        orders.append(best.order)
        cur.append(best.shape)
    view = _dims(out_groups, size, dynamic)
    final, shape = orders[0], cur[0]
    perm = tuple(final.index(i) for i in out)
    if perm == tuple(range(len(perm))):
        same = tuple(shape) == _dims(out_groups, size)
        out_prep = Prep(None, None, None if same else view, False, None)
    else:
        out_prep = Prep(_dims([(i,) for i in final], size, dynamic), perm, view, False, None)
    # the last step can add a bias over the result's last dimension (addmm) if it is an mm
    # whose result already is the output
    fusable = bool(steps) and not steps[-1].bmm and out_prep.perm is None and out_prep.view is None
    return Contraction(tuple(steps), out_prep, macs, fusable), cost + macs * _MAC


@functools.lru_cache(maxsize=1024)
def _contraction(operands, sizes, output, out_groups, given, dynamic) -> Contraction:
    size = dict(sizes)
    ones = {i for i, n in size.items() if n == 1}  # size-1 indices vanish in any reshape
    dynamic = (
        frozenset(dynamic) - ones
    )  # (a contraction for a batch of 1 holds no batch index at all)
    ops = [tuple(i for i in op if i not in ones) for op in operands]
    out = tuple(i for i in output if i not in ones)
    groups = tuple(tuple(i for i in g if i not in ones) for g in out_groups)
    shapes = [tuple(size[i] for i in op) for op in operands]
    cur = [tuple(given[k]) if k < len(given) else s for k, s in enumerate(shapes)]
    paths = _orders(ops, out, size) if len(operands) > 1 else [()]
    best, best_cost = None, 0.0
    for path in paths:
        if any(len(p) != 2 for p in path):
            continue
        contraction, cost = _compile(ops, size, out, groups, out_groups, cur, list(path), dynamic)
        if best is None or cost < best_cost:
            best, best_cost = contraction, cost
    return best


@torch.compiler.assume_constant_result
def compile_contraction(
    operands: tuple[Order, ...],
    sizes: tuple[tuple[str, int], ...],
    output: Order,
    out_groups: tuple[Order, ...],
    given: tuple[tuple[int, ...], ...] = (),
    dynamic: Order = (),
) -> Contraction:
    """Compile a contraction network into a contraction for :func:`run_contraction`.

    Args:
        operands: index names of each operand, in the operand's dimension order.
        sizes: ``(index, size)`` pairs for every index.
        output: the output's index order (every index not in it is summed over).
        out_groups: consecutive groups of ``output``; the result has one dimension per group.
        given: the shapes the first operands will actually have (any reshape of the full
            index shape, e.g. ``(B, M)`` for an input with modes ``(b, m1, m2)``).
        dynamic: indices whose size may differ at run time (the batch ``b``): the order is the
            best for the size in ``sizes``, but the contraction runs on any size of them.

    Returns:
        The :class:`Contraction` (memoized).
    """
    return _contraction(operands, sizes, output, out_groups, given, dynamic)


def contracted_size(n: int | torch.SymInt) -> int:
    """The size to choose a contraction order for: ``n``, or for a symbolic size (``torch.export``
    with a dynamic batch axis) the size of the example being traced, read without the guard that
    ``int(n)`` would add (it would fix the axis). Plans run on any size of a dynamic index."""
    if isinstance(n, int):
        return n
    from torch.fx.experimental import symbolic_shapes

    # optimization_hint (torch >= 2.10) was hint_int before
    hint = getattr(symbolic_shapes, "optimization_hint", None) or symbolic_shapes.hint_int
    return max(2, int(hint(n, fallback=64)))  # (a contraction for a batch of 1 has no batch index)


def _apply(t: torch.Tensor, prep: Prep) -> torch.Tensor:
    if prep.perm is not None:
        t = t.reshape(prep.shape).permute(prep.perm)
    if prep.view is not None:
        t = t.reshape(prep.view)
    if prep.transpose:
        t = t.transpose(-2, -1)
    return t


def run_contraction(
    contraction: Contraction, tensors: Sequence[torch.Tensor], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Contract ``tensors`` (in the contraction's operand order) as the contraction says.

    ``bias`` (only if ``contraction.fusable``) is added over the last dimension inside the last
    matmul.
    """
    ops = list(tensors)
    last = len(contraction.steps) - 1
    for k, step in enumerate(contraction.steps):
        b = ops.pop(step.j)
        a = ops.pop(step.i)
        left, right = (a, b) if step.i_left else (b, a)
        left, right = _apply(left, step.left), _apply(right, step.right)
        if step.left.expand is not None:  # over the partner's batch group, whatever its size
            left = left.expand(right.shape[0], -1, -1)
        elif step.right.expand is not None:
            right = right.expand(left.shape[0], -1, -1)
        if step.bmm:
            ops.append(torch.bmm(left, right))
        elif bias is not None and k == last:
            ops.append(torch.addmm(bias, left, right))
        else:
            ops.append(torch.mm(left, right))
    return _apply(ops[0], contraction.out)
