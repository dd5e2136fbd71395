"""Restart policies (pure functions) and the D1 request budget.

Rules: policies are checked with hypothesis over their whole input range; the
request budget runs on the autojump clock and its limit is asserted over
every 5-minute window.
"""

from __future__ import annotations

import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from deepmox.bindings.d1.budget import WINDOW_S, RequestBudget
from deepmox.errors import (
    BudgetExceededError,
    InvalidOutputError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from deepmox.jobs import EventType, JobState
from deepmox.supervisor import policy
from deepmox.supervisor.budget import CostModel, family

RP = policy.RetryPolicy(backoff_base_s=1.0, backoff_max_s=300.0, max_deferral_s=3600.0)


@given(n=st.integers(0, 200), base=st.floats(0.001, 100), cap=st.floats(0.001, 10_000),
       seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_within_bounds(n: int, base: float, cap: float,
                                              seed: int) -> None:
    wait = policy.backoff_s(n, base, cap, random.Random(seed))
    assert 0.0 <= wait <= min(cap, base * 2.0**n)


def test_backoff_spreads_over_the_whole_range() -> None:
    rng = random.Random(1)
    waits = [policy.backoff_s(3, 1.0, 300.0, rng) for _ in range(2000)]
    assert max(waits) > 7.5
    assert min(waits) < 0.5


@given(attempt=st.integers(1, 50), max_attempts=st.integers(1, 50))
def test_transient_retries_until_attempts_are_spent(attempt: int, max_attempts: int) -> None:
    d = policy.on_error(TransientError("boom"), now=100.0, attempt=attempt,
                        max_attempts=max_attempts, deferred_s=0, policy=RP)
    if attempt >= max_attempts:
        assert (d.state, d.event) == (JobState.FAILED, EventType.FAILED)
        assert d.error_message is not None
        assert "attempts exhausted" in d.error_message
    else:
        assert (d.state, d.event) == (JobState.PENDING, EventType.RETRY_SCHEDULED)
        assert d.run_at is not None
        assert 100.0 <= d.run_at <= 100.0 + min(300.0, 2.0**attempt)
        assert d.attempt_delta == 0


@pytest.mark.parametrize("error", [PermanentError("bad"), InvalidOutputError("nonsense")])
def test_permanent_classes_fail_at_once(error: Exception) -> None:
    d = policy.on_error(error, now=0, attempt=1, max_attempts=9, deferred_s=0,  # type: ignore[arg-type]
                        policy=RP)
    assert d.state is JobState.FAILED
    assert d.error_class == error.error_class  # type: ignore[attr-defined]


def test_rate_limited_uses_no_attempt_and_throttles_the_upstream() -> None:
    err = RateLimitedError("slow down", upstream="api", retry_after=30)
    d = policy.on_error(err, now=1000.0, attempt=3, max_attempts=3, deferred_s=10, policy=RP)
    assert d.state is JobState.PENDING
    assert d.attempt_delta == -1
    assert d.run_at == 1030.0
    assert d.deferred_add == 30.0
    assert d.throttle == policy.Throttle("api", 1030.0, "slow down")


def test_rate_limited_waits_for_a_longer_shared_throttle() -> None:
    err = RateLimitedError("slow down", upstream="api", retry_after=5)
    d = policy.on_rate_limited(err, now=1000.0, deferred_s=0, policy=RP, blocked_until=1100.0)
    assert d.run_at == 1100.0


def test_rate_limited_deferral_is_bounded() -> None:
    err = RateLimitedError("slow down", upstream="api", retry_after=600)
    d = policy.on_error(err, now=0, attempt=1, max_attempts=5, deferred_s=3100, policy=RP)
    assert d.state is JobState.FAILED
    assert d.error_message is not None
    assert "max_deferral_s" in d.error_message


def test_budget_exceeded_redo_and_never_fitting_step() -> None:
    redo = policy.on_budget_exceeded("s:1", had_whole_budget=False, budget_s=30, now=5)
    assert (redo.state, redo.attempt_delta, redo.run_at) == (JobState.PENDING, -1, 5)
    never = policy.on_budget_exceeded("s:1", had_whole_budget=True, budget_s=30, now=5)
    assert (never.state, never.error_class) == (JobState.FAILED, "permanent")
    raised = policy.on_error(BudgetExceededError("x"), now=0, attempt=1, max_attempts=1,
                             deferred_s=0, policy=RP)
    assert raised.state is JobState.PENDING


def test_cost_model_learns_per_family_and_leans_slow() -> None:
    costs = CostModel()
    assert family("transcode:480p:3") == family("transcode:480p:4") == "transcode:480p:#"
    assert costs.expect("k", "s:1", 2.0) == 2.0
    costs.observe("k", "s:1", 10.0)
    assert costs.expect("k", "s:2", 2.0) == 10.0
    costs.observe("k", "s:3", 0.0)
    assert costs.expect("k", "s:4", 2.0) == pytest.approx(7.0)
    assert costs.fits(9.0, 10.0)
    assert not costs.fits(9.5, 10.0)


async def test_request_budget_never_exceeds_its_window(autojump_clock: MockClock) -> None:
    budget = RequestBudget(1200)
    stamps: list[float] = []
    end = trio.current_time() + 3 * WINDOW_S
    while trio.current_time() < end:
        await budget.acquire()
        stamps.append(trio.current_time())
    # the most requests in any 5-minute window
    j = 0
    most = 0
    for i, t in enumerate(stamps):
        while stamps[j] <= t - WINDOW_S:
            j += 1
        most = max(most, i - j + 1)
    assert most <= 1200
    assert most >= 1100, "the budget should be usable, not just safe"
    assert len(stamps) == pytest.approx(120 + 3 * 1080, abs=2)
