"""HTML building blocks of the report: the page, tables, bars, embedded images and plots.

Everything is inline (styles, PNGs as data URIs, plotly.js once in the head), so the file opens
offline and can be mailed or attached to an MLflow run as one artifact.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a;
       max-width: 1240px; margin: 0 auto; padding: 0 24px 48px; }
h1 { font-size: 24px; margin: 24px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px;
     border-bottom: 1px solid #d8dee4; padding-bottom: 4px; } h3 { font-size: 15px; }
nav { font-size: 13px; color: #57606a; } nav a { margin-right: 14px; color: #0969da; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e9ee; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f5f7f9; font-weight: 600; } td.num { text-align: right;
     font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #57606a; font-size: 13px; max-width: 980px; }
.facts td:first-child { color: #57606a; }
.bar { display: inline-block; height: 9px; background: #4c8bd6; border-radius: 2px;
       vertical-align: middle; margin-right: 6px; }
.cell { display: inline-block; padding: 1px 6px; border-radius: 3px; white-space: nowrap;
        font-size: 12px; }
img.static { max-width: 100%; border: 1px solid #e5e9ee; }
.failed { color: #b42318; }
"""

#: Colours for categories (topologies), in order.
PALETTE = ("#cfe2f7", "#fbe3c1", "#d3f0d6", "#f5d0d6", "#e3d8f5", "#f7f3c1", "#d5eef0")


def esc(value: Any) -> str:
    """`value` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def page(title: str, sections: Sequence[tuple[str, str, str]], *, head: str = "") -> str:
    """The whole document.

    Args:
        title: the page title and heading.
        sections: (anchor, heading, body HTML) per section, in order.
        head: extra HTML for the head (e.g. the plotly.js script).
    """
    nav = " ".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "\n".join(
        f'<section id="{esc(a)}">\n<h2>{esc(h)}</h2>\n{b}\n</section>' for a, h, b in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n{head}\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = ()
) -> str:
    """A table; `rows` hold HTML cells, columns listed in `numeric` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if k in numeric else f"<td>{c}</td>"
            for k, c in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def facts(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table of label / HTML value."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def note(text: str) -> str:
    """A paragraph of explanation (`text` is HTML)."""
    return f'<p class="note">{text}</p>'


def bar(fraction: float, label: str, *, width: int = 90) -> str:
    """A horizontal bar for a value in [0, 1], followed by `label`."""
    px = max(0, min(width, round(fraction * width)))
    return f'<span class="bar" style="width:{px}px"></span>{esc(label)}'


def tag(text: str, colour: str) -> str:
    """A small coloured label."""
    return f'<span class="cell" style="background:{colour}">{esc(text)}</span>'


def png(data: bytes, alt: str) -> str:
    """An embedded PNG image."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="static" alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def plotly_head() -> str:
    """plotly.js, inline, for the head of a page with interactive figures."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def plotly_figure(fig: Any) -> str:
    """A plotly figure as an HTML fragment (plotly.js must be in the head)."""
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        config={"displaylogo": False, "responsive": True},
    )
