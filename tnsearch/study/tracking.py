"""MLflow tracking: one experiment and one parent run per study, one nested run per trial.

Every worker process and every machine finds the same parent run: its id is kept in the Optuna
study's user attributes, the one place all workers already share.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tnsearch.study import record

ROLE_TAG = "tnsearch_role"
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def _quiet() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive file lock next to a SQLite store (no-op for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """Logs a study to an MLflow tracking store.

    Args:
        uri: tracking URI, e.g. "sqlite:///studies/mlflow.db".
        artifacts: folder (or URI) under which the study's artifacts are stored.
        experiment: the experiment name (the study name).
    """

    enabled = True

    def __init__(self, uri: str, artifacts: str, experiment: str) -> None:
        from mlflow import MlflowClient

        _quiet()  # after the import: importing mlflow sets its own log levels
        self.uri = uri
        with _sqlite_lock(uri):
            # Creating a fresh SQLite store runs its migrations: one process at a time.
            self.client = MlflowClient(uri)
            self.experiment_id = self._experiment(experiment, artifacts)
        self.parent_id: str | None = None

    def _experiment(self, name: str, artifacts: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=f"{location}/{name}")
        except Exception:  # noqa: BLE001 - another worker created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- the study's parent run -------------------------------------------------------------
    def attach(self, study) -> str:
        """Find (or create, once per study) the parent run and mark it running."""
        run_id = record.parent_run(study)
        if run_id is None:
            mine = self.client.create_run(
                self.experiment_id, run_name=study.study_name, tags={ROLE_TAG: "parent"}
            ).info.run_id
            record.set_parent_run(study, mine)
            # Two machines may race here: the value in the storage wins, the loser is deleted.
            time.sleep(0.05)
            run_id = record.parent_run(study) or mine
            if run_id != mine:
                self.client.delete_run(mine)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.parent_id = run_id
        return run_id

    def log_parent(
        self, *, files: Iterable[str | Path] = (), params: Mapping[str, Any] = ()
    ) -> None:
        """Attach files (Pareto table, plot, config) and params to the parent run."""
        if params:
            self._log_params(self.parent_id, params)
        for file in files:
            self.client.log_artifact(self.parent_id, str(file))

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)

    # -- one run per trial ------------------------------------------------------------------
    def start_trial(self, number: int, plan: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """Open the nested run of trial `number`; log its params and plan.json."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent_id, "trial": str(number), "state": "RUNNING"},
        )
        run_id = run.info.run_id
        self._log_params(run_id, params)
        self.client.log_dict(run_id, dict(plan), "plan.json")
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def end_trial(
        self,
        run_id: str,
        *,
        state: str,
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        """Close a trial's run: final metrics, tags, and the MLflow status for its Optuna state."""
        from mlflow.entities import RunTag

        if metrics:
            self.log_metrics(run_id, metrics)
        all_tags = {"state": state, **dict(tags)}
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in all_tags.items()])
        status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}.get(
            state, "KILLED"
        )
        self.client.set_terminated(run_id, status=status)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in dict(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])


class NullTracker:
    """Stands in for Tracker when `tracking.enabled=false`: records nothing."""

    enabled = False
    parent_id = None

    def attach(self, study) -> None:
        return None

    def log_parent(self, **kwargs: Any) -> None:
        return None

    def finish_parent(self, status: str = "FINISHED") -> None:
        return None

    def start_trial(self, number: int, plan: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, run_id: Any, metrics: Mapping[str, float], step: int = 0) -> None:
        return None

    def end_trial(self, run_id: Any, **kwargs: Any) -> None:
        return None


def from_config(tracking_cfg: Mapping[str, Any], experiment: str) -> Tracker | NullTracker:
    """The tracker the `tracking.*` config asks for."""
    if not tracking_cfg["enabled"]:
        return NullTracker()
    return Tracker(tracking_cfg["uri"], tracking_cfg["artifacts"], experiment)
