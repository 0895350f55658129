"""`python -m tnsearch.report [key=value ...]`: write a study's HTML report, log it to MLflow.

Takes the keys of `python -m tnsearch` (root=, name=, study=, storage=, tracking.*), plus the
`report.*` keys of conf/report.yaml.
"""

from __future__ import annotations

from pathlib import Path

from tnsearch.cli import command, resolve
from tnsearch.config import ReportConfig
from tnsearch.ui import Console


def run(cfg: ReportConfig, console: Console | None = None) -> Path:
    """Write the report the resolved config asks for, log it to the parent run; return its path.

    Raises:
        ConfigError: ``name: no study 'x' in <storage>``, ``tracking.uri: cannot reach ...``
            (and nothing is written).
    """
    from tnsearch.report import build_report, log_report, write_report
    from tnsearch.results.selection import open_existing
    from tnsearch.study.tracking import check_server

    console = console or Console()
    study = open_existing(cfg.storage, cfg.name)
    check_server(cfg.tracking)
    path = write_report(build_report(study, cfg), cfg.report.path)
    console.say(f"report: {path}")
    run_id = log_report(study, cfg.tracking, path)
    if run_id is not None:
        console.say(f"logged to MLflow run {run_id} ({cfg.tracking.uri})")
    return path


@command("report")
def main(cfg) -> None:
    """Entry point of `python -m tnsearch.report`."""
    run(resolve(cfg, ReportConfig))


if __name__ == "__main__":
    main()
