"""The latency objective: a ratio to a reference timed side by side, and noise that is flagged."""

from __future__ import annotations

import copy
import random
import threading
import time

import pytest
import torch
from torch import nn

from tnsearch.measure import latency

pytestmark = pytest.mark.serial  # ratios of timings: alone, not beside another test


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))


class Twice(nn.Module):
    """The same work as `inner`, done twice."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        self.inner(x)
        return self.inner(x)


X = torch.randn(64, 512)


def test_two_copies_of_one_model_measure_near_one():
    model = _mlp()
    stats = latency.paired(copy.deepcopy(model), model, X, warmup=3, repeats=30, threads=1)
    assert 0.8 < stats.ratio < 1.25
    assert stats.ratio_p10 <= stats.ratio <= stats.ratio_p90
    assert stats.latency_ms > 0 and stats.reference_ms > 0
    assert stats.device  # a name, e.g. the CPU model


def test_a_model_doing_the_work_twice_measures_near_two():
    model = _mlp()
    stats = latency.paired(Twice(model), model, X, warmup=3, repeats=30, threads=1)
    assert 1.6 < stats.ratio < 2.5
    assert stats.latency_ms > stats.reference_ms


def test_both_models_are_left_in_the_mode_they_were_in():
    model, reference = _mlp(), _mlp().eval()
    latency.paired(model, reference, X, warmup=1, repeats=2)
    assert model.training and not reference.training


def test_the_order_alternates_within_the_pairs():
    order: list[str] = []
    latency.paired_calls(
        lambda: order.append("a"),
        lambda: order.append("b"),
        pairs=4,
        warmup=0,
        sample_ms=0.0,
        attempts=1,
    )
    timed = order[2:]  # after the one call of each that sizes the samples
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]


def _busy(stop: threading.Event) -> None:
    """Bursts of pure-Python work that hold the interpreter for random moments."""
    rng = random.Random(0)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.0, 0.004)
        while time.perf_counter() < end:
            pass
        time.sleep(rng.uniform(0.0, 0.004))


def test_a_noisy_measurement_is_measured_again_then_flagged():
    model = _mlp()
    stop = threading.Event()
    thread = threading.Thread(target=_busy, args=(stop,), daemon=True)
    thread.start()
    try:
        stats = latency.paired(copy.deepcopy(model), model, X, warmup=2, repeats=20, attempts=2)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert stats.attempts == 2  # measured again, bounded
    assert stats.noisy and stats.spread > latency.NOISY_SPREAD


def test_a_quiet_measurement_is_not_flagged():
    model = _mlp()
    stats = latency.paired(copy.deepcopy(model), model, X, warmup=2, repeats=20, spread=100.0)
    assert not stats.noisy and stats.attempts == 1


def test_threads_are_set_while_measuring_and_restored():
    seen: list[int] = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    latency.paired(Spy(), nn.Identity(), X, warmup=1, repeats=2, threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_pairs_must_be_positive():
    with pytest.raises(ValueError, match="latency.repeats"):
        latency.paired(_mlp(), _mlp(), X, repeats=0)
