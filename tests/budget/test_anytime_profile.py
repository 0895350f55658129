"""The anytime profile: options predicted from the whitened weights' spectra, only what an
allocation could pick measured, each measured option stored at once (resumable, shared)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from scipy.stats import spearmanr

from tests.helpers import FAST, compose_cfg
from tnsearch.budget import allocate
from tnsearch.cli import resolve

SMALL = ["study=mlp", "data=digits", "pretrain.epochs=2", "space.orders=[1,2]",
         "space.ranks=[2,4,8,16]", "space.topologies=[mpo,tucker]", "profile.steps=5",
         "decompose.steps=5", "tracking.enabled=false", "profile.examples=256",
         *FAST]  # fmt: skip


def ready_setup(root, *extra):
    from tnsearch.study import loop, setup

    ready = setup.prepare(resolve(compose_cfg([f"root={root}", *SMALL, *extra])))
    loop.ensure_pretrained(ready)
    return ready


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every option of the small space measured (`profile.measure=all`), and its setup."""
    from tnsearch.study import sensitivity

    root = tmp_path_factory.mktemp("full")
    ready = ready_setup(root, "profile.measure=all")
    found, _ = sensitivity.profile(ready)
    assert all(e.measured for e in found.entries)
    return found, root


def loss(found, e) -> float:
    return e.loss(found.dense_quality, found.maximize)


@pytest.mark.slow  # a pretrained LeNet-300-100 and its whole profile: ~20 s
def test_the_spectra_rank_the_measured_losses_within_a_topology(full):
    """The predictor's ranking of one topology's options against their measured zero-shot loss
    (what the allocation needs to find the group's hull), on a trained LeNet-300-100."""
    found, _ = full
    for topology in ("mpo", "tucker"):
        entries = [e for e in found.entries if e.topology == topology]
        rho = spearmanr([e.predicted_error for e in entries], [loss(found, e) for e in entries])
        assert rho.statistic >= 0.6, (topology, rho)
        # the fitted output error (what a measurement gives) ranks them at least as well
        assert spearmanr([e.error for e in entries], [loss(found, e) for e in entries])[0] > 0.6


@pytest.mark.slow  # a pretrained LeNet-300-100 and its whole profile: ~20 s
def test_the_anytime_profile_measures_a_fraction_and_allocates_as_well(full, tmp_path):
    from tnsearch.study import sensitivity

    whole, root = full
    ready = ready_setup(root, "budget.params=0.3")  # the same study: its pretrained weights
    ready.study_dir = tmp_path / "anytime"  # an empty cache
    (tmp_path / "anytime").mkdir()
    (tmp_path / "anytime" / "pretrained.pt").symlink_to(root / "mlp" / "pretrained.pt")
    lines: list[str] = []
    found, _ = sensitivity.profile(ready, say=lines.append)
    measured = found.measured
    assert 0 < len(measured) <= 0.4 * len(found.entries), (len(measured), len(found.entries))
    assert any("0 of" in line and "already measured" in line for line in lines)
    truth = {e.option: e for e in whole.entries}
    chosen = sensitivity.budget_plan(ready, found, params=0.3, latency=None)
    best = allocate.allocate(whole, params=0.3)
    picked = sum(loss(whole, truth[e.option]) for e in chosen.choices.values() if e is not None)
    assert all(e is None or e.measured for e in chosen.choices.values())
    assert picked <= best.loss + 0.02, (picked, best.loss)


@pytest.mark.slow  # a pretrained LeNet-300-100 and its whole profile: ~20 s
def test_each_measured_option_is_a_file_and_a_rerun_measures_none(full):
    from tnsearch.study import sensitivity

    found, root = full
    files = sorted((root / "mlp" / "profile" / found.key).glob("*--*.json"))
    assert len(files) == len(found.entries)
    ready = ready_setup(root, "profile.measure=all")
    lines: list[str] = []
    again, _ = sensitivity.profile(ready, say=lines.append)
    assert f"profile: {len(files)} of {len(files)} options already measured" in lines[0]
    assert not any(line.startswith("profile 1/") for line in lines)  # nothing measured
    assert [e.quality for e in again.entries] == [e.quality for e in found.entries]


@pytest.mark.slow  # a pretrained LeNet-300-100 and its whole profile: ~20 s
def test_a_damaged_entry_is_set_aside_with_one_warning_and_measured_again(full, capsys):
    from tnsearch.study import sensitivity

    found, root = full
    folder = root / "mlp" / "profile" / found.key
    victim, outdated = sorted(folder.glob("*--*.json"))[:2]
    victim.write_text(victim.read_text()[:40])  # torn
    data = json.loads(outdated.read_text())
    outdated.write_text(json.dumps({**data, "version": 0}))  # from another version
    capsys.readouterr()
    ready = ready_setup(root, "profile.measure=all")
    lines: list[str] = []
    again, _ = sensitivity.profile(ready, say=lines.append)
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and "2 damaged or outdated entries" in warnings[0], warnings
    assert len(list(folder.glob("*.damaged-*"))) == 2
    assert json.loads(victim.read_text())["version"] == data["version"]  # measured again
    assert sum(1 for line in lines if line.startswith("profile ") and "/2 " in line) >= 1
    assert len(again.measured) == len(found.entries)


@pytest.mark.slow
def test_a_profile_killed_halfway_resumes_with_the_options_left(tmp_path):
    args = [sys.executable, "-m", "tnsearch.profile", f"root={tmp_path}", *SMALL,
            "profile.measure=all", "space.topologies=[mpo,tucker,tree]"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    folder = tmp_path / "mlp" / "profile"
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(folder.glob("*/*--*.json"))) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(folder.glob("*/*--*.json")))
    assert kept >= 4
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    head = next(line for line in again.stdout.splitlines() if "already measured" in line)
    total = int(head.split(" of ")[1].split()[0])
    assert head.startswith(f"profile: {kept} of {total} options already measured")
    last = [line for line in again.stdout.splitlines() if re.match(r"profile \d+/", line)][-1]
    assert f"{total - kept}/{total - kept} " in last  # only the options left were measured
    assert len(list(folder.glob("*/*--*.json"))) == total


def test_threads_fit_the_cpus_this_process_may_use(tmp_path):
    """The affinity mask, a cgroup quota and the local workers bound the thread count."""
    from tnsearch import threads

    code = (
        "import os, json; from tnsearch import threads; os.sched_setaffinity(0, {0});"
        "print(json.dumps([threads.count(busy=0), threads.count(busy=0, workers=2),"
        " threads.count(3)]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1, 1, 3]
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cpu.max").write_text("150000 100000\n")  # a quota of 1.5 CPUs
    assert threads.allowed_cpus(cgroup) == min(1.5, len(os.sched_getaffinity(0)))
    assert threads.count(busy=0, cgroup=cgroup) == 1
    (cgroup / "cpu.max").write_text("max 100000\n")  # no quota: the affinity mask
    assert threads.count(busy=0, cgroup=cgroup) == len(os.sched_getaffinity(0))
    many = len(os.sched_getaffinity(0))
    assert threads.count(busy=many, cgroup=cgroup) == 1  # others keep every CPU busy


def test_the_threads_key_is_checked_and_applied(tmp_path):
    import torch

    from tnsearch.cli import resolve
    from tnsearch.config import Config, ConfigError
    from tnsearch.study import setup

    had = torch.get_num_threads()
    try:
        assert setup.use_threads(Config(threads=1, workers=1, worker=None)) == 1
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="threads: must be a positive integer or null"):
            resolve(compose_cfg(["threads=0"]))
    finally:
        torch.set_num_threads(had)


@pytest.mark.slow
@pytest.mark.serial  # the second process must start while the first still measures
def test_two_processes_on_one_study_split_the_options(full, tmp_path):
    """Workers (or machines) on one study measure each option once between them."""
    _, root = full
    args = [sys.executable, "-m", "tnsearch.profile", f"root={tmp_path}", *SMALL,
            "profile.measure=all"]  # fmt: skip
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "pretrained.pt").symlink_to(root / "mlp" / "pretrained.pt")
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    pattern = r"profile: (\d+) of (\d+) options measured \((\d+) by this process\)"
    found = [re.search(pattern, out).groups() for out, _ in outs]
    total = int(found[0][1])
    assert all(int(f[0]) == total for f in found)  # both end with the whole profile
    assert sum(int(f[2]) for f in found) == total  # and measured each option once
    assert min(int(f[2]) for f in found) > 0  # both did some


@pytest.mark.slow  # a pretrained LeNet-300-100 and its whole profile: ~20 s
def test_the_ladder_has_a_latency_rung(full):
    """`search.latency`: the plan that loses least within a fraction of the dense latency."""
    import optuna

    from tnsearch.study import sensitivity

    _, root = full
    ready = ready_setup(root, "profile.measure=all", "search.budgets=[0.5]", "search.latency=[3.0]")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    lines: list[str] = []
    count = sensitivity.enqueue_ladder(ready, study, say=lines.append)
    rung = next(line for line in lines if line.startswith("budget 0.5 within latency 3x:"))
    predicted = float(re.search(r"predicted latency ([\d.]+)x", rung)[1])
    assert predicted <= 3.0
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == count and 1 <= count <= 2  # the same plan twice is enqueued once
    fixed = waiting[-1].system_attrs["fixed_params"]  # what the trial will be asked
    assert any(v is True for k, v in fixed.items() if k.endswith(".tensorize")), fixed
