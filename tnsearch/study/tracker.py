"""What a tracker is: the calls a study, the profile and compress make to record their runs.

Three classes satisfy it (`tests/study/test_tracking_unit.py` checks their signatures against
this one): `tracking.MlflowTracker` makes each call at once, `background_tracking.
BackgroundTracker` makes the same calls in order on a thread of its own, and `tracking.
NullTracker` makes none (`tracking.enabled=false`). A run is named by an opaque handle: the run's
id (MLflow), a `background_tracking.Run` that holds it once it is made, or None (no run, or the
store failed); every call that takes one accepts any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tracker"]


@runtime_checkable
class Tracker(Protocol):
    """The tracking calls of a study: one parent run per study, one nested run per trial, and
    runs of their own (the profile, compress). None of them raises: tracking is never the
    reason a study stops."""

    enabled: bool

    @property
    def experiment_id(self) -> str | None: ...

    @property
    def parent_id(self) -> str | None: ...

    def attach(self, study: Any) -> None:
        """Find (or make, once per study) the study's parent run and mark it running."""

    def log_parent(
        self,
        *,
        files: Iterable[str | Path] = (),
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        description: str | None = None,
    ) -> None:
        """Log files, params (a param keeps its first value), metrics and a description to the
        parent run."""

    def finish_parent(self, status: str = "FINISHED") -> None:
        """End the parent run with `status`."""

    def start_trial(
        self,
        number: int,
        plan: Mapping[str, Any],
        params: Mapping[str, Any],
        *,
        on_run_id: Callable[[str], object] | None = None,
    ) -> Any:
        """Make trial `number`'s nested run; its handle."""

    def log_metrics(self, run_id: Any, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log `metrics` at `step` to the run `run_id` names."""

    def end_trial(
        self,
        run_id: Any,
        *,
        state: str,
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        """Log the trial's last metrics and tags and end its run as its `state` says."""

    def log_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        files: Iterable[str | Path] = (),
        tags: Mapping[str, str] = (),
    ) -> Any:
        """Log a run of its own, whole; its handle."""

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued (up to `timeout` seconds)."""
