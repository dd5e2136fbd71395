"""The gate in front of an upstream, on the autojump clock.

Rules: calls are simulated by the test (a sleep for the call's duration, or
an error raised from inside the gate); the step context is a small stand-in
holding the throttles the way a daemon does; every time asserted is an exact
virtual time (``BASE`` + seconds).
"""

from __future__ import annotations

import random
from typing import NoReturn

import pytest
import trio
from trio.testing import MockClock

from deepmox.bindings.ai.gate import Gate
from deepmox.bindings.ai.interface import Completion, RateInfo, Usage
from deepmox.errors import AIPermanentError, AIRateLimitedError, AIUnavailableError
from tests.unit.conftest import BASE, wall

UP = "ai:test"


class Deferred(Exception):
    def __init__(self, run_at: float) -> None:
        super().__init__(run_at)
        self.run_at = run_at


class Ctx:
    """What the gate needs of a step context, with a daemon's throttle map."""

    def __init__(self, throttles: dict[str, float], budget_s: float = 30.0) -> None:
        self.throttles = throttles
        self.deadline = trio.current_time() + budget_s
        self.blocks: list[tuple[str, float, str]] = []

    def wall(self) -> float:
        return wall()

    def remaining(self) -> float:
        return self.deadline - trio.current_time()

    def throttled_until(self, upstream: str) -> float | None:
        return self.throttles.get(upstream)

    async def wait_throttle(self, upstream: str) -> None:
        until = self.throttles.get(upstream)
        if until is not None:
            await self.wait_until(until)

    async def wait_until(self, when: float) -> None:
        wait = when - self.wall()
        if wait <= 0:
            return
        if wait <= self.remaining() * 0.9:
            await trio.sleep(wait)
            return
        raise Deferred(when)

    def defer(self, run_at: float) -> NoReturn:
        raise Deferred(run_at)

    def block(self, upstream: str, until: float, reason: str) -> None:
        self.blocks.append((upstream, until, reason))
        self.throttles[upstream] = max(until, self.throttles.get(upstream, 0.0))


def gate(**kw: object) -> Gate:
    opts: dict[str, object] = {"max_concurrent": 4, "rng": random.Random(1)}
    opts.update(kw)
    return Gate(UP, **opts)  # type: ignore[arg-type]


def completion(rate: RateInfo | None = None) -> Completion:
    return Completion(text="{}", usage=Usage(1, 1, 0.0), rate=rate)


async def ok_call(g: Gate, ctx: Ctx, seconds: float = 1.0, log: list[float] | None = None,
                  rate: RateInfo | None = None) -> None:
    async with g.call(ctx) as ticket:  # type: ignore[arg-type]
        if log is not None:
            log.append(trio.current_time())
        await trio.sleep(seconds)
        ticket.answered(completion(rate))


async def failing_call(g: Gate, ctx: Ctx, error: Exception, seconds: float = 0.0,
                       log: list[float] | None = None) -> Exception:
    try:
        async with g.call(ctx):  # type: ignore[arg-type]
            if log is not None:
                log.append(trio.current_time())
            await trio.sleep(seconds)
            raise error
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


def unavailable() -> AIUnavailableError:
    return AIUnavailableError("503 from the test", upstream=UP)


async def test_max_concurrent_calls(autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=3), {}
    starts: list[float] = []
    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(ok_call, g, Ctx(throttles), 1.0, starts)
    assert sorted(starts) == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0]
    assert g.statistics().sent == 10
    assert g.statistics().in_flight == 0


async def test_requests_per_minute(autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=10, requests_per_minute=5), {}
    starts: list[float] = []
    async with trio.open_nursery() as n:
        for _ in range(7):
            n.start_soon(ok_call, g, Ctx(throttles, budget_s=300), 0.0, starts)
    assert sorted(starts) == [0.0] * 5 + [60.0] * 2


async def test_a_burst_of_failures_is_one_strike(autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=4, hold_base_s=1.0), {}
    ctxs = [Ctx(throttles) for _ in range(4)]
    errors: list[Exception] = []

    async def one(ctx: Ctx) -> None:
        errors.append(await failing_call(g, ctx, unavailable(), seconds=0.1))

    async with trio.open_nursery() as n:
        for ctx in ctxs:
            n.start_soon(one, ctx)
    assert g.strikes == 1
    blocks = [b for ctx in ctxs for b in ctx.blocks]
    assert len(blocks) == 1, "four calls in flight together are one strike"
    (_, until, reason) = blocks[0]
    assert 0.1 + 0.8 <= until - BASE <= 0.1 + 1.2
    assert reason == "503 from the test"
    assert all(isinstance(e, AIUnavailableError) for e in errors)
    assert g.statistics().failed == 4


async def test_holds_grow_with_each_strike_up_to_the_maximum(autojump_clock: MockClock) -> None:
    g, throttles = gate(hold_base_s=1.0, hold_max_s=10.0), {}
    holds = []
    for _ in range(7):
        ctx = Ctx(throttles, budget_s=100)
        await failing_call(g, ctx, unavailable())  # waits out the hold before, as a probe
        ((_, until, _),) = ctx.blocks
        holds.append(until - ctx.wall())
    for n, hold in enumerate(holds):
        ceiling = min(10.0, 2.0 ** n)
        assert 0.8 * ceiling <= hold <= min(10.0, 1.2 * ceiling), (n, hold)
    assert g.strikes == 7


async def test_after_a_strike_one_probe_then_a_growing_window(
        autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=8, hold_base_s=2.0), {}
    await failing_call(g, Ctx(throttles), unavailable())
    held_until = throttles[UP] - BASE
    starts: list[float] = []
    async with trio.open_nursery() as n:
        for _ in range(7):
            n.start_soon(ok_call, g, Ctx(throttles, budget_s=100), 3.0, starts)
    # the probe goes when the hold ends; then the window grows by one per
    # window's worth of answers: 1, then 2, 2 (2.5), 2 (2.9), 3 (3.2) ...
    h = held_until
    assert sorted(starts) == [h, h + 3, h + 3, h + 6, h + 6, h + 9, h + 9]
    assert g.strikes == 0
    assert g.statistics().window == 4  # 1 + 1/1 + 2 * 1/2 + ... after 7 answers


async def test_a_failed_probe_holds_again_longer(autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=8, hold_base_s=2.0, hold_max_s=100.0), {}
    await failing_call(g, Ctx(throttles), unavailable())
    first_until = throttles[UP]
    starts: list[float] = []
    async with trio.open_nursery() as n:
        n.start_soon(failing_call, g, Ctx(throttles, budget_s=100), unavailable(), 1.0, starts)
        await trio.sleep_until(first_until - BASE + 0.5)  # the probe is in flight
        assert g.statistics().probing
        for _ in range(3):
            n.start_soon(ok_call, g, Ctx(throttles, budget_s=100), 1.0, starts)
    assert g.strikes == 0
    assert starts[0] == first_until - BASE
    second_until = throttles[UP]
    assert second_until - (first_until + 1.0) >= 0.8 * 4.0  # the second hold: base * 2
    # nobody went while the failed probe's hold lasted; then one probe, then the rest
    later = sorted(starts[1:])
    assert later[0] == pytest.approx(second_until - BASE)
    assert later[1:] == [later[0] + 1.0] * 2


async def test_retry_after_is_honoured_exactly(autojump_clock: MockClock) -> None:
    g, throttles = gate(), {}
    ctx = Ctx(throttles)
    err = await failing_call(g, ctx, AIRateLimitedError("429", upstream=UP, retry_after=7.0))
    assert isinstance(err, AIRateLimitedError)
    assert err.retry_after == 7.0
    assert throttles[UP] == BASE + 7.0


async def test_overloaded_gets_the_growing_wait(autojump_clock: MockClock) -> None:
    g, throttles = gate(hold_base_s=3.0), {}
    ctx = Ctx(throttles)
    err = await failing_call(g, ctx, AIRateLimitedError("529", upstream=UP, retry_after=0.0,
                                                        overloaded=True))
    assert isinstance(err, AIRateLimitedError)
    assert 0.8 * 3.0 <= err.retry_after <= 1.2 * 3.0
    assert throttles[UP] == BASE + err.retry_after


async def test_an_answer_of_any_kind_ends_the_strikes(autojump_clock: MockClock) -> None:
    g, throttles = gate(), {}
    await failing_call(g, Ctx(throttles), unavailable())
    assert g.strikes == 1
    await failing_call(g, Ctx(throttles), AIPermanentError("401"))
    assert g.strikes == 0


async def test_nothing_is_sent_while_the_upstream_counts_none_left(
        autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=8), {}
    await ok_call(g, Ctx(throttles), 0.0, rate=RateInfo(remaining=0, reset_at=BASE + 20.0))
    starts: list[float] = []
    await ok_call(g, Ctx(throttles), 0.0, log=starts)
    assert starts == [20.0]


async def test_never_more_than_half_of_what_is_left_in_flight(
        autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=8), {}
    await ok_call(g, Ctx(throttles), 0.0, rate=RateInfo(remaining=5, reset_at=BASE + 100.0))
    starts: list[float] = []
    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(ok_call, g, Ctx(throttles), 1.0, starts)
    # 5 left: two in flight at once (each answer without a count of its own
    # leaves the estimate as it was spent), then the rest
    assert sorted(starts)[:2] == [0.0, 0.0]
    assert sorted(starts)[2] == 1.0


async def test_a_throttle_past_the_budget_defers_the_job(autojump_clock: MockClock) -> None:
    g = gate()
    throttles = {UP: BASE + 50.0}
    with pytest.raises(Deferred) as info:
        await ok_call(g, Ctx(throttles, budget_s=30), 0.0)
    assert info.value.run_at == BASE + 50.0
    assert g.statistics().sent == 0


async def test_a_long_wait_for_a_slot_defers_the_job(autojump_clock: MockClock) -> None:
    g, throttles = gate(max_concurrent=1), {}
    async with trio.open_nursery() as n:
        n.start_soon(ok_call, g, Ctx(throttles, budget_s=100), 50.0)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Deferred) as info:
            await ok_call(g, Ctx(throttles, budget_s=20), 0.0)
        # half of the 20 s budget waited for the slot, then handed back
        assert trio.current_time() == pytest.approx(10.0)
        assert 1.0 <= info.value.run_at - (BASE + 10.0) <= 2.0


async def test_a_cancelled_probe_lets_the_next_one_go(autojump_clock: MockClock) -> None:
    g, throttles = gate(hold_base_s=1.0), {}
    await failing_call(g, Ctx(throttles), unavailable())
    with trio.move_on_after(5):
        await ok_call(g, Ctx(throttles), 100.0)  # the probe, cut off by its budget
    assert g.statistics().probing is False
    assert g.statistics().in_flight == 0
    starts: list[float] = []
    await ok_call(g, Ctx(throttles), 0.0, log=starts)
    assert starts == [5.0]


async def test_a_hold_set_elsewhere_also_ends_with_a_probe(autojump_clock: MockClock) -> None:
    g = gate(max_concurrent=8)
    throttles = {UP: BASE + 4.0}  # another daemon's strike, read from D1
    starts: list[float] = []
    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(ok_call, g, Ctx(throttles), 1.0, starts)
    assert sorted(starts) == [4.0, 5.0, 5.0]
    assert g.strikes == 0
