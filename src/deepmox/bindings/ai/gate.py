"""The gate in front of one upstream on one daemon: what keeps a failing or
throttling API from being stormed, however many jobs are waiting.

Before every call an actor passes the gate; in this order it waits for:

1. **the shared throttle** (``throttles`` in D1, read every housekeeping
   cycle, extended at once on this daemon): inside the remaining budget the
   actor waits, otherwise the job continues when it ends (no attempt used);
2. **a probe**: after a failure, or a hold of the upstream that another
   daemon set, one call at a time finds out whether the upstream is back; the
   others wait for its answer;
3. **the upstream's own count** (``requests-remaining`` headers): nothing is
   sent when it says none are left (less a reserve of a twentieth of the
   limit, at most ``max_concurrent``, for what other daemons have in flight),
   until it is replenished; and no more than half of what remains is in flight
   at once, so that two daemons reading the same count do not both spend it;
4. **``requests_per_minute``**: at most that many calls start in any 60 s;
5. **the congestion window**: after a strike, one call in flight, growing by
   one per window's worth of answers (additive increase) up to
   ``max_concurrent``; a strike drops it back to one. An upstream that
   throttles without saying how much is left is found out one call at a time,
   not by a burst of ``max_concurrent`` calls each time it lets a few through.

After the call, the gate reads what happened (:meth:`Gate.call`): a failure
(429, 529, 5xx, a timeout, a CLI that crashed) is a *strike*: the upstream is
held for everyone for ``hold_base_s`` doubling with each consecutive strike up
to ``hold_max_s`` (or for exactly the ``retry-after`` the upstream named), and
the next call is a probe. Calls that were already in flight when a strike was
counted do not count again: one burst of failures is one strike. An answer of
any kind (a success, a 400, nonsense) ends the strikes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import trio

from ...actors.kind import StepContext
from ...errors import AIRateLimitedError, AIUnavailableError
from .interface import Completion, RateInfo

#: a wait for a slot or a probe's answer that would take more than this share
#: of the remaining budget hands the job back instead
WAIT_SHARE = 0.5
#: a job handed back for want of a slot runs again this long later (seconds,
#: spread by jitter)
RECHECK_S = 1.0
WINDOW_S = 60.0


class GateStatistics(msgspec.Struct, frozen=True, kw_only=True):
    upstream: str
    in_flight: int
    strikes: int
    probing: bool
    sent: int
    answered: int
    failed: int
    #: the upstream's count of requests left, as last read (``None``: not known)
    remaining: int | None
    #: calls allowed in flight now
    window: int


@dataclass
class Ticket:
    """One admitted call."""

    generation: int
    probe: bool
    completion: Completion | None = None

    def answered(self, completion: Completion) -> None:
        self.completion = completion


@dataclass
class Gate:
    upstream: str
    max_concurrent: int
    requests_per_minute: int = 0
    hold_base_s: float = 1.0
    hold_max_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = trio.current_time

    def __post_init__(self) -> None:
        self._slots = trio.Semaphore(self.max_concurrent)
        self._starts: deque[float] = deque()
        self.strikes = 0
        #: the upstream was held (by anyone) since the last answer
        self._held = False
        self._generation = 0
        self._probe: trio.Event | None = None
        #: requests left by the upstream's count, less what was sent since
        self._left: int | None = None
        self._reserve = 0
        self._reset_at = 0.0
        #: calls allowed in flight (the congestion window), see the module docstring
        self._window = float(self.max_concurrent)
        self.in_flight = 0
        self.sent = self.answered_total = self.failed = 0
        #: set (and replaced) whenever a call leaves the gate
        self._answer_event = trio.Event()

    def statistics(self) -> GateStatistics:
        return GateStatistics(
            upstream=self.upstream, in_flight=self.in_flight, strikes=self.strikes,
            probing=self._probe is not None, sent=self.sent, answered=self.answered_total,
            failed=self.failed, remaining=self._left, window=int(self._window))

    # -- admission -----------------------------------------------------------------

    def _hold_s(self) -> float:
        ceiling = min(self.hold_max_s, self.hold_base_s * 2.0 ** min(self.strikes - 1, 32))
        return min(self.hold_max_s, ceiling * self.rng.uniform(0.8, 1.2))

    def _quota_wait(self, wall: float) -> float | None:
        """Seconds until the upstream's count allows a call, ``None`` if it
        allows one now."""
        if self._left is None:
            return None
        if wall >= self._reset_at:
            self._left = None
            return None
        left = self._left - self._reserve
        if left <= 0:
            return self._reset_at - wall
        if self.in_flight and self.in_flight * 2 >= left:
            return 0.0  # half of what is left is in flight: wait for an answer
        return None

    def _rate_wait(self) -> float | None:
        if not self.requests_per_minute:
            return None
        now = self.clock()
        while self._starts and self._starts[0] <= now - WINDOW_S:
            self._starts.popleft()
        if len(self._starts) < self.requests_per_minute:
            return None
        return self._starts[0] + WINDOW_S - now

    async def _bounded(self, ctx: StepContext, wait: Callable[[], object]) -> None:
        """Await ``wait()`` for at most a share of the remaining budget; hand
        the job back if that is not enough."""
        with trio.move_on_after(max(0.0, ctx.remaining() * WAIT_SHARE)) as scope:
            await wait()  # type: ignore[misc]
        if scope.cancelled_caught:
            ctx.defer(ctx.wall() + RECHECK_S * self.rng.uniform(1.0, 2.0))

    async def _wait_answer(self) -> None:
        """Until some call in flight leaves the gate."""
        await self._answer_event.wait()

    def _blocked(self, ctx: StepContext) -> bool:
        until = ctx.throttled_until(self.upstream)
        return until is not None and until > ctx.wall()

    async def _admit(self, ctx: StepContext) -> Ticket:
        while True:
            if self._blocked(ctx):
                # held, maybe by another daemon's strike: probe when it ends
                self._held = True
            await ctx.wait_throttle(self.upstream)
            if self._probe is not None:
                probe = self._probe
                await self._bounded(ctx, probe.wait)
                continue
            wall = ctx.wall()
            quota = self._quota_wait(wall)
            if quota is not None:
                if quota > 0:
                    await ctx.wait_until(wall + quota)
                else:
                    await self._bounded(ctx, self._wait_answer)
                continue
            rate = self._rate_wait()
            if rate is not None:
                await ctx.wait_until(wall + rate)
                continue
            if self.in_flight >= int(self._window):
                await self._bounded(ctx, self._wait_answer)
                continue
            await self._bounded(ctx, self._slots.acquire)
            # the world may have changed while this actor waited for its slot
            if (self._probe is not None or self._blocked(ctx)
                    or self._quota_wait(ctx.wall()) is not None or self._rate_wait() is not None
                    or self.in_flight >= int(self._window)):
                self._slots.release()
                continue
            probing = self.strikes > 0 or self._held
            if probing:
                self._probe = trio.Event()
            if self.requests_per_minute:
                self._starts.append(self.clock())
            if self._left is not None:
                self._left -= 1
            self.in_flight += 1
            self.sent += 1
            return Ticket(self._generation, probing)

    def _release(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self._slots.release()
        if ticket.probe and self._probe is not None:
            self._probe.set()
            self._probe = None
        self._answer_event.set()
        self._answer_event = trio.Event()

    # -- outcomes ------------------------------------------------------------------

    def _strike(self, ctx: StepContext, ticket: Ticket, retry_after: float | None,
                reason: str) -> float:
        """Count a failure; the hold (seconds) it put on the upstream, or 0
        for a call that was in flight before the last strike."""
        self.failed += 1
        if ticket.generation != self._generation:
            return 0.0
        self._generation += 1
        self.strikes += 1
        self._window = 1.0
        hold = retry_after if retry_after is not None else self._hold_s()
        ctx.block(self.upstream, ctx.wall() + hold, reason)
        return hold

    def _answered(self, ticket: Ticket, rate: RateInfo | None, wall: float) -> None:
        self.answered_total += 1
        self.strikes = 0
        self._held = False
        self._window = min(float(self.max_concurrent), self._window + 1.0 / self._window)
        if rate is not None and rate.reset_at > wall:
            # the calls still in flight may not be in the upstream's count yet
            self._left = rate.remaining - (self.in_flight - 1)
            self._reserve = min(self.max_concurrent, (rate.limit or 0) // 20)
            self._reset_at = rate.reset_at

    @asynccontextmanager
    async def call(self, ctx: StepContext) -> AsyncIterator[Ticket]:
        """Admit one call; classify how it ended. The body calls
        :meth:`Ticket.answered` with what came back; an exception from it is
        read as described in the module docstring and raised on, for a 529 or
        a failure with the wait the gate chose."""
        ticket = await self._admit(ctx)
        try:
            try:
                yield ticket
            except AIRateLimitedError as exc:
                hold = self._strike(ctx, ticket, None if exc.overloaded else exc.retry_after,
                                    exc.message)
                if exc.overloaded and hold:
                    raise AIRateLimitedError(exc.message, upstream=self.upstream,
                                             retry_after=hold) from exc
                raise
            except AIUnavailableError as exc:
                self._strike(ctx, ticket, None, exc.message)
                raise
            except trio.Cancelled:
                raise
            except BaseException:
                # the upstream answered (a refusal, nonsense) or the caller failed
                self._answered(ticket, None, ctx.wall())
                raise
            completion = ticket.completion
            self._answered(ticket, completion.rate if completion else None, ctx.wall())
        finally:
            self._release(ticket)
