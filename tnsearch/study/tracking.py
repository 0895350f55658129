"""MLflow tracking: one experiment and one parent run per study, one nested run per trial.

Every worker process and every machine finds the same parent run: its id is kept in the Optuna
study's user attributes, the one place all workers already share.

MLflow is kept out of a worker's way: a new SQLite store is a copy of an empty one
(`mlflow_store`), not MLflow's seconds of schema migrations; and the study command's tracker is a
`BackgroundTracker`, which makes an `MlflowTracker`'s calls on a thread of its own, in order, so
that a trial waits for its run to be made and for nothing else (params, artifacts, metrics, a slow
store). A plain `MlflowTracker` makes its calls at once: for commands that log one run at their
end, and for tests. All three trackers (with `NullTracker`) are a `tracker.Tracker`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tnsearch.config import TrackingConfig
from tnsearch.study import mlflow_store, record
from tnsearch.study.background_tracking import BackgroundTracker
from tnsearch.study.tracker import Tracker
from tnsearch.ui import console

__all__ = [
    "ROLE_TAG", "MlflowTracker", "NullTracker", "Tracker", "check_server", "from_config"
]  # fmt: skip

ROLE_TAG = "tnsearch_role"
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
_METRICS = 1000  # ... and at most 1000 metrics


def _quiet() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # The store logs its database errors with tracebacks; the tracker reports them itself.
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)


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


class MlflowTracker:
    """Logs a study to an MLflow tracking store (a `Tracker`).

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
        with mlflow_store.lock(uri):  # one process at a time makes (or copies) a new store
            mlflow_store.seed(uri)
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
    def attach(self, study) -> None:
        """Find (or create, once per study) the parent run and mark it running (`parent_id`); a
        parent run the store no longer has (a new or restored store) is made anew."""
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
        self,
        *,
        files: Iterable[str | Path] = (),
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        description: str | None = None,
    ) -> None:
        """Attach files (Pareto table, plot, report), params (those it has not yet: MLflow
        keeps a param's first value), metrics and a markdown description to the parent run."""
        if params:
            have = self.client.get_run(self.parent_id).data.params
            self._log_params(self.parent_id, {k: v for k, v in params.items() if k not in have})
        if metrics:
            self.log_metrics(self.parent_id, metrics)
        if description is not None:
            self.client.set_tag(self.parent_id, "mlflow.note.content", description)
        for file in files:
            self.client.log_artifact(self.parent_id, str(file))

    @_safe
    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)

    # -- one run per trial ------------------------------------------------------------------
    @_safe
    def start_trial(
        self,
        number: int,
        plan: Mapping[str, Any],
        params: Mapping[str, Any],
        *,
        on_run_id: Callable[[str], object] | None = None,
    ) -> str:
        """Open the nested run of trial `number`; log its params and plan.json.

        Args:
            on_run_id: called with the new run's id as soon as it exists (before the params are
                logged), e.g. to store it with the trial; what it raises is ignored (the trial
                may have ended meanwhile, see `BackgroundTracker`).
        """
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent_id, "trial": str(number), "state": "RUNNING"},
        )
        run_id = run.info.run_id
        if on_run_id is not None:
            with contextlib.suppress(Exception):  # see the docstring
                on_run_id(run_id)
        self._log_params(run_id, params)
        self.client.log_dict(run_id, dict(plan), "plan.json")
        return run_id

    @_safe
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), _METRICS):
            self.client.log_batch(run_id, metrics=batch[i : i + _METRICS])

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
        for attempt in range(3):  # a store locked for a moment (a shutdown's writes) is retried
            try:
                self.client.set_terminated(run_id, status=status)
                return
            except Exception:  # noqa: BLE001 - the last one is reported by _safe
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))

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

    def close(self, timeout: float | None = None) -> None:
        """Nothing to wait for: every call was made when it returned."""
        return None

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in dict(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])


class NullTracker:
    """No tracking (`tracking.enabled=false`): a `Tracker` whose calls do nothing."""

    enabled = False
    parent_id = None
    experiment_id = None

    def attach(self, study) -> None:
        return None

    def log_parent(
        self,
        *,
        files: Iterable[str | Path] = (),
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        description: str | None = None,
    ) -> None:
        return None

    def finish_parent(self, status: str = "FINISHED") -> None:
        return None

    def start_trial(
        self,
        number: int,
        plan: Mapping[str, Any],
        params: Mapping[str, Any],
        *,
        on_run_id: Callable[[str], object] | None = None,
    ) -> None:
        return None

    def log_metrics(self, run_id: Any, metrics: Mapping[str, float], step: int = 0) -> None:
        return None

    def end_trial(
        self,
        run_id: Any,
        *,
        state: str,
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        return None

    def log_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        files: Iterable[str | Path] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def _open(uri: str, artifacts: str, experiment: str) -> MlflowTracker | NullTracker:
    """An MlflowTracker on the store, or (said once) a NullTracker when it cannot be opened."""
    try:
        return MlflowTracker(uri, artifacts, experiment)
    except Exception as exc:  # noqa: BLE001 - tracking is never the reason a study stops
        console.warn(
            f"MLflow ({uri}): cannot open the store: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}; the study goes on without tracking"
        )
        return NullTracker()


#: Seconds the start of a command waits for an MLflow tracking server to answer.
PROBE_S = 3.0


def check_server(
    tracking_cfg: TrackingConfig | Mapping[str, Any], *, timeout: float = PROBE_S
) -> None:
    """An `http(s)://` tracking URI must answer within `timeout` seconds (any HTTP answer will
    do): MLflow's own client retries an unreachable server for minutes, and says so only after
    the trials. Raises ConfigError on `tracking.uri`; writes nothing.
    """
    import urllib.error
    import urllib.request

    from tnsearch.config import ConfigError
    from tnsearch.study.storage import redact

    tracking = TrackingConfig.of(tracking_cfg)
    uri = str(tracking.uri or "")
    if not tracking.enabled or not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:  # refused, no such host, timed out, a bad URL
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            "tracking.uri",
            f"cannot reach {redact(uri)} ({reason}): start the MLflow server, or "
            "tracking.enabled=false",
        ) from None


def from_config(
    tracking_cfg: TrackingConfig | Mapping[str, Any], experiment: str, *, background: bool = False
) -> Tracker:
    """The tracker the `tracking.*` config asks for (`background`: a BackgroundTracker, which
    opens the store on its thread)."""
    tracking = TrackingConfig.of(tracking_cfg)
    if not tracking.enabled:
        return NullTracker()
    uri, artifacts = tracking.uri, tracking.artifacts
    if background:
        return BackgroundTracker(lambda: _open(uri, artifacts, experiment), uri=uri)
    return _open(uri, artifacts, experiment)
