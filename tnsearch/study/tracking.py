"""MLflow tracking: one experiment and one parent run per study, one nested run per trial.

Every worker process and every machine finds the same parent run: its id is kept in the Optuna
study's user attributes, the one place all workers already share.
"""

from __future__ import annotations

import fcntl
import logging
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tnsearch.study import record
from tnsearch.ui import console

ROLE_TAG = "tnsearch_role"
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def _quiet() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # The store logs its database errors with tracebacks; the tracker reports them itself.
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
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


def _safe(method):
    """Tracking is never the reason a study stops: an MLflow error in `method` is reported once
    per kind (method and error type), and the call returns None; Optuna keeps the records."""
    import functools

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if method.__name__ in ("log_metrics", "end_trial") and args and args[0] is None:
            return None  # the trial's run was never made (the store failed then)
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a tracking store can fail in any way
            self._report(method.__name__, exc)
            return None

    return guarded


class Tracker:
    """Logs a study to an MLflow tracking store.

    Every method that talks to MLflow is guarded (`_safe`): a store that is gone, locked or
    unreachable costs its runs a few figures, never the study.

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
        self._reported: set[tuple[str, str]] = set()

    def _report(self, what: str, exc: BaseException) -> None:
        kind = (what, type(exc).__name__)
        if kind in self._reported:
            return
        self._reported.add(kind)
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        console.warn(
            f"MLflow ({self.uri}): {what} failed: {type(exc).__name__}: {first}; the study goes "
            "on and keeps its Optuna records (this is said once per kind of error)"
        )

    def _experiment(self, name: str, artifacts: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()
        try:
            return self.client.create_experiment(
                name, artifact_location=f"{location}/{urllib.parse.quote(name)}"
            )
        except Exception:  # noqa: BLE001 - another worker created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- the study's parent run -------------------------------------------------------------
    @_safe
    def attach(self, study) -> str:
        """Find (or create, once per study) the parent run and mark it running; a parent run
        the store no longer has (a new or restored store) is made anew."""
        run_id = record.parent_run(study)
        if run_id is not None and not self._exists(run_id):
            console.warn(
                f"MLflow ({self.uri}) has no run {run_id}, the study's parent run: "
                "a new one is made"
            )
            run_id = None
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

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    @_safe
    def log_parent(
        self, *, files: Iterable[str | Path] = (), params: Mapping[str, Any] = ()
    ) -> None:
        """Attach files (Pareto table, plot, config) and params to the parent run."""
        if params:
            self._log_params(self.parent_id, params)
        for file in files:
            self.client.log_artifact(self.parent_id, str(file))

    @_safe
    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)

    # -- one run per trial ------------------------------------------------------------------
    @_safe
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

    @_safe
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    @_safe
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

    # -- a run of its own (profile, compress) ------------------------------------------------
    @_safe
    def log_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        files: Iterable[str | Path] = (),
        tags: Mapping[str, str] = (),
    ) -> str:
        """One finished run in the study's experiment: params, metrics, files as artifacts."""
        from mlflow.entities import RunTag

        run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        if params:
            self._log_params(run_id, params)
        if metrics:
            self.log_metrics(run_id, metrics)
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for file in files:
            self.client.log_artifact(run_id, str(file))
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in dict(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])


class NullTracker:
    """Stands in for Tracker when `tracking.enabled=false`: records nothing."""

    enabled = False
    parent_id = None
    experiment_id = None

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

    def log_run(self, name: str, **kwargs: Any) -> None:
        return None

    def end_trial(self, run_id: Any, **kwargs: Any) -> None:
        return None


def from_config(tracking_cfg: Mapping[str, Any], experiment: str) -> Tracker | NullTracker:
    """The tracker the `tracking.*` config asks for."""
    if not tracking_cfg["enabled"]:
        return NullTracker()
    try:
        return Tracker(tracking_cfg["uri"], tracking_cfg["artifacts"], experiment)
    except Exception as exc:  # noqa: BLE001 - tracking is never the reason a study stops
        console.warn(
            f"MLflow ({tracking_cfg['uri']}): cannot open the store: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}; the study goes on without tracking"
        )
        return NullTracker()
