"""One actor: one run of one job under one budget.

The actor gets its job row and the supervisor's services, nothing else. It
decodes the payload, reloads its checkpoint, and runs the kind's next steps;
after each step it writes the checkpoint (fenced by the lease token) and
checks whether the next step's expected cost fits in what is left of the
budget. When it does not, the actor hands the job back as a continuation. The
supervisor's cancel scope enforces the budget; :meth:`Actor.on_cancelled`
tells an overrun from a release at shutdown.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import msgspec
import trio

from ..errors import ErrorClass, JobError, LeaseLostError, RateLimitedError, TransientError
from ..jobs import Claimed, EventType, JobState
from ..supervisor import policy
from ..supervisor.budget import CostModel
from .kind import Kind
from .scratch import Scratch

if TYPE_CHECKING:
    from ..bindings import Bindings

log = logging.getLogger("deepmox.actor")

#: a checkpoint write waits at most this long for its answer, shielded from the budget
CHECKPOINT_GRACE_S = 5.0
#: a run's first step had "the whole budget" when it started with at least this
#: share of it: an actor spawned late (a slow pull cycle on a loaded machine)
#: has its deadline clipped to its lease, and a step cut short by that may
#: still fit a whole budget
WHOLE_BUDGET_SHARE = 0.95
#: a run's first step that overran this many times with the whole budget
#: "never fits" and fails as permanent: one overrun may be a starved machine
#: (other processes, a slow disk), two in a row are the step
WHOLE_OVERRUNS = 2
#: ... and one that overran this often in all (with the whole budget or not)
#: fails as permanent as well: the redos use no attempt, so they are bounded
MAX_CUT_SHORT = 3


class Checkpoint(msgspec.Struct, omit_defaults=True):
    done: dict[str, Any] = msgspec.field(default_factory=dict)
    failures: dict[str, int] = msgspec.field(default_factory=dict)
    #: seconds each done step took
    times: dict[str, float] = msgspec.field(default_factory=dict)
    #: overruns of a step that ran first in its actor: all, and those with the
    #: whole budget (see WHOLE_OVERRUNS, MAX_CUT_SHORT)
    overruns: dict[str, int] = msgspec.field(default_factory=dict)
    whole_overruns: dict[str, int] = msgspec.field(default_factory=dict)


_encode = msgspec.json.Encoder().encode


class Host(Protocol):
    """The supervisor, as an actor sees it."""

    costs: CostModel
    retry_policy: policy.RetryPolicy
    rng: random.Random
    bindings: Bindings
    #: where actors make their scratch folders
    scratch_base: str

    def wall(self) -> float: ...

    def plan_deadline(self) -> float: ...

    def throttle_until(self, upstream: str) -> float | None: ...

    def block(self, upstream: str, until: float, reason: str) -> None: ...

    def observe_step(self, kind: str, step: str, seconds: float) -> None: ...

    async def write_checkpoint(self, actor: Actor) -> None: ...


@dataclass(slots=True)
class Finish:
    """How the run ended: the decision, and what to store with it."""

    decision: policy.Decision
    result: str | None = None


#: what decoding a stored payload or checkpoint raises when the row was
#: written broken (ValueError: a kind's own __post_init__ check)
_UNDECODABLE = (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError,
                RecursionError)


def _why(exc: Exception) -> str:
    return "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)


class _Continue(Exception):
    def __init__(self, run_at: float | None) -> None:
        self.run_at = run_at


class Actor:
    """Also the :class:`~deepmox.actors.kind.StepContext` its steps see."""

    def __init__(self, host: Host, job: Claimed, kind: Kind, *, budget_s: float,
                 deadline: float) -> None:
        self.host = host
        self.job = job
        self.job_id = job.id
        self.kind = job.kind
        self.attempt = job.attempt
        self._kind = kind
        self.budget_s = budget_s
        self.deadline = deadline
        self.checkpoint = Checkpoint()
        self.progress = job.progress
        self.step: str | None = None
        #: the step running, or the last one that ran (named on the outcome's event)
        self.last_step: str | None = None
        self.step_progress = 0.0
        #: the running (or last) step's line for its event, see :meth:`note`
        self.step_note: str | None = None
        self._total_steps = 0
        self._step_first = False
        self._step_started = 0.0
        #: the running step's expected cost, and how long it waited for throttles
        self._step_cost = 0.0
        self._step_waited = 0.0
        self.outputs: Mapping[str, Any] = self.checkpoint.done
        self.payload: Any = None
        self.failures = 0
        self.bindings = host.bindings
        limits = host.bindings.cfg.limits
        self.scratch = Scratch(host.scratch_base, limits.scratch_bytes,
                               f"{job.kind}-{job.id}")

    def live_progress(self) -> float:
        """Progress including the running step's own report."""
        if self.step is None or not self._total_steps:
            return self.progress
        return min(1.0, self.progress + self.step_progress / self._total_steps)

    @property
    def step_times(self) -> Mapping[str, float]:
        return self.checkpoint.times

    # -- StepContext -------------------------------------------------------------

    def remaining(self) -> float:
        return min(self.deadline, self.host.plan_deadline()) - trio.current_time()

    def report(self, progress: float) -> None:
        self.step_progress = min(1.0, max(0.0, progress))

    async def wait_throttle(self, upstream: str) -> None:
        until = self.host.throttle_until(upstream)
        if until is not None:
            await self.wait_until(until)

    async def wait_until(self, when: float) -> None:
        wait = when - self.host.wall()
        if wait <= 0:
            return
        # wait here only if what is left of the step still fits after the wait;
        # else run again when the throttle ends, with a whole budget
        left = max(0.0, self._step_cost - (trio.current_time() - self._step_started))
        if wait + left <= self.remaining() * 0.9:
            began = trio.current_time()
            await trio.sleep(wait)
            self._step_waited += trio.current_time() - began
            return
        raise _Continue(when)

    def defer(self, run_at: float) -> NoReturn:
        raise _Continue(run_at)

    def wall(self) -> float:
        return self.host.wall()

    def throttled_until(self, upstream: str) -> float | None:
        return self.host.throttle_until(upstream)

    def block(self, upstream: str, until: float, reason: str) -> None:
        self.host.block(upstream, until, reason)

    def note(self, detail: str) -> None:
        self.step_note = detail

    # -- the run -----------------------------------------------------------------

    def checkpoint_json(self) -> str:
        return _encode(self.checkpoint).decode()

    def _fail(self, cls: ErrorClass, message: str) -> Finish:
        return Finish(policy.Decision(JobState.FAILED, EventType.FAILED,
                                      error_class=cls, error_message=message))

    async def run(self) -> Finish:
        if self.job.broken is not None:
            return self._fail(ErrorClass.PERMANENT, self.job.broken)
        try:
            payload = self.payload = self._kind.decode_json(self.job.payload)
        except _UNDECODABLE as exc:
            return self._fail(ErrorClass.PERMANENT, f"payload does not decode: {_why(exc)}")
        if self.job.checkpoint is not None:
            try:
                self.checkpoint = msgspec.json.decode(self.job.checkpoint, type=Checkpoint)
            except _UNDECODABLE as exc:
                return self._fail(ErrorClass.PERMANENT,
                                  f"checkpoint does not decode: {_why(exc)}")
        done = self.checkpoint.done
        self.outputs = done
        first = True
        while True:
            try:
                steps = self._kind.plan(payload, done)
            except JobError as exc:
                return self._on_error(exc, "plan")
            except Exception as exc:
                return self._on_unfit(exc, "plan")
            todo = [s for s in steps if s.name not in done]
            self._total_steps = len(steps)
            if not todo:
                try:
                    result = self._kind.result(payload, done)
                    encoded = _encode(result).decode()
                except Exception as exc:
                    return self._on_unfit(exc, "result")
                self.progress = 1.0
                return Finish(policy.completed(), result=encoded)
            nxt = todo[0]
            if not first:
                expected = self.host.costs.expect(self.kind, nxt.name, nxt.cost_s)
                if not self.host.costs.fits(expected, self.remaining()):
                    # the continuation carries the checkpoint
                    return Finish(policy.continued(now=self.host.wall()))
                # Durable before the next step builds on it; shielded so that
                # the budget cannot cut the write off halfway (the answer
                # decides whether this actor still owns the job).
                with trio.move_on_after(CHECKPOINT_GRACE_S, shield=True):
                    await self.host.write_checkpoint(self)
            self.step, self.step_progress = nxt.name, 0.0
            self.last_step, self.step_note = nxt.name, None
            self._step_first, self._step_started = first, trio.current_time()
            self._step_cost = self.host.costs.expect(self.kind, nxt.name, nxt.cost_s)
            self._step_waited = 0.0
            self.failures = self.checkpoint.failures.get(nxt.name, 0)
            try:
                output = await nxt.run(self)
                _encode(output)
            except _Continue as c:
                self.step = None
                return Finish(policy.continued(now=self.host.wall(), run_at=c.run_at))
            except JobError as exc:
                return self._on_error(exc, nxt.name)
            except LeaseLostError:
                raise
            except Exception as exc:
                return self._on_unexpected(exc, nxt.name)
            took = trio.current_time() - self._step_started
            self.host.observe_step(self.kind, nxt.name, took)
            done[nxt.name] = output
            self.checkpoint.times[nxt.name] = round(took, 6)
            self.step = None
            self.progress = len([s for s in steps if s.name in done]) / max(1, len(steps))
            first = False

    def _on_error(self, exc: JobError, step: str) -> Finish:
        self.checkpoint.failures[step] = self.checkpoint.failures.get(step, 0) + 1
        self.step = None
        if exc.error_class is ErrorClass.BUDGET_EXCEEDED:
            # a step's own time limit (ffmpeg's CPU limit, say): redone by a
            # fresh actor, unless it already had one -- then it never fits
            return Finish(policy.on_budget_exceeded(
                step, had_whole_budget=self._step_first, budget_s=self.budget_s,
                now=self.host.wall()))
        decision = policy.on_error(
            exc, now=self.host.wall(), attempt=self.attempt, max_attempts=self.job.max_attempts,
            deferred_s=self.job.deferred_s, policy=self.host.retry_policy, rng=self.host.rng)
        if decision.throttle is not None:
            blocked = self.host.throttle_until(decision.throttle.upstream)
            if blocked is not None and isinstance(exc, RateLimitedError):
                decision = policy.on_rate_limited(
                    exc, now=self.host.wall(), deferred_s=self.job.deferred_s,
                    policy=self.host.retry_policy, blocked_until=blocked)
        return Finish(decision)

    def _on_unfit(self, exc: Exception, where: str) -> Finish:
        """``plan`` and ``result`` are pure functions of the payload and the
        checkpoint's outputs: what they raised they will raise again on every
        attempt. Either the row was written with outputs that do not fit its
        kind, or the kind has a bug; neither is helped by a retry."""
        log.error("unexpected error in %s of job %s", where, self.job_id, exc_info=exc)
        return self._fail(ErrorClass.PERMANENT,
                          f"the job's payload and checkpoint do not fit kind {self.kind!r} "
                          f"({where} raised {type(exc).__name__}: {exc})")

    def _on_unexpected(self, exc: Exception, where: str) -> Finish:
        log.error("unexpected error in %s of job %s", where, self.job_id, exc_info=exc)
        return self._on_error(
            TransientError(f"unexpected error in {where}: {type(exc).__name__}: {exc}"), where)

    def on_cancelled(self, *, releasing: bool) -> Finish:
        """The supervisor cancelled this actor: at shutdown (``releasing``) or
        because the budget ran out."""
        now = self.host.wall()
        if releasing or self.step is None:
            return Finish(policy.released(now=now) if releasing else policy.continued(now=now))
        spent = trio.current_time() - self._step_started
        self.host.costs.observe(self.kind, self.step, max(spent, self.budget_s))
        never = False
        if self._step_first:
            cp = self.checkpoint
            # time spent waiting for a throttle was not the step's to use
            had = self.deadline - self._step_started - self._step_waited
            cp.overruns[self.step] = cp.overruns.get(self.step, 0) + 1
            if had >= self.budget_s * WHOLE_BUDGET_SHARE:
                cp.whole_overruns[self.step] = cp.whole_overruns.get(self.step, 0) + 1
            never = (cp.whole_overruns.get(self.step, 0) >= WHOLE_OVERRUNS
                     or cp.overruns[self.step] >= MAX_CUT_SHORT)
        return Finish(policy.on_budget_exceeded(
            self.step, had_whole_budget=never, budget_s=self.budget_s, now=now))
