"""`python -m tnsearch.report [key=value ...]`: write a study's HTML report, log it to MLflow.

Takes the keys of `python -m tnsearch` (root=, name=, study=, storage=, tracking.*), plus the
`report.*` keys of conf/report.yaml.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from tnsearch import console
from tnsearch.config import ConfigError


def run(cfg: Mapping[str, Any]) -> Path:
    """Write the report the resolved config asks for, log it to the parent run; return its path.

    Raises:
        ConfigError: ``name: no study 'x' in <storage>`` (and nothing is written).
    """
    from tnsearch.report import build_report, log_report, write_report
    from tnsearch.search import quiet
    from tnsearch.select import open_existing

    quiet()
    study = open_existing(cfg["storage"], cfg["name"])
    path = write_report(build_report(study, cfg), cfg["report"]["path"])
    console.say(f"report: {path}")
    run_id = log_report(study, cfg["tracking"], path)
    if run_id is not None:
        console.say(f"logged to MLflow run {run_id} ({cfg['tracking']['uri']})")
    return path


@hydra.main(config_path="pkg://tnsearch.conf", config_name="report", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from tnsearch.search import resolve

    try:
        run(resolve(cfg))
    except ConfigError as exc:
        console.error(str(exc))
        sys.exit(2)


def main() -> None:
    """Entry point of `python -m tnsearch.report`."""
    _hydra_main()


if __name__ == "__main__":
    main()
