"""The report's "What the bonds say" (rank correlations of bond quantities with the profile's
measured loss) and the probe's per-label summary, on constructed data."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy.stats import spearmanr

from tests.helpers import constructed_study, constructed_trial
from tnsearch.budget.profile import Entry, Group, Profile
from tnsearch.report import _bond_profile
from tnsearch.report._data import ReportData
from tnsearch.results.probe import _summary


def test_spearman_is_scipys_with_ties():
    rng = random.Random(0)
    for n in (3, 5, 17, 40):
        x = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]
        y = [v + rng.random() * 0.3 for v in x]
        assert _bond_profile.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert math.isnan(_bond_profile.spearman([1, 2], [1, 2]))
    assert math.isnan(_bond_profile.spearman([1, 1, 1], [1, 2, 3]))


def entry(group: str, rank: int, quality: float, bonds: dict[str, float]) -> Entry:
    return Entry(group, "mpo", 2, rank, {}, 100 * rank, 0.01 / rank, 1.0, quality, bonds=bonds)


def profile() -> Profile:
    # the loss falls with the rank; `discarded` falls with it too (a perfect predictor within
    # each group), `entropy` is unrelated; group "b" loses more than "a" at every rank
    rng = random.Random(1)
    entries = [
        entry(g, r, 0.9 - drop / r, {"discarded": drop / r / 2, "entropy": rng.random()})
        for g, drop in (("a", 0.1), ("b", 0.4))
        for r in (1, 2, 4, 8)
    ]
    groups = {"a": Group(("a",), 10_000, 1.0), "b": Group(("b",), 10_000, 1.0)}
    return Profile("k", "accuracy", True, 0.9, 30_000, 2.0, 8, groups, entries)


def test_a_quantity_that_orders_the_options_as_their_loss_correlates_fully():
    found = profile()
    rows = {c.quantity: c for c in _bond_profile.correlations(found)}
    assert rows["discarded"].within == pytest.approx(1.0) and rows["discarded"].groups == 2
    assert rows["discarded"].across > 0.95  # (ties across groups: a at rank 1, b at rank 4)
    assert abs(rows["entropy"].within) < 1.0
    assert rows["error"].within == pytest.approx(1.0)  # the yardstick: 0.01 / rank
    assert _bond_profile.best(found).quantity == "discarded"
    calls = _bond_profile.compressible(found, "discarded")
    assert [c.group for c in calls] == ["a", "b"] and calls[0].quantity_rank == 1.0


def test_the_section_reads_the_studys_profile(tmp_path):
    study = constructed_study([constructed_trial(0.9, 50610, 1.0)], name="s")
    cfg = {"root": str(tmp_path), "report": {}}
    data = ReportData.collect(study, cfg)
    assert "No profile yet" in _bond_profile.render(data)
    found = profile()
    (tmp_path / "s" / "profile").mkdir(parents=True)
    found.save(tmp_path / "s" / "profile" / "k.json")
    html = _bond_profile.render(data)
    assert "Best within groups: <b>discarded</b>, Spearman +1.000" in html
    assert "reaches the goal of |Spearman| &gt;= 0.7" in html and "<img" in html
    old = Profile.from_json({**found.to_json(), "entries": []})
    old.entries = [Entry(**{**e.__dict__, "bonds": {}}) for e in found.entries]
    old.save(tmp_path / "s" / "profile" / "k.json")
    assert "measured before it recorded bond quantities" in _bond_profile.render(data)


def test_the_probe_summary_ranks_labels_by_mean_activation():
    # index 0 fires for label 2, index 1 for label 0; label 3 occurs once (too rare to list)
    acts = [torch.tensor([[1.0, 5.0], [1.0, 5.0], [9.0, 0.0], [9.0, 1.0], [50.0, 50.0]])]
    labels = [torch.tensor([0, 0, 2, 2, 3])]
    rows, by_label = _summary(acts, labels, ["a", "b", "c", "d"], top=2)
    (mean0, top0), (mean1, top1) = rows
    assert mean0 == pytest.approx(14.0) and [t[0] for t in top0] == ["c", "a"]
    assert top0[0] == ("c", 9.0, 2) and [t[0] for t in top1] == ["a", "c"]
    assert by_label == {"a": [1.0, 5.0], "c": [9.0, 0.5], "d": [50.0, 50.0]}
    masked = [torch.tensor([0, -1, 2, 2, -1])]  # -1: not counted (padding)
    rows, _ = _summary(acts, masked, ["a", "b", "c", "d"], top=1)
    assert rows[0][0] == pytest.approx((1 + 9 + 9) / 3)
