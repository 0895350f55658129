"""The study report: one self-contained HTML file (`python -m tnsearch.report`).

It reads the study and writes nothing to its storage, so it can be made while the study runs:
``write_report(build_report(study, cfg), path)``, where ``cfg`` is the report's configuration
(`tnsearch.config.ReportConfig`, its options in ``cfg.report``).

The page is a list of sections (`SECTIONS`, see `tnsearch.report._sections`); a section that fails
shows its error and the others still render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from tnsearch.config import ReportConfig, TrackingConfig
from tnsearch.report._data import ReportData
from tnsearch.report._sections import SECTIONS, Section

__all__ = ["SECTIONS", "ReportData", "Section", "build_report", "log_report", "write_report"]


def _anchor(title: str) -> str:
    return "-".join(title.lower().split())


def build_report(
    study: optuna.Study,
    cfg: ReportConfig | Mapping[str, Any],
    *,
    sections: Sequence[Section] | None = None,
) -> str:
    """The report of `study` as one HTML document.

    Args:
        study: the study (only read).
        cfg: the report's configuration (or plain data, `ReportConfig.of`); `cfg.report`
            holds the options.
        sections: the sections to render, by default `SECTIONS`.
    """
    from tnsearch.report import _html

    data = ReportData.collect(study, cfg)
    rendered = []
    for section in SECTIONS if sections is None else sections:
        try:
            body = section.render(data)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            body = _html.note(
                f'<span class="failed">This section failed: {_html.esc(type(exc).__name__)}: '
                f"{_html.esc(exc)}</span>"
            )
        rendered.append((_anchor(section.title), section.title, body))
    interactive = bool(data.options.interactive)
    head = _html.plotly_head() if interactive else ""
    return _html.page(f"tnsearch study {study.study_name}", rendered, head=head)


def write_report(html: str, path: str | Path) -> Path:
    """Write `html` to `path` atomically (a reader never sees half a file); return the path."""
    from tnsearch.files import write_text

    return write_text(path, html)


def log_report(
    study: optuna.Study, tracking: TrackingConfig | Mapping[str, Any], path: str | Path
) -> str | None:
    """Attach the report to the study's MLflow parent run; return its id (None: not logged).

    Nothing is logged when tracking is off or the study has no parent run; the run's status is
    left as it is.
    """
    from tnsearch.study import record

    tracking = TrackingConfig.of(tracking)
    parent = record.parent_run(study)
    uri = str(tracking.uri)
    if not tracking.enabled or parent is None:
        return None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # the store is gone: do not create an empty one
    from mlflow import MlflowClient

    MlflowClient(uri).log_artifact(parent, str(path))
    return parent
