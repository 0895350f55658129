"""Start-up of `python -m tnsearch`: seconds to the first console line and to the first batch.

Each run is a fresh process, timed from its launch: until its first line on stdout, until its
first trial starts timing its latency, and until Lightning starts its first training batch. The
last two are seen without changing tnsearch: the probe in bench/_startup_probe (on PYTHONPATH,
as `sitecustomize`) wraps those steps and prints `FIRST_MEASURE <s>` and `FIRST_BATCH <s>` to
stderr; the bench kills the process at the first batch.

Scenarios (the quick study, 1 epoch; the template cache is the bench's own):
  fresh       a new root: new study, new MLflow SQLite store (a copy of the cached template)
  fresh-cold  the same with an empty template cache (the first study this user ever runs)
  join        a second worker joining a study that holds a finished trial (`trials=2`)

`--stores` instead times the MLflow store options alone, in fresh processes: importing mlflow,
then opening each kind of store and making an experiment and a run in it.

    python bench/startup.py [--runs 5] [--only fresh,fresh-cold,join] [--stores]

Run it on a quiet machine: every figure is CPU time of imports, and a busy neighbour adds to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "_startup_probe"
BASE = ["trials=1", "epochs=1"]
LIMIT_S = 300.0


def launch(args: list[str], root: Path, cache: Path) -> dict:
    """One run: seconds from launch to the first stdout line, the first latency measurement and
    the first training batch (None: not seen), and that first line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), env.get("PYTHONPATH")]))
    env["XDG_CACHE_HOME"] = str(cache)
    env.pop("TNSEARCH_SPAWNED", None)
    t0 = time.time()
    env["TNSEARCH_BENCH_T0"] = repr(t0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tnsearch", f"root={root}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its process group is killed at the first batch
    )
    seen: dict = {"line": None, "said": "", "measure": None, "batch": None}
    done = threading.Event()

    def read_stdout() -> None:
        for line in proc.stdout:
            if seen["line"] is None:
                seen["line"], seen["said"] = time.time() - t0, line.rstrip()

    def read_stderr() -> None:
        for line in proc.stderr:
            if line.startswith("FIRST_MEASURE "):
                seen["measure"] = float(line.split()[1])
            if line.startswith("FIRST_BATCH "):
                seen["batch"] = float(line.split()[1])
                done.set()
        done.set()

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    done.wait(LIMIT_S)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for reader in readers:
        reader.join(5)
    return seen


def finish(args: list[str], root: Path, cache: Path) -> None:
    """Run a study to its end (the study a joining worker finds)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    subprocess.run(
        [sys.executable, "-m", "tnsearch", f"root={root}", *args],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def summary(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    missing = f" ({len(values) - len(got)} missing)" if len(got) < len(values) else ""
    return f"{statistics.median(got):.2f} ({min(got):.2f}-{max(got):.2f}){missing}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def startup(runs: int, chosen: list[str]) -> None:
    before, rows = load(), []
    with tempfile.TemporaryDirectory(prefix="tnsearch-startup-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        launch(BASE, tmp / "warm-up", cache)  # page cache, matplotlib's and the template cache
        if "join" in chosen:
            finish(BASE, tmp / "joined", cache)
        for scenario in ("fresh", "fresh-cold", "join"):
            if scenario not in chosen:
                continue
            seen = []
            for i in range(runs):
                root = tmp / f"{scenario}-{i}"
                if scenario == "fresh-cold":
                    shutil.rmtree(cache / "tnsearch", ignore_errors=True)
                if scenario == "join":
                    shutil.copytree(tmp / "joined", root)
                args = ["trials=2", "epochs=1"] if scenario == "join" else BASE
                seen.append(launch(args, root, cache))
                shutil.rmtree(root, ignore_errors=True)
                print(f"{scenario} run {i + 1}: {json.dumps(seen[-1])}", flush=True)
            rows.append((scenario, *(summary([s[k] for s in seen]) for k in ("line", "measure"))))
            rows[-1] += (summary([s["batch"] for s in seen]), seen[-1]["said"])
    print()
    print(f"median (min-max) of {runs} runs, seconds from launch; load average {before} before, "
          f"{load()} after")  # fmt: skip
    print()
    print("| scenario | first console line | first latency measurement | first training batch "
          "| the first line |")  # fmt: skip
    print("|---|---|---|---|---|")
    for scenario, line_s, measure_s, batch_s, said in rows:
        print(f"| {scenario} | {line_s} | {measure_s} | {batch_s} | `{said[:90]}` |")


# -- the MLflow store options alone -----------------------------------------------------------
#: Run in a fresh process: import mlflow, open the store, make an experiment and a run.
_OPEN = """
import json, sys, time
t0 = time.perf_counter()
from mlflow import MlflowClient
import mlflow.store.tracking.sqlalchemy_store
t1 = time.perf_counter()
if sys.argv[2] == "template":
    from tnsearch.study import mlflow_store
    mlflow_store.seed(sys.argv[1])
client = MlflowClient(sys.argv[1])
name = "e%d" % time.time_ns()
run = client.create_run(client.create_experiment(name)).info.run_id
client.set_terminated(run)
print(json.dumps({"import": t1 - t0, "open": time.perf_counter() - t1}))
"""


#: Run in a fresh process: the seconds a trial's calls keep the calling thread, per tracker.
_TRIAL = """
import json, statistics, sys, time
from tnsearch.study import tracking
cfg = {"enabled": True, "uri": sys.argv[1], "artifacts": sys.argv[2]}
plan = {"layers": {"conv%d" % i: {"topology": "mpo", "rank": 8} for i in range(18)}}
params = {"p%d" % i: i for i in range(40)}
out = {}
for background in (False, True):
    tracker = tracking.from_config(cfg, "bench-%d" % background, background=background)
    tracker.experiment_id  # opened
    spans = []
    for number in range(12):
        kept = 0.0
        for call in ("start", "metrics", "end"):
            t = time.perf_counter()
            if call == "start":
                run = tracker.start_trial(number, plan, params)
            elif call == "metrics":
                tracker.log_metrics(run, {"train_loss": 1.0, "val_accuracy": 0.5}, step=0)
            else:
                tracker.end_trial(run, state="COMPLETE", metrics={"accuracy": 0.5, "n": 1e5})
            kept += time.perf_counter() - t
            time.sleep(0.1)  # the trial's own work between its calls
        spans.append(kept)
    tracker.close()
    out[background] = statistics.median(spans[2:])
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stores(runs: int) -> None:
    before = load()
    with tempfile.TemporaryDirectory(prefix="tnsearch-stores-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"), MLFLOW_ALLOW_FILE_STORE="true")
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--workers", "1",
             "--default-artifact-root", str(tmp / "server-artifacts")],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            started = time.monotonic()
            while time.monotonic() - started < 120:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            server_s = time.monotonic() - started

            def one(uri: str, mode: str = "") -> dict:
                done = subprocess.run(
                    [sys.executable, "-c", _OPEN, uri, mode],
                    cwd=tmp, env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                return json.loads(done.stdout.strip().splitlines()[-1])

            one(f"sqlite:///{tmp}/warm.db", "template")  # page cache and the template
            options = {
                "sqlite, new (MLflow's migrations)": lambda i: one(f"sqlite:///{tmp}/new-{i}.db"),
                "sqlite, new (copy of the template)": lambda i: one(
                    f"sqlite:///{tmp}/tpl-{i}.db", "template"
                ),
                "sqlite, existing": lambda i: one(f"sqlite:///{tmp}/warm.db"),
                "file store (./mlruns, MLFLOW_ALLOW_FILE_STORE)": lambda i: one(
                    (tmp / f"files-{i}").as_uri()
                ),
                f"http: local `mlflow server` (its own start: {server_s:.1f} s)": lambda i: one(
                    f"http://127.0.0.1:{port}"
                ),
            }
            rows = []
            trial = [
                json.loads(
                    subprocess.run(
                        [sys.executable, "-c", _TRIAL, f"sqlite:///{tmp}/trials.db", str(tmp)],
                        cwd=tmp,
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )  # fmt: skip
                for _ in range(runs)
            ]
            for option, measure in options.items():
                seen = [measure(i) for i in range(runs)]
                rows.append((option, *(summary([s[k] for s in seen]) for k in ("import", "open"))))
                print(option, seen, flush=True)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print()
    print(f"median (min-max) of {runs} fresh processes, seconds; load average {before} before, "
          f"{load()} after")  # fmt: skip
    print()
    print("| store | import mlflow | open + experiment + run |")
    print("|---|---|---|")
    for option, import_s, open_s in rows:
        print(f"| {option} | {import_s} | {open_s} |")
    print()
    print("A trial's calls (start_trial, log_metrics, end_trial on SQLite, 0.1 s of the trial's")
    print("own work between them): seconds they keep the trial, median of 10 trials per process:")
    print()
    print("| tracker | per trial |")
    print("|---|---|")
    print(f"| Tracker (every call at once) | {summary([t['false'] for t in trial])} |")
    print(f"| BackgroundTracker (waits for the run only) | {summary([t['true'] for t in trial])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="fresh,fresh-cold,join")
    parser.add_argument("--stores", action="store_true", help="time the MLflow stores alone")
    opts = parser.parse_args()
    if opts.stores:
        stores(opts.runs)
    else:
        startup(opts.runs, opts.only.split(","))


if __name__ == "__main__":
    main()
