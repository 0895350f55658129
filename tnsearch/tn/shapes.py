"""Mode factorizations: the ways to write a dimension as a product of ``order`` factors.

A tensorized layer splits its input and output dimensions into modes, e.g. 1024 -> (4, 4, 8, 8).
:func:`factorizations` lists every way to do that and :func:`balanced` picks the default, the one
whose largest factor is smallest (it keeps every core small).

Awkward dimensions
------------------
Some dimensions have no split into ``order`` factors >= 2: a prime such as 1021, or 10 classes
into 3 factors. Two behaviours, chosen by ``pad``:

- ``pad=False`` (the default, and what :func:`tnsearch.tn.tensorize` uses when no modes are given):
  nothing is returned by :func:`factorizations` and :func:`balanced` raises a one-line
  ``ValueError`` that starts with ``order:`` and explains the way out.
- ``pad=True``: the dimension is padded to the smallest n' with n < n' < 2n that has a split, and
  the splits of n' are returned (1021 -> 1022 = 14 * 73 for order 2, 2 * 7 * 73 for order 3;
  1021 -> 1024 for order 5). The smallest padding wins, not the most even split: pass explicit
  modes such as (32, 32) for that. A layer built on padded modes
  zero-pads its input to n' and drops the extra outputs, so it computes exactly the same function;
  its ``to_dense()`` is exact and has the original size. The padding costs
  (n' - n) / n extra work.

Order 1 is always possible: ``factorizations(n, 1) == [(n,)]`` (the dimension is left unsplit).
Explicit modes passed to ``tensorize`` may multiply to more than the dimension (padding, as above)
but never to less.
"""

from __future__ import annotations

__all__ = ["balanced", "factorizations", "near_even", "prime_factors"]


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in non-decreasing order (``[]`` for 1)."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def _exact(n: int, order: int, smallest: int) -> list[tuple[int, ...]]:
    # Non-decreasing tuples of `order` factors >= `smallest` with product n.
    if order == 1:
        return [(n,)] if n >= smallest else []
    out = []
    f = smallest
    while f**order <= n:
        if n % f == 0:
            out.extend((f, *rest) for rest in _exact(n // f, order - 1, f))
        f += 1
    return out


def _check(n: int, order: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an int >= 1, got {n!r}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order: must be an int >= 1, got {order!r}")


def factorizations(n: int, order: int, *, pad: bool = False) -> list[tuple[int, ...]]:
    """All non-decreasing tuples of ``order`` ints >= 2 whose product is ``n``.

    Args:
        n: the dimension to split.
        order: the number of factors; 1 gives ``[(n,)]``.
        pad: if ``n`` has no split, use the smallest n' in (n, 2n) that has one (see the module
            docstring); the tuples then multiply to n'.

    Returns:
        The factorizations, sorted; empty if there is none.
    """
    _check(n, order)
    if order == 1:
        return [(n,)]
    found = _exact(n, order, 2)
    if found or not pad:
        return found
    for padded in range(n + 1, 2 * n):
        found = _exact(padded, order, 2)
        if found:
            return found
    return []


def _impossible(n: int, order: int, pad: bool) -> str:
    primes = prime_factors(n)
    if len(primes) == 1:
        why = f"{n} is prime"
    elif n == 1:
        why = "1 has no prime factors"
    else:
        why = f"{n} has {len(primes)} prime factors: {' * '.join(map(str, primes))}"
    hint = (
        ""
        if pad
        else "; pass in_modes/out_modes explicitly (padding is allowed: product >= dimension)"
    )
    return f"order: {n} cannot be split into {order} factors >= 2 ({why}){hint}"


def balanced(n: int, order: int, *, pad: bool = False) -> tuple[int, ...]:
    """The factorization of ``n`` into ``order`` factors with the smallest largest factor.

    Ties go to the one with the largest smallest factor (the most even split).

    Raises:
        ValueError: ``order: ...`` if there is none (see :func:`factorizations`).
    """
    options = factorizations(n, order, pad=pad)
    if not options:
        raise ValueError(_impossible(n, order, pad))
    return min(options, key=lambda f: (f[-1], -f[0]))


def near_even(n: int, order: int, *, slack: float = 0.02) -> tuple[int, ...]:
    """The most even split of ``n`` or of a slightly larger n' (at most ``slack`` more, padded).

    For awkward dimensions the exact splits are lopsided (30522 = 6 * 5087): padding to 30625 =
    175 * 175 costs 0.3% more work and keeps both cores small. The exact :func:`balanced` split
    is kept when its largest factor is within twice the ``order``-th root of ``n``; otherwise
    the split with the smallest largest factor wins, ties to the least padding.
    """
    _check(n, order)
    if order == 1:
        return (n,)
    exact = factorizations(n, order)
    if exact:
        even = min(exact, key=lambda f: (f[-1], -f[0]))
        if even[-1] <= 2 * n ** (1 / order):
            return even
    best: tuple[int, ...] | None = None
    for padded in range(n, n + int(n * slack) + 1):
        for f in _exact(padded, order, 2):
            if best is None or (f[-1], -f[0]) < (best[-1], -best[0]):
                best = f
    return best if best is not None else balanced(n, order, pad=True)
