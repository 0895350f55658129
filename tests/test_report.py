"""The study report: written for a real study (read-only on it), valid self-contained HTML,
logged to MLflow; its sections on constructed studies."""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from html.parser import HTMLParser

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tests.helpers import constructed_study, constructed_trial
from tnsearch.report import SECTIONS, Section, build_report
from tnsearch.report import __main__ as report_cli
from tnsearch.report._data import ReportData
from tnsearch.report._importance import evaluate, evaluators, features
from tnsearch.results import pareto
from tnsearch.study.record import Record

VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "wbr"}


class Checker(HTMLParser):
    """Collects images and external references; fails on badly nested tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.ids: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if re.match(r"(https?:)?//", value):
                self.external.append(value)
        if tag == "img":
            self.images.append(attrs["src"])
        if "id" in attrs and tag == "section":
            self.ids.append(attrs["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def check_html(text: str) -> Checker:
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.doctype and not checker.stack, checker.stack
    assert not checker.external, checker.external
    for src in checker.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    return checker


def report_options(*overrides: str) -> dict:
    with initialize_config_module("tnsearch.conf", version_base=None):
        cfg = compose("report", overrides=list(overrides))
    return {"report": OmegaConf.to_container(cfg.report, resolve=True)}


def run_report(args, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tnsearch.report", *args])
    report_cli.main()


@pytest.mark.slow
def test_report_of_a_real_study(tiny_study, monkeypatch, capsys):
    from mlflow import MlflowClient

    journal = tiny_study.root / "mlp" / "optuna.journal"
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    client = MlflowClient(f"sqlite:///{tiny_study.root}/mlflow.db")
    study = tiny_study.load()
    parent = study.user_attrs["mlflow_parent_run_id"]
    status = client.get_run(parent).info.status

    run_report(tiny_study.overrides, monkeypatch)

    path = tiny_study.root / "mlp" / "report.html"
    out = capsys.readouterr().out
    assert f"report: {path}" in out and f"logged to MLflow run {parent}" in out
    text = path.read_text()
    checker = check_html(text)
    assert checker.ids == [
        "overview",
        "pareto-front",
        "hypervolume",
        "pareto-optimal-trials",
        "parameter-importances",
        "layers",
        "sensitivity-profile",
        "what-the-bonds-say",
        "bonds",
        "bonds-over-training",
    ]
    assert len(checker.images) >= 1  # the static Pareto front
    assert "Plotly.newPlot" in text and "This section failed" not in text
    assert "not enough trials: 3 finished, 8 needed" in text  # both evaluators say so
    for trial in pareto.front(study):
        assert f"<td>{trial.number}</td>" in text
    # Read-only on the study; logged to the parent run, whose status is left alone.
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
    assert "report.html" in [a.path for a in client.list_artifacts(parent)]
    assert client.get_run(parent).info.status == status


def test_a_missing_study_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        run_report([f"root={tmp_path}", "name=nope"], monkeypatch)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: name: no study 'nope' in {tmp_path}/nope/optuna.journal\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        run_report([f"root={tmp_path}", "name=nope", "storage=sqlite"], monkeypatch)
    assert f"no study 'nope' in sqlite:///{tmp_path}/nope/optuna.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _grid_study(n: int = 24):
    """Trials whose accuracy is set by fc1's rank and whose size by fc2's topology."""
    trials = [constructed_trial(0.65, 50610, 0.1)]  # the dense model: not the best here
    ranks, topologies = (2, 4, 8, 16), ("cp", "mpo", "tree", "tucker")
    for k in range(1, n):
        rank, topology = ranks[k % 4], topologies[(k // 4) % 4]
        size = {"cp": 2000, "mpo": 9000, "tree": 6000, "tucker": 12000}[topology]
        trials.append(
            constructed_trial(
                0.5 + 0.1 * ranks.index(rank) + 0.001 * (k % 3),
                size + 10 * k,
                0.1 + 0.001 * k,
                {"fc1": ("mpo", 2, rank), "fc2": (topology, 1 + k % 2, 4)},
            )
        )
    return constructed_study(trials, name="grid")


def test_importances_use_features_that_every_trial_has():
    study = _grid_study()
    trials = [Record.from_trial(t) for t in study.trials]
    distributions, rows = features(trials, ["fc1", "fc2"])
    dense = {f"fc{k}.{key}": 0 for k in (1, 2) for key in ("order", "rank")}
    assert rows[0] == {**dense, "fc1.topology": "dense", "fc2.topology": "dense"}
    assert rows[1] == {
        **{"fc1.topology": "mpo", "fc1.order": 2, "fc1.rank": 4},
        **{"fc2.topology": "cp", "fc2.order": 2, "fc2.rank": 4},
    }
    assert distributions["fc2.topology"].choices == ("dense", "cp", "mpo", "tree", "tucker")
    # A feature with one value in every trial cannot matter: left out.
    distributions, _ = features(trials[1:], ["fc1", "fc2"])
    assert set(distributions) == {"fc1.rank", "fc2.topology", "fc2.order"}
    data = ReportData.collect(study, report_options())
    for name, evaluator in evaluators(data.options.importance).items():
        found = evaluate(data, evaluator, min_trials=8)
        assert isinstance(found, dict), (name, found)
        assert list(found) == ["accuracy", "param_count", "latency_ratio"]
        assert max(found["accuracy"], key=found["accuracy"].get) == "fc1.rank", (name, found)
        if name == "fanova":  # PED-ANOVA looks at the best 10% only: too few here for params
            assert max(found["param_count"], key=found["param_count"].get) == "fc2.topology", found
        assert sum(found["accuracy"].values()) == pytest.approx(1.0)
    assert evaluate(data, next(iter(evaluators(data.options.importance).values())), 99) == (
        "not enough trials: 24 finished, 99 needed"
    )


def test_static_report_of_a_constructed_study_and_an_added_section():
    study = _grid_study(12)
    extra = Section("Bonds", lambda data: f"<p>{len(data.done)} bonds</p>")
    broken = Section("Broken", lambda data: 1 / 0)
    text = build_report(
        study, report_options("report.interactive=false"), sections=[*SECTIONS, extra, broken]
    )
    checker = check_html(text)
    assert "Plotly" not in text
    assert len(checker.images) == 2  # the front and the hypervolume
    assert checker.ids[-2:] == ["bonds", "broken"] and "<p>12 bonds</p>" in text
    assert "This section failed: ZeroDivisionError" in text
    # Layers: fc1 is tensorized by every tensorized Pareto-optimal trial, always as mpo.
    layers = text[text.index('id="layers"') :]
    front = [t for t in study.best_trials if t.user_attrs["plan"]["layers"]]
    assert f"{len(front)} of {len(front)}" in layers and "mpo &times;" in layers


def test_the_front_table_shows_the_latency_ratio_noise_and_each_devices_front():
    from tnsearch.report import _sections

    cpu, gpu = {"latency_device": "AMD EPYC (1 threads)"}, {"latency_device": "NVIDIA H200"}
    layers = {"fc1": ("mpo", 2, 4)}
    study = constructed_study(
        [
            constructed_trial(0.9, 50610, 1.0, attrs=cpu),
            constructed_trial(0.8, 9000, 0.6, layers, attrs={**cpu, "latency_noisy": True}),
            constructed_trial(0.9, 50610, 1.0, attrs=gpu),
            constructed_trial(0.7, 8000, 0.9, layers, attrs=gpu),
        ]
    )
    text = _sections.front_table(ReportData.collect(study, report_options()))
    assert "latency x dense" in text and "0.60x" in text
    assert "Noisy latency" in text and "trials 1." in text
    assert "more than one device" in text
    assert "AMD EPYC (1 threads): trials 0, 1, front 0, 1" in text
    assert "NVIDIA H200: trials 2, 3, front 2, 3" in text


def test_the_profile_section_draws_the_studys_newest_profile(tmp_path):
    from tnsearch.budget.profile import Entry, Group, Profile
    from tnsearch.report import _sensitivity

    study = _grid_study(4)
    cfg = {**report_options("report.interactive=false"), "root": str(tmp_path)}
    data = ReportData.collect(study, cfg)
    assert "No profile yet" in _sensitivity.render(data)
    groups = {"fc1": Group(("fc1",), 1000, 1.0)}
    entries = [
        Entry("fc1", "mpo", 2, r, {}, p, 0.1, 1.0, q)
        for r, p, q in ((2, 50, 0.5), (4, 100, 0.8), (8, 200, 0.7), (16, 400, 0.9))
    ]
    found = Profile("abc", "accuracy", True, 0.9, 2000, 2.0, 8, groups, entries, seconds=3.0)
    found.save(tmp_path / study.study_name / "profile" / "abc.json")
    text = _sensitivity.render(data)
    assert '<img class="static"' in text and "Profile abc" in text
    # the line joins the options no other beats: rank 8 (more params, more loss) is off it
    points = [(e.params / 1000, 0.9 - e.quality) for e in entries]
    assert [p[0] for p in _sensitivity.envelope(points)] == [0.05, 0.1, 0.4]


def test_log_axes_label_their_major_ticks_only():
    from tnsearch.report import _figures

    assert _figures.log_ticks([2000, 50610]) == [2000, 5000, 10000, 20000, 50000]
    assert _figures.log_ticks([10, 1e7]) == [10**k for k in range(1, 8)]  # decades only
    assert len(_figures.log_ticks([0.9, 0.95])) == 2  # within one step: its two ends
    data = ReportData.collect(_grid_study(12), report_options())
    fig = _figures.front_plotly(data)
    log_axes = [a for a in (fig.layout[k] for k in fig.layout) if getattr(a, "type", None) == "log"]
    assert log_axes and all(a.tickvals and len(a.tickvals) <= 8 for a in log_axes)
    assert all(len(a.ticktext) == len(a.tickvals) for a in log_axes)


def test_a_long_title_is_wrapped_to_the_figure():
    from tnsearch.report import _figures

    title = "trial 3: normalized singular values per bond (dot: effective rank at 99% energy)"
    assert "\n" in _figures.fit_title(title, 3.6) and "\n" not in _figures.fit_title(title, 14)
