"""The report's section "What the bonds say": do the bond spectra predict what the profile
measured?

Every entry of the sensitivity profile (one group tensorized one way, alone) holds its measured
zero-shot loss (``Entry.loss``) and its bond quantities (``Entry.bonds``, see
``tnsearch.bonds.option_quantities``). This section ranks the options by each quantity and by
the loss and gives their rank correlation (Spearman): over all options of all groups, and within
each group (the mean over the groups with at least :data:`MIN_OPTIONS` options), with the
scatter of the best quantity; and which groups the spectra call compressible against which the
profile found compressible. The measured output error of the data-aware fit (``Entry.error``,
not a bond quantity) is listed beside them as the yardstick.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tnsearch.bonds import QUANTITIES
from tnsearch.budget.profile import Entry, Profile
from tnsearch.report import _sensitivity
from tnsearch.report._data import ReportData
from tnsearch.report._html import esc, note, png, table

#: Groups with fewer options have no within-group correlation.
MIN_OPTIONS = 3
#: The within-group correlation the issue aims at.
GOAL = 0.7
#: The yardstick beside the bond quantities: the fit's measured output error.
ERROR = "error"


def ranks(values: Sequence[float]) -> list[float]:
    """The rank of each value, 1 = smallest; ties get the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (NaN below 3 points or for a constant)."""
    if len(x) != len(y) or len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def value(entry: Entry, quantity: str) -> float | None:
    """``entry``'s value of ``quantity`` (a bond quantity, or the fit's output error)."""
    return entry.error if quantity == ERROR else entry.bonds.get(quantity)


@dataclass(frozen=True)
class Correlation:
    """How one quantity ranks the options against their measured loss.

    Attributes:
        quantity: the bond quantity (or ``error``).
        across: Spearman over every option of every group.
        within: the mean over groups of the within-group Spearman (NaN: no group qualifies).
        groups: how many groups that mean is over.
        lowest: the lowest within-group Spearman.
        options: how many options have the quantity.
    """

    quantity: str
    across: float
    within: float
    groups: int
    lowest: float
    options: int


def correlations(found: Profile) -> list[Correlation]:
    """Each quantity the profile holds (and the output error), the largest within-group
    correlation (in magnitude) first."""
    held = [q for q in QUANTITIES if any(q in e.bonds for e in found.entries)]
    out = []
    for quantity in [*held, ERROR]:
        points = [
            (e.group, v, e.loss(found.dense_quality, found.maximize))
            for e in found.entries
            if (v := value(e, quantity)) is not None
        ]
        within = []
        for group in found.groups:
            mine = [(v, loss) for g, v, loss in points if g == group]
            if len(mine) >= MIN_OPTIONS:
                rho = spearman([v for v, _ in mine], [loss for _, loss in mine])
                if not math.isnan(rho):
                    within.append(rho)
        out.append(
            Correlation(
                quantity,
                spearman([v for _, v, _ in points], [loss for _, _, loss in points]),
                statistics.fmean(within) if within else math.nan,
                len(within),
                min(within) if within else math.nan,
                len(points),
            )
        )
    return sorted(out, key=lambda c: -abs(c.within) if not math.isnan(c.within) else math.inf)


def best(found: Profile) -> Correlation | None:
    """The bond quantity (not the output error) that ranks options best within groups: the
    largest correlation in magnitude (a negative one ranks them as well, reversed)."""
    bond = [c for c in correlations(found) if c.quantity != ERROR and not math.isnan(c.within)]
    return bond[0] if bond else None


@dataclass(frozen=True)
class GroupCall:
    """One group: its mean measured loss and mean quantity over its options, and their ranks
    among the groups (1: the most compressible)."""

    group: str
    loss: float
    quantity: float
    loss_rank: float
    quantity_rank: float


def compressible(found: Profile, quantity: str) -> list[GroupCall]:
    """Per group, the profile's and the spectra's verdicts (means over the group's options)."""
    means = {}
    for group in found.groups:
        mine = [e for e in found.options(group) if value(e, quantity) is not None]
        if mine:
            loss = statistics.fmean(e.loss(found.dense_quality, found.maximize) for e in mine)
            means[group] = (loss, statistics.fmean(value(e, quantity) for e in mine))
    groups = list(means)
    by_loss = ranks([means[g][0] for g in groups])
    by_quantity = ranks([means[g][1] for g in groups])
    calls = [
        GroupCall(g, means[g][0], means[g][1], a, b)
        for g, a, b in zip(groups, by_loss, by_quantity, strict=True)
    ]
    return sorted(calls, key=lambda c: c.loss_rank)


def _num(x: float, spec: str = "+.3f") -> str:
    return "-" if math.isnan(x) else format(x, spec)


def correlation_table(rows: list[Correlation]) -> str:
    body = [
        [
            esc(c.quantity),
            esc(
                QUANTITIES.get(c.quantity, "the fit's measured output error (not a bond quantity)")
            ),
            _num(c.across),
            _num(c.within),
            _num(c.lowest),
            esc(c.groups),
            esc(c.options),
        ]
        for c in rows
    ]
    header = ["quantity", "what", "Spearman, all options", "within groups (mean)"]
    return table([*header, "lowest group", "groups", "options"], body, numeric=range(2, 7))


def scatter_png(found: Profile, quantity: str) -> bytes:
    """The options' measured loss against ``quantity``, one colour per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tnsearch.report._figures import _png

    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    positive = True
    for group in found.groups:
        points = [
            (v, e.loss(found.dense_quality, found.maximize))
            for e in found.options(group)
            if (v := value(e, quantity)) is not None
        ]
        if points:
            positive = positive and all(v > 0 for v, _ in points)
            ax.scatter(*zip(*points, strict=True), s=14, alpha=0.8, label=group)
    if positive:
        ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel(quantity)
    ax.set_ylabel(f"zero-shot {found.metric} lost (alone)")
    ax.grid(alpha=0.3)
    if len(found.groups) <= 24:
        ax.legend(fontsize=6, ncol=2, title="group", title_fontsize=7)
    ax.set_title(f"{len(found.entries)} options: measured loss against {quantity}", fontsize=10)
    return _png(fig)


def calls_table(calls: list[GroupCall], quantity: str) -> str:
    half = len(calls) / 2
    rows = []
    for c in calls:
        profile_says = "compressible" if c.loss_rank <= half else "sensitive"
        spectra_say = "compressible" if c.quantity_rank <= half else "sensitive"
        rows.append(
            [
                esc(c.group),
                f"{c.loss:.4f}",
                esc(f"{c.loss_rank:g}"),
                esc(profile_says),
                f"{c.quantity:.4g}",
                esc(f"{c.quantity_rank:g}"),
                esc(spectra_say) + ("" if spectra_say == profile_says else " &#x2717;"),
            ]
        )
    header = ["group", "mean loss", "rank", "profile", f"mean {quantity}", "rank", "spectra"]
    return table(header, rows, numeric=(1, 2, 4, 5))


def render(data: ReportData) -> str:
    found = _sensitivity.newest(data)
    if found is None:
        return note(
            "No profile yet: <code>python -m tnsearch.profile</code> measures one, with the bond "
            "quantities of every option."
        )
    if not any(e.bonds for e in found.entries):
        return note(
            f"The profile {esc(found.key)} was measured before it recorded bond quantities: "
            "delete it (the study's <code>profile/</code> folder) and run "
            "<code>python -m tnsearch.profile</code> again."
        )
    rows = correlations(found)
    top = best(found)
    parts = [
        note(
            "Each option of the sensitivity profile (a group tensorized alone, fitted to its "
            "inputs, scored without training) has a measured loss and the quantities of its "
            "bonds: the energy its ranks leave out of the dense weight's unfoldings (raw and "
            "input-whitened, summed or the largest bond), the entropies and effective ranks. "
            "Spearman's rank correlation with the loss, over all options and within each group "
            f"(mean over the groups with at least {MIN_OPTIONS} options; 1: the quantity orders "
            "the options exactly as their loss, -1: exactly reversed). The loss is the quality "
            "lost plus 10<sup>-3</sup> times the output error (which breaks ties between options "
            "that lose nothing): the output error has a head start as a yardstick."
        ),
        correlation_table(rows),
    ]
    if top is None:
        return "\n".join([*parts, note("No group has enough options for a correlation.")])
    verdict = (
        f"reaches the goal of |Spearman| >= {GOAL}"
        if abs(top.within) >= GOAL
        else f"does not reach the goal of |Spearman| >= {GOAL}: no bond quantity does"
    )
    parts.append(
        note(
            f"Best within groups: <b>{esc(top.quantity)}</b>, Spearman {top.within:+.3f} "
            f"(lowest group {top.lowest:+.3f}, over all options {top.across:+.3f}); it "
            f"{esc(verdict)}."
        )
    )
    parts.append(png(scatter_png(found, top.quantity), f"loss against {top.quantity}"))
    calls = compressible(found, top.quantity)
    agree = spearman([c.loss for c in calls], [c.quantity for c in calls])
    parts.append(
        note(
            f"Which groups are compressible: the profile's verdict (the mean loss over a group's "
            f"options) against the spectra's (the mean {esc(top.quantity)}), each ranked over "
            f"the groups, the better half called compressible (&#x2717;: they disagree); "
            f"Spearman over the groups {_num(agree)}."
        )
    )
    parts.append(calls_table(calls, top.quantity))
    return "\n".join(parts)
