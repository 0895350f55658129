"""The sections of the report: each is one function from the study snapshot to an HTML fragment.

A section is a `Section(title, render)`; `SECTIONS` lists them in page order. To add one, write a
function ``render(data: ReportData) -> str`` and append ``Section("Title", render)`` to it.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from tnsearch import __version__, objectives, tn
from tnsearch.report import (
    _bond_profile,
    _bond_training,
    _bonds,
    _figures,
    _importance,
    _sensitivity,
)
from tnsearch.report._data import ReportData
from tnsearch.report._html import (
    PALETTE,
    bar,
    esc,
    facts,
    note,
    plotly_figure,
    png,
    table,
    tag,
)
from tnsearch.results import pareto
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui.names import headers, test_name


class Section(NamedTuple):
    """One section of the report: its heading and the function that renders its body."""

    title: str
    render: Callable[[ReportData], str]


def _interactive(data: ReportData) -> bool:
    return bool(data.options.interactive)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def overview(data: ReportData) -> str:
    """The study at a glance: objectives, trials by state, the dense reference, the best."""
    states = data.states()
    directions = ", ".join(
        f"{name} ({d.name.lower()})"
        for name, d in zip(data.objectives, data.study.directions, strict=True)
    )
    pairs = [
        ("study", esc(data.name)),
        ("objectives", esc(directions)),
        ("trials", esc(", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none")),
        ("Pareto-optimal", esc(len(data.front))),
    ]
    if data.dense is not None:
        d = data.dense
        pairs.append(
            (
                "dense reference",
                esc(
                    f"trial {d.number}: {data.metric} {d.quality:.4f}, "
                    f"{d.params:,} parameters, {d.latency_ms:.3f} ms / batch"
                    + (f" on {d.latency_device}" if d.latency_device else "")
                ),
            )
        )
    if data.done:
        best = max(data.done, key=lambda t: t.quality)
        pairs.append((f"best {data.metric}", esc(f"{best.quality:.4f} (trial {best.number})")))
        pairs.append(("hypervolume", esc(f"{pareto.hypervolume(data.study):.4f}")))
    parent = record.parent_run(data.study)
    if parent:
        pairs.append(("MLflow parent run", esc(parent)))
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    pairs.append(("report", esc(f"{stamp}, tnsearch {__version__}")))
    return facts(pairs)


def front(data: ReportData) -> str:
    """The front in the three 2-D projections of the quality, parameters and latency."""
    if not data.done:
        return note("No finished trial yet.")
    parts = []
    if _interactive(data):
        parts.append(plotly_figure(_figures.front_plotly(data)))
    parts.append(png(_figures.front_png(data), f"Pareto front of {data.name}"))
    parts.append(
        note(
            "Blue: Pareto-optimal trials on all objectives "
            f"({esc(', '.join(data.objectives))}), numbered; grey: the other finished trials; "
            "red star: the dense reference. Each panel is a projection, so a trial can be "
            "optimal without being on the edge of every panel."
        )
    )
    return "\n".join(parts)


def hypervolume(data: ReportData) -> str:
    """The hypervolume of the front after each finished trial."""
    history = pareto.hypervolume_history(data.study)
    if not history:
        return note("No hypervolume yet: it needs the dense reference trial to have finished.")
    reference = pareto.reference_text(data.metric, data.objectives)
    figure = (
        plotly_figure(_figures.hypervolume_plotly(history))
        if _interactive(data)
        else png(_figures.hypervolume_png(history), "hypervolume over trials")
    )
    return figure + note(
        f"Hypervolume {history[-1][1]:.4f} after trial {history[-1][0]}, in normalized "
        f"objective space: 1 - {esc(data.metric)}, parameters divided by the dense model's, and "
        "latency as its ratio to the dense model timed beside each trial; "
        f"reference point ({esc(reference)})."
    )


def front_table(data: ReportData) -> str:
    """One row per Pareto-optimal trial; where workers measured latency on different devices,
    each device's own front too (ratios of different devices are not comparable)."""
    if not data.front:
        return note("No Pareto-optimal trial yet.")
    rows = []
    found = [pareto.row(t, data.metric) for t in data.front]
    extra = pareto.extra_columns(found, data.metric)
    for t, r in zip(data.front, found, strict=True):
        rows.append(
            [
                esc(r["number"]),
                _num(r[data.metric], ".4f"),
                _num(r[test_name(data.metric)], ".4f"),
                _num(r["param_count"], ",d"),
                _num(r["compression"], ".1f") + "x",
                esc(_latency_cell(t)),
                _num(r["latency_ms"], ".3f"),
                *(esc(objectives.text(name, r.get(name))) for name in extra),
                esc(r["plan"]),
            ]
        )
    header = ["trial", *headers(data.metric), "param_count", "compression"]
    header += ["latency x dense (p10-p90)", "ms / batch", *extra]
    parts = [table([*header, "plan"], rows, numeric=range(1, 7 + len(extra)))]
    noisy = [t.number for t in data.done if t.latency_noisy]
    if noisy:
        parts.append(
            note(
                f"Noisy latency (paired ratios spread wider than p90/p10 "
                f"{latency_spread()} after re-measuring): trials {esc(_numbers(noisy))}. "
                "Their latency is kept but the pruner does not prune on it."
            )
        )
    devices = by_device(data.done)
    if len(devices) > 1:
        lines = [
            f"{esc(name)}: trials {esc(_numbers([t.number for t in trials]))}, front "
            f"{esc(_numbers([t.number for t in device_front(trials)]))}"
            for name, trials in devices.items()
        ]
        parts.append(
            note(
                "Latency was measured on more than one device; each device's own front "
                "(its trials only):<br>" + "<br>".join(lines)
            )
        )
    return "\n".join(parts)


def _latency_cell(t: Record) -> str:
    if t.latency_ratio is None:
        return "-"
    cell = f"{t.latency_ratio:.2f}x"
    if t.latency_ratio_p10 is not None and t.latency_ratio_p90 is not None:
        cell += f" ({t.latency_ratio_p10:.2f}-{t.latency_ratio_p90:.2f})"
    return cell + (" noisy" if t.latency_noisy else "")


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, sorted(numbers)))


def latency_spread() -> float:
    from tnsearch.measure.latency import NOISY_SPREAD

    return NOISY_SPREAD


def by_device(trials: list[Record]) -> dict[str, list[Record]]:
    """Trials by the device their latency was measured on (unknown: older records)."""
    out: dict[str, list[Record]] = {}
    for t in trials:
        out.setdefault(t.latency_device or "unknown device", []).append(t)
    return out


def device_front(trials: list[Record]) -> list[Record]:
    """The trials no other of `trials` dominates on (quality, params, latency ratio)."""

    def key(t: Record) -> tuple[float, float, float]:
        return (-(t.quality or 0.0), float(t.params or 0), float(t.latency_ratio or 0.0))

    def dominates(a: Record, b: Record) -> bool:
        ka, kb = key(a), key(b)
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]


def importances(data: ReportData) -> str:
    """Parameter importances per objective, for each configured evaluator."""
    options = data.options.importance
    min_trials = int(options.get("min_trials", 8))
    top = int(options.get("top", 15))
    parts = [
        note(
            "How much each choice explains each objective, over the finished trials. A layer "
            "kept dense asks no topology, order or rank (the space is define-by-run), so the "
            "evaluators see features that every trial has: <code>&lt;layer&gt;.topology</code> "
            "(a topology, or <i>dense</i>), <code>&lt;layer&gt;.order</code> and "
            "<code>&lt;layer&gt;.rank</code> (0 when dense), and the other parameters all "
            "trials share. Factorizations (<code>modesK</code>) are left out; importances of "
            "one objective sum to 1; the tables sum them per layer (open <i>by feature</i> for the "
            "features)."
        )
    ]
    for name, evaluator in _importance.evaluators(options).items():
        parts.append(f"<h3>{esc(name)} ({esc(type(evaluator).__name__)})</h3>")
        found = _importance.evaluate(data, evaluator, min_trials)
        if isinstance(found, str):
            parts.append(note(esc(found)))
            continue
        parts.append(_ranking("layer", _importance.by_layer(found, data.groups()), top))
        parts.append(
            f"<details><summary>by feature</summary>{_ranking('feature', found, top)}</details>"
        )
    return "\n".join(parts)


def _ranking(label: str, found: dict[str, dict[str, float]], top: int) -> str:
    """Importances per objective (columns), most important first; bars relative to the column's
    largest value."""
    names = list(found)
    names = sorted(
        {f for values in found.values() for f in values},
        key=lambda f: -max(found[o].get(f, 0.0) for o in names),
    )
    peak = {o: max(found[o].values(), default=0.0) or 1.0 for o in names}
    rows = [
        [
            esc(f),
            *(bar(found[o].get(f, 0.0) / peak[o], f"{found[o].get(f, 0.0):.3f}") for o in names),
        ]
        for f in names[:top]
    ]
    hidden = len(names) - top
    more = note(f"{hidden} more, of lower importance, not shown.") if hidden > 0 else ""
    return table([label, *names], rows) + more


def _colour(topology: str) -> str:
    known = sorted(tn.TOPOLOGIES)
    return PALETTE[known.index(topology) % len(PALETTE)] if topology in known else "#eee"


def _counts(counter: Counter) -> str:
    """Values from the storage, escaped, with their counts."""
    return ", ".join(f"{esc(k)} &times;{n}" for k, n in counter.most_common()) or "-"


def layers(data: ReportData) -> str:
    """For each eligible layer, how often the best trials tensorize it, and how."""
    groups = data.group_layers()
    best = data.tensorized_front
    if not groups:
        return note("No trial has asked about any layer yet.")
    if not best:
        return note("No Pareto-optimal trial tensorizes a layer yet.")
    rows, matrix = [], []
    for group, members in groups.items():
        specs = [_spec(t, group, members) for t in best]
        used = [s for s in specs if s is not None]
        label = esc(group) + (
            f'<br><span class="note">{esc(", ".join(members))}</span>'
            if members and members != [group]
            else ""
        )
        rows.append(
            [
                label,
                bar(len(used) / len(best), f"{len(used)} of {len(best)}"),
                _counts(Counter(str(s["topology"]) for s in used)),
                _counts(Counter(f"r{s['rank']}" for s in used)),
                _counts(Counter(f"o{s['order']}" for s in used)),
            ]
        )
        matrix.append(
            [esc(group)]
            + [
                tag(f"{s['topology']} r{s['rank']} o{s['order']}", _colour(s["topology"]))
                if s
                else '<span class="note">dense</span>'
                for s in specs
            ]
        )
    head = note(
        f"Over the {len(best)} Pareto-optimal trials that tensorize at least one layer "
        "(the dense reference left out). Ranks are the requested bond dimensions (rN), orders "
        "the number of modes per dimension (oN)."
    )
    summary = table(["layer", "tensorized", "topologies", "ranks", "orders"], rows)
    detail = table(["layer", *(f"trial {t.number}" for t in best)], matrix)
    return head + summary + "<h3>Per Pareto-optimal trial</h3>" + detail


def _spec(trial: Record, group: str, members: list[str]) -> dict | None:
    layers_ = trial.layers
    return next((layers_[m] for m in [group, *members] if m in layers_), None)


#: The report's sections, in page order.
SECTIONS: list[Section] = [
    Section("Overview", overview),
    Section("Pareto front", front),
    Section("Hypervolume", hypervolume),
    Section("Pareto-optimal trials", front_table),
    Section("Parameter importances", importances),
    Section("Layers", layers),
    Section("Sensitivity profile", _sensitivity.render),
    Section("What the bonds say", _bond_profile.render),
    Section("Bonds", _bonds.render),
    Section("Bonds over training", _bond_training.render),
]
