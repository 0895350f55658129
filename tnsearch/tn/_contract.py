"""Contraction plans: the pairwise order is chosen once per shape, torch runs it as mm/bmm.

The candidate orders are opt_einsum's (cheapest in FLOPs, greedy, smallest intermediates) and the
chain that takes the input through the factors one at a time; each is compiled and a cost model
(multiply-adds + elements moved by copies + a per-op overhead) picks one. ``torch.einsum`` costs
~30 us of overhead per call on CPU, more than a whole batch-1 contraction, so a plan is compiled
down to plain ``reshape``/``permute``/``mm``/``bmm``/``addmm`` calls: for each pairwise step the
larger operand (usually the activation) is used in place whenever its memory order allows it, the
smaller one (a factor) is permuted to match, and the result's index order is chosen so that the
*next* step can use it in place too (or the final permutation moves whole rows).

A plan is plain nested tuples: hashable, and a constant under ``torch.compile`` (the planner runs
eagerly at trace time). :func:`plan_contraction` builds it (memoized), :func:`run_plan` runs it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import opt_einsum
import torch

__all__ = ["plan_contraction", "run_plan"]

Order = tuple[str, ...]
# Prep: how one operand becomes a matmul argument:
#   (shape to reshape to before permuting | None, permutation | None,
#    reshape target | None, transpose the last two dims, expand target | None)
# Step: (i, j, operand i is the left argument, left prep, right prep, bmm)
# Plan: (steps, output prep, multiply-adds, the last step can add a bias)
Plan = tuple

_BMM_MIN = 64  # a broadcast bmm only beats "copy, then one big mm" for matrices at least this wide
_GATHER = 3  # cost of a copy that moves the stride-1 index, relative to one that does not
# Cost model, in units of one element copied (~1.5 ns on a 2-core CPU): an op's call overhead
# (~6 us) and a multiply-add inside a mid-sized matmul (~0.07 ns).
_OP = 4096
_MAC = 0.05


def _numel(order, size) -> int:
    return math.prod(size[i] for i in order)


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


def _present(src, shape, batch, rows, cols, size, bcast=None):
    """Prep showing a contiguous tensor (index order ``src``) as (batch, rows, cols).

    ``bcast`` is a batch group the tensor lacks: it is expanded over it (stride 0).
    Returns ``(prep, numel copied, matrix shape)``.
    """
    r, c = _numel(rows, size), _numel(cols, size)
    lead = (_numel(batch, size),) if batch else ()
    if src == batch + rows + cols:
        perm, view, tr = None, lead + (r, c), False
    elif src == batch + cols + rows:
        perm, view, tr = None, lead + (c, r), True
    elif rows and src[-1] == rows[-1]:  # copy to (cols, rows): keeps the stride-1 index inside
        perm = tuple(src.index(i) for i in batch + cols + rows)
        view, tr = lead + (c, r), True
    else:
        perm = tuple(src.index(i) for i in batch + rows + cols)
        view, tr = lead + (r, c), False
    expand = (_numel(bcast, size), r, c) if bcast else None
    full = tuple(size[i] for i in src)
    if perm is None and tuple(shape) == view:
        view = None
    prep = (full if perm else None, perm, view, tr, expand)
    mat = expand or (lead + (r, c))
    copied = 0
    if perm:  # moving whole rows is cheap; gathering strided elements is ~3x slower
        inner = (batch + cols + rows)[-1] if tr else (batch + rows + cols)[-1]
        copied = _numel(src, size) * (1 if inner == src[-1] else _GATHER)
    return prep, copied, mat


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


def _step(xo, xs, yo, ys, c_set, s_set, nxt, out, out_groups, size):
    """Best (cost, x_left, x prep, y prep, result order, result shape, bmm) for one step."""
    s = tuple(i for i in xo if i in s_set)
    fx = tuple(i for i in xo if i not in c_set and i not in s_set)
    fy = tuple(i for i in yo if i not in c_set and i not in s_set)
    nxt_set = nxt[0] if nxt else set(out)
    c_orders = dict.fromkeys(
        [tuple(i for i in xo if i in c_set), tuple(i for i in yo if i in c_set)]
    )
    best = None

    def consider(cost, x_left, xp, yp, res, bmm):
        nonlocal best
        cost += _result_cost(res, nxt, out, out_groups, size) + (2 if bmm else 0) + _OP
        for p in (xp[0], yp[0]):  # ops: reshape, permute + reshape, transpose, expand
            cost += _OP * ((p[2] is not None) + 2 * (p[1] is not None) + p[3] + (p[4] is not None))
        if best is None or cost < best[0]:
            lm, rm = (xp[2], yp[2]) if x_left else (yp[2], xp[2])
            shape = (lm[0], lm[-2], rm[-1]) if bmm else (lm[-2], rm[-1])
            best = (cost, x_left, xp[0], yp[0], res, shape, bmm)

    for c in c_orders:
        for fxo in _options(fx, nxt_set, out):
            for fyo in _options(fy, nxt_set, out):
                for x_left in (True, False):
                    if x_left:
                        xp = _present(xo, xs, s, fxo, c, size)
                        yp = _present(yo, ys, s, c, fyo, size)
                        res = s + fxo + fyo
                    else:
                        xp = _present(xo, xs, s, c, fxo, size)
                        yp = _present(yo, ys, s, fyo, c, size)
                        res = s + fyo + fxo
                    consider(xp[1] + yp[1], x_left, xp, yp, res, bool(s))
    # X batched over its leading free indices, the factor broadcast over them (no copy of X)
    if not s and _run(xo, c_set) == "middle":
        c = tuple(i for i in xo if i in c_set)
        start = xo.index(c[0])
        g, p = xo[:start], xo[start + len(c) :]
        if _numel(p, size) >= _BMM_MIN:
            for fyo in _options(fy, nxt_set, out):
                for x_left in (True, False):
                    if x_left:
                        xp = _present(xo, xs, g, p, c, size)
                        yp = _present(yo, ys, (), c, fyo, size, bcast=g)
                        res = g + p + fyo
                    else:
                        xp = _present(xo, xs, g, c, p, size)
                        yp = _present(yo, ys, (), fyo, c, size, bcast=g)
                        res = g + fyo + p
                    consider(xp[1] + yp[1], x_left, xp, yp, res, True)
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


def _compile(ops, size, out, groups, out_groups, cur, path):
    """Compile one pairwise order into (steps, output prep, multiply-adds, estimated cost)."""
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
        step_cost, x_left, xprep, yprep, res, shape, bmm = _step(
            xo, xs, yo, ys, c_set, s_set, sim.next_use(k), out, groups, size
        )
        cost += step_cost
        left, right = (xprep, yprep) if x_left else (yprep, xprep)
        steps.append((i, j, a_is_x == x_left, left, right, bmm))
        for p in (j, i):
            orders.pop(p)
            cur.pop(p)
        orders.append(res)
        cur.append(shape)
    view = tuple(math.prod(size[i] for i in g) for g in out_groups)
    final, shape = orders[0], cur[0]
    perm = tuple(final.index(i) for i in out)
    if perm == tuple(range(len(perm))):
        out_prep = (None, None, None if tuple(shape) == view else view, False, None)
    else:
        out_prep = (tuple(size[i] for i in final), perm, view, False, None)
    # the last step can add a bias over the result's last dimension (addmm) if it is an mm
    # whose result already is the output
    fusable = bool(steps) and not steps[-1][5] and out_prep[1] is None and out_prep[2] is None
    return (tuple(steps), out_prep, macs, fusable), cost + macs * _MAC


@functools.lru_cache(maxsize=1024)
def _plan(operands, sizes, output, out_groups, given) -> Plan:
    size = dict(sizes)
    ones = {i for i, n in size.items() if n == 1}  # size-1 indices vanish in any reshape
    ops = [tuple(i for i in op if i not in ones) for op in operands]
    out = tuple(i for i in output if i not in ones)
    groups = tuple(tuple(i for i in g if i not in ones) for g in out_groups)
    shapes = [tuple(size[i] for i in op) for op in operands]
    cur = [tuple(given[k]) if k < len(given) else s for k, s in enumerate(shapes)]
    paths = _orders(ops, out, size) if len(operands) > 1 else [()]
    best = None
    for path in paths:
        if any(len(p) != 2 for p in path):
            continue
        plan, cost = _compile(ops, size, out, groups, out_groups, cur, list(path))
        if best is None or cost < best[1]:
            best = (plan, cost)
    return best[0]


@torch.compiler.assume_constant_result
def plan_contraction(
    operands: tuple[Order, ...],
    sizes: tuple[tuple[str, int], ...],
    output: Order,
    out_groups: tuple[Order, ...],
    given: tuple[tuple[int, ...], ...] = (),
) -> Plan:
    """Compile a contraction network into a plan for :func:`run_plan`.

    Args:
        operands: index names of each operand, in the operand's dimension order.
        sizes: ``(index, size)`` pairs for every index.
        output: the output's index order (every index not in it is summed over).
        out_groups: consecutive groups of ``output``; the result has one dimension per group.
        given: the shapes the first operands will actually have (any reshape of the full
            index shape, e.g. ``(B, M)`` for an input with modes ``(b, m1, m2)``).

    Returns:
        ``(steps, output prep, multiply-adds, bias fusable)`` as nested tuples.
    """
    return _plan(operands, sizes, output, out_groups, given)


def _apply(t: torch.Tensor, prep: tuple) -> torch.Tensor:
    shape, perm, view, transpose, expand = prep
    if perm is not None:
        t = t.reshape(shape).permute(perm)
    if view is not None:
        t = t.reshape(view)
    if transpose:
        t = t.transpose(-2, -1)
    if expand is not None:
        t = t.expand(expand)
    return t


def run_plan(
    plan: Plan, tensors: Sequence[torch.Tensor], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Contract ``tensors`` (in the plan's operand order) as the plan says.

    ``bias`` (only if ``plan[3]``) is added over the last dimension inside the last matmul.
    """
    steps, out_prep = plan[0], plan[1]
    ops = list(tensors)
    last = len(steps) - 1
    for k, (i, j, i_left, pl, pr, bmm) in enumerate(steps):
        b = ops.pop(j)
        a = ops.pop(i)
        left, right = (a, b) if i_left else (b, a)
        left, right = _apply(left, pl), _apply(right, pr)
        if bmm:
            ops.append(torch.bmm(left, right))
        elif bias is not None and k == last:
            ops.append(torch.addmm(bias, left, right))
        else:
            ops.append(torch.mm(left, right))
    return _apply(ops[0], out_prep)
