"""`BackgroundTracker`: a tracker's MLflow calls made on one thread of their own, in order.

The thread imports mlflow and opens the store while the worker prepares its first trial; a trial
then waits for its run to be made (milliseconds) and for nothing else: not for its params, plan,
metrics and end, nor for long on a store that is slow, locked or gone. What the calls hand back
comes later: a `Run` handle stands for a run until the thread has made it.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tnsearch.study.tracker import Tracker
from tnsearch.ui import console

Inner = Tracker  # the tracker whose calls the thread makes (`tracking.MlflowTracker`)

__all__ = ["CLOSE_TIMEOUT_S", "RUN_WAIT_S", "BackgroundTracker", "Run"]


class Run:
    """A run that `BackgroundTracker`'s thread makes: `id` is None until it is made (and stays
    None when MLflow failed). The calls that take a run id take the handle too."""

    __slots__ = ("_made", "id")

    def __init__(self) -> None:
        self.id: str | None = None
        self._made = threading.Event()

    def wait(self, timeout: float | None = None) -> str | None:
        """The run's id once the thread has tried to make it (None: it failed, or `timeout`
        passed first)."""
        self._made.wait(timeout)
        return self.id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"


def _run_id(run: Run | str | None) -> str | None:
    return run.id if isinstance(run, Run) else run


#: How long closing waits for the queued calls (a store that is down can retry for minutes).
CLOSE_TIMEOUT_S = 120.0
#: How long `start_trial` waits for its run (the first one waits for mlflow's import too).
RUN_WAIT_S = 30.0


class BackgroundTracker:
    """A `Tracker` whose MLflow calls run on one daemon thread, in the order they were made.

    Each method queues its call and returns at once, except `start_trial`, which waits until
    its run is made (see there); `start_trial` and `log_run` return a `Run` whose id the thread
    fills in (`on_run_id` hands it on as soon as it exists). Every call is guarded as
    `Tracker`'s are: an MLflow failure is reported once per kind and stops nothing; a store that
    cannot be opened is reported once and the calls are dropped. `close` (at exit too) waits for
    every queued call; `experiment_id` and `parent_id` wait for the calls queued before them.
    After `close`, calls are made at once.

    Args:
        open_tracker: makes the `Tracker`, on the thread (mlflow is imported there); where the
            store cannot be opened it says so and makes a `NullTracker`.
        uri: the store's URI, for messages.
    """

    enabled = True

    def __init__(self, open_tracker: Callable[[], Inner], *, uri: str) -> None:
        import atexit

        self.uri = uri
        self._tracker: Inner | None = None  # set on the thread, before any call is made
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # no call is queued after close's last one
        self._closed = False
        self._lagging = False  # a start_trial waited in vain: the next ones do not wait
        self._reported: set[tuple[str, str]] = set()
        self._thread = threading.Thread(
            target=self._serve,
            args=(open_tracker,),
            name="tnsearch-mlflow",
            daemon=True,  # a worker killed mid-study is not kept alive by its tracking
        )
        self._thread.start()
        atexit.register(self.close)

    def _serve(self, open_tracker: Callable[[], Inner]) -> None:
        self._tracker = open_tracker()
        while (call := self._calls.get()) is not None:
            self._make(*call)

    def _make(self, what: str, call: Callable[[Inner], object]) -> None:
        if self._tracker is None:  # closed before the store was open: nothing to call
            return
        try:
            call(self._tracker)
        except Exception as exc:  # noqa: BLE001 - Tracker's calls are guarded; this is the rest
            kind = (what, type(exc).__name__)
            if kind not in self._reported:
                self._reported.add(kind)
                first = " ".join(str(exc).split())[:200]
                console.warn(f"MLflow ({self.uri}): {what} failed: {kind[1]}: {first}")

    def _queue(self, what: str, call: Callable[[Inner], object]) -> None:
        with self._lock:
            if not self._closed:
                self._calls.put((what, call))
                return
        self._make(what, call)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call queued so far is made; False if `timeout` passed first."""
        made = threading.Event()
        self._queue("flush", lambda tracker: made.set())
        return made.wait(0 if self._closed else timeout)  # closed: made at once, or never

    def close(self, timeout: float | None = CLOSE_TIMEOUT_S) -> None:
        """Make every queued call (waiting up to `timeout` s), then stop the thread."""
        import atexit

        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._calls.put(None)
        atexit.unregister(self.close)
        self._thread.join(timeout)
        if self._thread.is_alive():
            console.warn(
                f"MLflow ({self.uri}): calls not made after {timeout:.0f} s are dropped; the "
                "study keeps its Optuna records"
            )

    @property
    def experiment_id(self) -> str | None:
        self.flush()
        return getattr(self._tracker, "experiment_id", None)

    @property
    def parent_id(self) -> str | None:
        self.flush()
        return getattr(self._tracker, "parent_id", None)

    # -- Tracker's calls, queued ---------------------------------------------------------------
    def attach(self, study) -> None:
        self._queue("attach", lambda tracker: tracker.attach(study))

    def log_parent(
        self,
        *,
        files: Iterable[str | Path] = (),
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        description: str | None = None,
    ) -> None:
        kwargs = {"files": list(files), "params": dict(params), "metrics": dict(metrics)}
        kwargs["description"] = description
        self._queue("log_parent", lambda tracker: tracker.log_parent(**kwargs))

    def finish_parent(self, status: str = "FINISHED") -> None:
        self._queue("finish_parent", lambda tracker: tracker.finish_parent(status))

    def start_trial(
        self,
        number: int,
        plan: Mapping[str, Any],
        params: Mapping[str, Any],
        *,
        on_run_id: Callable[[str], object] | None = None,
    ) -> Run:
        """Queue the trial's run; wait (up to RUN_WAIT_S) until it is made, not for the rest.

        Optuna keeps no attribute set on a finished trial, and the trial's run id must be there
        (liveness closes a dead worker's run by it, results find its MLflow models by it): a
        trial that ends fast (a plan that fails, is infeasible or pruned at zero-shot) must not
        be told before `on_run_id` was called. Making the run takes milliseconds once mlflow is
        imported; the first trial waits for that import too. (Not waiting would start it about
        1.5 s sooner on a 2-core machine, but the import would then share the CPU and the GIL
        with that trial's latency measurement, which took as much longer: bench/RESULTS.md,
        Start-up.) A store that kept a trial waiting in vain keeps no later one waiting until
        it has made that run.
        """
        run = Run()
        plan, params = copy.deepcopy(dict(plan)), dict(params)  # as they are now

        def start(tracker: Inner) -> None:
            try:
                run.id = tracker.start_trial(number, plan, params, on_run_id=on_run_id)
            finally:
                run._made.set()
                self._lagging = False

        self._queue("start_trial", start)
        try:
            if not self._lagging and not self._closed and not run._made.wait(RUN_WAIT_S):
                self._lagging = True
        except BaseException:  # a signal while waiting: the trial never gets the handle, so
            self.end_trial(run, state="KILLED")  # its run is ended here (else left RUNNING)
            raise
        return run

    def log_metrics(
        self, run_id: Run | str | None, metrics: Mapping[str, float], step: int = 0
    ) -> None:
        run, metrics = run_id, dict(metrics)
        self._queue("log_metrics", lambda tracker: tracker.log_metrics(_run_id(run), metrics, step))

    def end_trial(
        self,
        run_id: Run | str | None,
        *,
        state: str,
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        run, metrics, tags = run_id, dict(metrics), dict(tags)

        def end(tracker: Inner) -> None:
            tracker.end_trial(_run_id(run), state=state, metrics=metrics, tags=tags)

        self._queue("end_trial", end)

    def log_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] = (),
        metrics: Mapping[str, float] = (),
        files: Iterable[str | Path] = (),
        tags: Mapping[str, str] = (),
    ) -> Run:
        run = Run()
        kwargs = {"params": dict(params), "metrics": dict(metrics), "files": list(files)}
        kwargs["tags"] = dict(tags)

        def log(tracker: Inner) -> None:
            try:
                run.id = tracker.log_run(name, **kwargs)
            finally:
                run._made.set()

        self._queue("log_run", log)
        return run
