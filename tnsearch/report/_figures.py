"""The report's figures: the Pareto front in 2-D projections and the hypervolume over trials.

Each comes as a static PNG (matplotlib) and, for the interactive report, as a plotly figure with
the trial and its plan on hover.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tnsearch import objectives
from tnsearch import plan as plans
from tnsearch.report._data import ReportData
from tnsearch.study.record import Record

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

#: (axis label, log scale) of the three objectives.
AXES = {
    "quality": ("validation {metric}", False),
    "params": ("parameters", True),
    "latency": ("latency (x dense, timed side by side)", True),
}
#: The 2-D projections of the three objectives: (x, y).
PROJECTIONS = (("params", "quality"), ("latency", "quality"), ("params", "latency"))


def projections(data: ReportData) -> list[tuple[str, str]]:
    """PROJECTIONS, then the quality against each objective the study's trials measured."""
    extra = dict.fromkeys(k for t in data.done for k in t.extras)
    return [*PROJECTIONS, *((name, "quality") for name in extra)]


def _axis(name: str, data: ReportData) -> tuple[str, bool]:
    """(label, log scale) of objective `name`'s axis."""
    if name in AXES:
        label, log = AXES[name]
        return label.format(metric=data.metric), log
    found = objectives.get(name)
    return (found.name, found.log) if found is not None else (name, False)


def _label(axis: str, data: ReportData) -> str:
    return _axis(axis, data)[0]


FRONT, OTHER, DENSE = "#1f6fc5", "#b8c0c8", "#d62728"


def _groups(data: ReportData) -> list[tuple[str, list[Record], dict]]:
    """(label, trials, style) of the three kinds of points, drawn in this order."""
    best = {t.number for t in data.front}
    dense = [data.dense] if data.dense is not None else []
    others = [t for t in data.done if t.number not in best and t is not data.dense]
    front = [t for t in data.front if t is not data.dense]
    return [
        ("trial", others, {"color": OTHER, "size": 7, "symbol": "circle"}),
        ("Pareto-optimal", front, {"color": FRONT, "size": 9, "symbol": "circle"}),
        ("dense reference", dense, {"color": DENSE, "size": 16, "symbol": "star"}),
    ]


def log_ticks(values: Sequence[float]) -> list[float]:
    """Tick positions for a log axis over `values`: 1, 2 and 5 times the powers of ten inside
    their range, or only the powers of ten when those would be more than eight; never a tick
    label on every minor tick (plotly labels them all by default on a short log range)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return []
    import math

    low, high = min(positive) / 1.15, max(positive) * 1.15
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for multiples in ((1, 2, 5), (1,)):
        ticks = [m * 10.0**k for k in decades for m in multiples if low <= m * 10.0**k <= high]
        if len(ticks) <= 8:
            break
    if len(ticks) < 2:  # a range inside one step: its ends, rounded
        ticks = sorted({float(f"{min(positive):.2g}"), float(f"{max(positive):.2g}")})
    return ticks


def tick_text(value: float) -> str:
    """A short tick label: 20k, 1.5M, 0.5."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def fit_title(text: str, width_in: float, fontsize: float = 10) -> str:
    """`text` wrapped to fit a figure `width_in` inches wide at `fontsize` points (a narrow
    one-panel figure clipped its one-line title)."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return textwrap.fill(text, width=chars)


def _value(trial: Record, axis: str) -> float:
    return trial.value(axis)


def front_png(data: ReportData) -> bytes:
    """The projections side by side, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = projections(data)
    fig, axes = plt.subplots(
        1, len(shown), figsize=(14 / 3 * len(shown), 4.2), constrained_layout=True
    )
    for ax, (x, y) in zip(axes, shown, strict=True):
        for label, trials, style in _groups(data):
            if not trials:
                continue
            ax.scatter(
                [_value(t, x) for t in trials],
                [_value(t, y) for t in trials],
                c=style["color"],
                s=style["size"] ** 2 * (1.6 if style["symbol"] == "star" else 0.6),
                marker="*" if style["symbol"] == "star" else "o",
                label=label,
                zorder=3 if style["symbol"] == "star" else 2,
            )
        for t in data.front:
            ax.annotate(
                str(t.number),
                (_value(t, x), _value(t, y)),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
                color="#444",
            )
        ax.set_xlabel(_label(x, data))
        ax.set_ylabel(_label(y, data))
        for name, axis, set_scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
            if _axis(name, data)[1]:
                set_scale("log")
                _major_only(axis, [_value(t, name) for t in data.done])
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{data.name}: {len(data.done)} trials, {len(data.front)} Pareto-optimal")
    return _png(fig)


def front_plotly(data: ReportData) -> go.Figure:
    """The projections as one interactive plotly figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shown = projections(data)
    fig = make_subplots(rows=1, cols=len(shown), horizontal_spacing=0.07)
    for col, (x, y) in enumerate(shown, start=1):
        for label, trials, style in _groups(data):
            fig.add_trace(
                go.Scatter(
                    x=[_value(t, x) for t in trials],
                    y=[_value(t, y) for t in trials],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    marker={k: style[k] for k in ("color", "size", "symbol")},
                    text=[_hover(t) for t in trials],
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=_label(x, data), **_plotly_axis(data, x), row=1, col=col)
        fig.update_yaxes(title_text=_label(y, data), **_plotly_axis(data, y), row=1, col=col)
    fig.update_layout(
        height=430,
        margin={"l": 50, "r": 20, "t": 30, "b": 50},
        legend={"orientation": "h", "y": 1.1},
        template="plotly_white",
    )
    return fig


def _plotly_axis(data: ReportData, axis: str) -> dict:
    """A plotly axis of objective `axis`: log with labels on its major ticks only."""
    if not _axis(axis, data)[1]:
        return {}
    ticks = log_ticks([_value(t, axis) for t in data.done])
    return {"type": "log", "tickvals": ticks, "ticktext": [tick_text(v) for v in ticks]}


def _major_only(axis, values: Sequence[float]) -> None:
    """A matplotlib log axis with labels on `log_ticks` only, none on the minor ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks = log_ticks(values)
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))
    axis.set_minor_formatter(NullFormatter())


def _hover(t: Record) -> str:
    return (
        f"trial {t.number}<br>{plans.summary(t.plan)}<br>quality {t.quality:.4f}"
        f"<br>params {t.params:,} ({t.compression or 1.0:.1f}x)"
        f"<br>latency {t.latency_text()}"
        + "".join(f"<br>{k} {objectives.text(k, v)}" for k, v in t.extras.items())
        + (f"<br>on {t.latency_device}" if t.latency_device else "")
    )


def hypervolume_png(history: Sequence[tuple[int, float]]) -> bytes:
    """The hypervolume after each finished trial, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
    ax.step([n for n, _ in history], [v for _, v in history], where="post", color=FRONT)
    ax.plot([n for n, _ in history], [v for _, v in history], "o", color=FRONT, ms=3)
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    return _png(fig)


def hypervolume_plotly(history: Sequence[tuple[int, float]]) -> go.Figure:
    """The hypervolume after each finished trial, as a plotly figure."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=[n for n, _ in history],
            y=[v for _, v in history],
            mode="lines+markers",
            line={"shape": "hv", "color": FRONT},
            hovertemplate="trial %{x}<br>hypervolume %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        height=300,
        width=720,
        margin={"l": 50, "r": 20, "t": 20, "b": 45},
        xaxis_title="trial",
        yaxis_title="hypervolume",
        template="plotly_white",
    )
    return fig


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
