"""What happens to a job after its actor ends: pure functions, no I/O.

=================  ===================================================  ========
outcome            next state                                           attempt
=================  ===================================================  ========
done               completed                                            used
continued          pending, due now (or when a throttle ends)           refunded
transient          pending after uniform(0, min(max, base * 2^n)) s;    used
                   failed once attempts are exhausted
rate_limited       pending after max(retry-after, shared throttle);     refunded
                   the throttle is extended for every node; failed once
                   the total deferral would pass ``max_deferral_s``
permanent,         failed at once                                       used
invalid_output
budget_exceeded    pending, due now, to redo the step with a whole      refunded
                   budget; permanent when the actor judges it never
                   fits (two overruns with a whole budget)
released (drain)   pending, due now                                     refunded
=================  ===================================================  ========
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ErrorClass, JobError, RateLimitedError
from ..jobs import EventType, JobState


@dataclass(frozen=True, slots=True)
class Throttle:
    upstream: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    state: JobState
    event: EventType
    run_at: float | None = None
    attempt_delta: int = 0
    error_class: ErrorClass | None = None
    error_message: str | None = None
    deferred_add: float = 0.0
    throttle: Throttle | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_base_s: float
    backoff_max_s: float
    max_deferral_s: float


def backoff_s(n: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: the n-th retry waits uniform(0, min(cap, base * 2^n))."""
    ceiling = min(cap, base * 2.0 ** min(n, 64))
    return (rng or random).uniform(0.0, ceiling)


def on_error(error: JobError, *, now: float, attempt: int, max_attempts: int, deferred_s: float,
             policy: RetryPolicy, rng: random.Random | None = None) -> Decision:
    cls = error.error_class
    msg = error.message
    if cls is ErrorClass.TRANSIENT:
        if attempt >= max_attempts:
            return Decision(JobState.FAILED, EventType.FAILED, error_class=cls,
                            error_message=f"attempts exhausted ({attempt}/{max_attempts}): {msg}")
        wait = backoff_s(attempt, policy.backoff_base_s, policy.backoff_max_s, rng)
        return Decision(JobState.PENDING, EventType.RETRY_SCHEDULED, run_at=now + wait,
                        error_class=cls, error_message=msg)
    if cls is ErrorClass.RATE_LIMITED and isinstance(error, RateLimitedError):
        return on_rate_limited(error, now=now, deferred_s=deferred_s, policy=policy)
    if cls is ErrorClass.BUDGET_EXCEEDED:
        # Raised by a step itself (not by the budget's cancel scope): treat as
        # "redo with a whole budget", which the runner bounds.
        return Decision(JobState.PENDING, EventType.RETRY_SCHEDULED, run_at=now,
                        attempt_delta=-1, error_class=cls, error_message=msg)
    return Decision(JobState.FAILED, EventType.FAILED, error_class=cls, error_message=msg)


def on_rate_limited(error: RateLimitedError, *, now: float, deferred_s: float,
                    policy: RetryPolicy, blocked_until: float | None = None) -> Decision:
    until = max(now + error.retry_after, blocked_until or 0.0)
    wait = until - now
    cls = ErrorClass.RATE_LIMITED
    if deferred_s + wait > policy.max_deferral_s:
        return Decision(
            JobState.FAILED, EventType.FAILED, error_class=cls,
            error_message=(f"rate limited for longer than max_deferral_s "
                           f"({policy.max_deferral_s:g} s): {error.message}"))
    return Decision(
        JobState.PENDING, EventType.RETRY_SCHEDULED, run_at=until, attempt_delta=-1,
        error_class=cls, error_message=error.message, deferred_add=wait,
        throttle=Throttle(error.upstream, now + error.retry_after, error.message))


def on_budget_exceeded(step: str, *, had_whole_budget: bool, budget_s: float,
                       now: float) -> Decision:
    if had_whole_budget:
        return Decision(
            JobState.FAILED, EventType.FAILED, error_class=ErrorClass.PERMANENT,
            error_message=(f"step {step} does not fit in the budget of {budget_s:g} s "
                           "even when it starts a fresh actor"))
    return Decision(
        JobState.PENDING, EventType.RETRY_SCHEDULED, run_at=now, attempt_delta=-1,
        error_class=ErrorClass.BUDGET_EXCEEDED,
        error_message=f"step {step} ran past the budget; it is redone with a whole budget")


def continued(*, now: float, run_at: float | None = None) -> Decision:
    return Decision(JobState.PENDING, EventType.CONTINUED, run_at=max(now, run_at or now),
                    attempt_delta=-1)


def released(*, now: float) -> Decision:
    return Decision(JobState.PENDING, EventType.RELEASED, run_at=now, attempt_delta=-1)


COMPLETED = Decision(JobState.COMPLETED, EventType.COMPLETED)


def completed() -> Decision:
    return COMPLETED
