"""The supervisor: pulls jobs, runs one actor per job under its budget, and
writes every outcome back, batched, through the pull cycle.

One task runs the pull loop; actors run in the supervisor's nursery, each in a
cancel scope whose deadline is its budget. Actors never talk to D1 themselves:
their writes are queued as :class:`~.pull.Ack` rows and go out with the next
cycle, so a busy daemon writes hundreds of outcomes, claims and events in one
transaction or REST request.

The loop's interval adapts: ``poll_min_s`` while there is work, doubling to
``poll_max_s`` when idle; an outcome, a local submission or a wake-up
datagram starts a cycle at once. On :meth:`stop` the supervisor drains: it
claims nothing more, lets running actors finish or checkpoint for ``drain_s``,
then cancels the rest and hands their jobs back as pending at once.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import trio

from ..actors.actor import Actor, Finish
from ..actors.registry import Registry
from ..bindings.d1 import D1
from ..config import Config
from ..errors import JobError, LeaseLostError, RateLimitedError
from ..jobs import Claimed, EventType, JobState
from . import policy, pull
from .budget import CostModel
from .pull import Ack, ClaimSpec

log = logging.getLogger("deepmox.supervisor")

#: after the drain, how long the last acknowledgements may take before the
#: supervisor gives up on them (the leases then expire and the reaper acts)
FINAL_FLUSH_S = 10.0
#: after a failed cycle, wait at least this long, doubling up to poll_max_s
FAILED_CYCLE_MIN_S = 0.05


class SupervisorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    running: int
    running_by_kind: dict[str, int]
    claimed: int
    completed: int
    failed: int
    retried: int
    continued: int
    released: int
    lease_lost: int
    reaped: int
    cycles: int
    failed_cycles: int
    queued_acks: int
    draining: bool
    last_cycle_at: float | None


@dataclass(slots=True)
class _Queued:
    ack: Ack
    throttle: policy.Throttle | None = None
    done: trio.Event | None = None
    ok: bool | None = None


class Supervisor:
    def __init__(self, cfg: Config, d1: D1, registry: Registry, *, node: str,
                 wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.d1 = d1
        self.registry = registry
        self.node = node
        self._wall = wall
        self.rng = rng or random.Random()
        self.costs = CostModel()
        s = cfg.supervisor
        self.retry_policy = policy.RetryPolicy(s.backoff_base_s, s.backoff_max_s,
                                               s.max_deferral_s)
        #: running actors by lease (job id and lease token): a daemon may re-claim
        #: a job while a stale actor of its own still runs it
        self.actors: dict[tuple[str, str], Actor] = {}
        self._scopes: dict[tuple[str, str], trio.CancelScope] = {}
        self._running_by_kind: dict[str, int] = {}
        self._queue: deque[_Queued] = deque()
        self._lost: list[dict[str, str]] = []
        self._new_throttles: list[dict[str, object]] = []
        self._throttles: dict[str, float] = {}
        self._adopt: list[str] = []
        self._resent = False
        self._wake = trio.Event()
        self._seq = 0
        self._draining = False
        self._releasing = False
        self._drain_deadline = float("inf")
        self._stopped = trio.Event()
        self._cycle_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_cycle_at: float | None = None
        self._counts = dict.fromkeys(
            ("claimed", "completed", "failed", "retried", "continued", "released",
             "lease_lost", "reaped", "cycles", "failed_cycles"), 0)
        self._leases = {
            name: cfg.budget_for(name) + s.lease_grace_s
            for name in registry.names()
        }
        self._default_lease_s = s.budget_s + s.lease_grace_s
        self._limited = {
            name: k.max_actors for name, k in cfg.kinds.items()
            if k.max_actors is not None and name in self._leases
        }
        self._unlimited = [n for n in registry.names() if n not in self._limited]
        # a REST-backed daemon spends at most a quarter of its request budget idling
        self._idle_floor_s = 0.0
        if cfg.d1.backend == "http":
            self._idle_floor_s = 4 * 300.0 / cfg.d1.requests_per_5min

    # -- services for actors -----------------------------------------------------

    def wall(self) -> float:
        return self._wall()

    def plan_deadline(self) -> float:
        return self._drain_deadline

    def throttle_until(self, upstream: str) -> float | None:
        return self._throttles.get(upstream)

    async def write_checkpoint(self, actor: Actor) -> None:
        ack = self._ack(actor.job, state=JobState.IN_PROGRESS, event=EventType.STEP_COMPLETED,
                        checkpoint=actor.checkpoint_json(), progress=actor.progress,
                        step=list(actor.checkpoint.done)[-1] if actor.checkpoint.done else None)
        q = _Queued(ack, done=trio.Event())
        self._queue.append(q)
        self._wake.set()
        assert q.done is not None
        await q.done.wait()
        if not q.ok:
            raise LeaseLostError(f"job {actor.job_id}: lease lost before its checkpoint")

    # -- control -----------------------------------------------------------------

    def wake(self) -> None:
        """Start a cycle now (a local submission, a wake-up datagram)."""
        self._wake.set()

    def stop(self) -> None:
        """Drain: claim nothing more, give actors ``drain_s``, then release."""
        if not self._draining:
            self._draining = True
            self._drain_deadline = trio.current_time() + self.cfg.supervisor.drain_s
            log.info("draining: %d actors running", len(self.actors),
                     extra={"event": "draining"})
            self._wake.set()

    @property
    def draining(self) -> bool:
        return self._draining

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def wait_cycle(self) -> None:
        """Return after the next pull cycle that reached D1 has been processed."""
        await self._cycle_done.wait()

    def statistics(self) -> SupervisorStatistics:
        c = self._counts
        return SupervisorStatistics(
            node=self.node, running=len(self.actors),
            running_by_kind=dict(self._running_by_kind),
            claimed=c["claimed"], completed=c["completed"], failed=c["failed"],
            retried=c["retried"], continued=c["continued"], released=c["released"],
            lease_lost=c["lease_lost"], reaped=c["reaped"], cycles=c["cycles"],
            failed_cycles=c["failed_cycles"], queued_acks=len(self._queue),
            draining=self._draining, last_cycle_at=self._last_cycle_at)

    # -- the loop ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run until :meth:`stop` has drained every actor."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._loop()
        finally:
            self._stopped.set()

    async def _loop(self) -> None:
        s = self.cfg.supervisor
        interval = s.poll_min_s
        failed_wait = FAILED_CYCLE_MIN_S
        not_before = 0.0
        while True:
            if self._draining:
                now = trio.current_time()
                if self.actors and not self._releasing and now >= self._drain_deadline:
                    self._releasing = True
                    log.info("drain time is up: releasing %d jobs", len(self.actors),
                             extra={"event": "releasing"})
                    for scope in self._scopes.values():
                        scope.cancel()
                if not self.actors and not self._queue:
                    return
                if now >= self._drain_deadline + FINAL_FLUSH_S:
                    log.error("giving up on %d acknowledgements; their leases will expire",
                              len(self._queue), extra={"event": "flush_abandoned"})
                    return
            deadline = max(not_before, trio.current_time() + interval)
            if self._draining and not self._releasing and self.actors:
                deadline = min(deadline, self._drain_deadline)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() < not_before:
                continue
            try:
                busy = await self._cycle()
            except JobError as exc:
                self._counts["failed_cycles"] += 1
                log.warning("pull cycle failed (%s): %s", exc.error_class, exc.message,
                            extra={"event": "cycle_failed", "error_class": exc.error_class})
                wait = failed_wait * (0.5 + self.rng.random())
                if isinstance(exc, RateLimitedError):
                    wait = max(wait, exc.retry_after)
                not_before = trio.current_time() + wait
                failed_wait = min(failed_wait * 2, max(s.poll_max_s, FAILED_CYCLE_MIN_S))
                continue
            failed_wait = FAILED_CYCLE_MIN_S
            if busy:
                interval = s.poll_min_s
            else:
                interval = max(min(interval * 2, s.poll_max_s), self._idle_floor_s)

    def _free_slots(self) -> tuple[int, list[ClaimSpec]]:
        if self._draining:
            return 0, []
        free = self.cfg.supervisor.max_actors - len(self.actors)
        if free <= 0:
            return 0, []
        claims = []
        for name, cap in self._limited.items():
            left = cap - self._running_by_kind.get(name, 0)
            if left > 0:
                claims.append(ClaimSpec([name], left))
        if self._unlimited:
            claims.append(ClaimSpec(self._unlimited, free))
        return free, claims

    def _take_acks(self) -> list[_Queued]:
        """At most one ack per job per cycle: a second one waits for the next."""
        taken: list[_Queued] = []
        seen: set[str] = set()
        later: deque[_Queued] = deque()
        while self._queue:
            q = self._queue.popleft()
            if q.ack.id in seen:
                later.append(q)
            else:
                seen.add(q.ack.id)
                taken.append(q)
        self._queue = later
        return taken

    async def _cycle(self) -> bool:
        now = self.wall()
        queued = self._take_acks()
        lost, self._lost = self._lost, []
        throttles, self._new_throttles = self._new_throttles, []
        adopt = list(self._adopt)
        free, claims = self._free_slots()
        token = secrets.token_hex(8)
        cycle = pull.build(
            now=now, node=self.node, acks=[q.ack for q in queued], lost=lost,
            throttles=throttles, claims=claims, free=free, token=token,
            leases=self._leases, default_lease_s=self._default_lease_s, adopt_tokens=adopt,
            resent=self._resent)
        try:
            results = await self.d1.batch(cycle.statements)
        except BaseException:
            # Nothing is known to have happened: everything goes again next
            # time. A claim may have committed even so; adopt its rows then.
            self._queue.extendleft(reversed(queued))
            self._lost[:0] = lost
            self._new_throttles[:0] = throttles
            self._resent = self._resent or bool(queued)
            if cycle.claims:
                self._adopt.append(token)
            raise
        self._adopt = [t for t in self._adopt if t not in adopt]
        self._counts["cycles"] += 1
        self._last_cycle_at = trio.current_time()
        if cycle.ack is not None:
            took = {row[0] for row in results[cycle.ack].rows}
            if cycle.ack_check is not None:
                took.update(row[0] for row in results[cycle.ack_check].rows)
                self._resent = False
            for q in queued:
                self._acknowledged(q, q.ack.id in took)
        if cycle.reap is not None:
            self._counts["reaped"] += results[cycle.reap].changes
        self._throttles = {
            row[0]: float(row[1]) for row in results[cycle.throttles].rows
        } | {k: v for k, v in self._throttles.items() if v > now}
        claimed = pull.claimed_rows(cycle, results)
        for job in claimed:
            self._spawn(job)
        self._cycle_done.set()
        self._cycle_done = trio.Event()
        return bool(claimed or queued)

    def _acknowledged(self, q: _Queued, ok: bool) -> None:
        q.ok = ok
        if q.done is not None:
            q.done.set()
        if not ok:
            self._counts["lease_lost"] += 1
            self._lost.append({"id": q.ack.id, "detail": (
                f"{q.ack.event} by {self.node} dropped: the lease was lost")})
            log.warning("lease lost: job %s, %s dropped", q.ack.id, q.ack.event,
                        extra={"event": "lease_lost", "job_id": q.ack.id})
            return
        if q.done is None:
            counter = {
                EventType.COMPLETED: "completed", EventType.FAILED: "failed",
                EventType.RETRY_SCHEDULED: "retried", EventType.CONTINUED: "continued",
                EventType.RELEASED: "released",
            }.get(EventType(q.ack.event))
            if counter:
                self._counts[counter] += 1

    # -- actors ------------------------------------------------------------------

    def _spawn(self, job: Claimed) -> None:
        assert self._nursery is not None
        key = (job.id, job.lease_token)
        if key in self.actors:  # adopted twice; one actor is enough
            return
        kind = self.registry.get(job.kind)
        budget = self.cfg.budget_for(job.kind)
        # never run past the lease, whatever the clocks did meanwhile
        lease_left = job.lease_until - self.wall() - self.cfg.supervisor.lease_grace_s
        deadline = trio.current_time() + min(budget, lease_left)
        assert kind is not None  # only registered kinds are claimed
        actor = Actor(self, job, kind, budget_s=budget, deadline=deadline)
        self.actors[key] = actor
        self._running_by_kind[job.kind] = self._running_by_kind.get(job.kind, 0) + 1
        self._counts["claimed"] += 1
        self._nursery.start_soon(self._run_actor, actor)

    async def _run_actor(self, actor: Actor) -> None:
        job = actor.job
        key = (job.id, job.lease_token)
        finish: Finish | None = None
        try:
            with trio.CancelScope(deadline=actor.deadline) as scope:
                self._scopes[key] = scope
                if self._releasing:
                    scope.cancel()
                try:
                    finish = await actor.run()
                except LeaseLostError as exc:
                    log.warning("%s: the actor stops", exc, extra={
                        "event": "lease_lost", "job_id": job.id, "kind": job.kind})
            if scope.cancelled_caught:
                finish = actor.on_cancelled(releasing=self._releasing)
            if finish is not None:
                self._finish(actor, finish)
        finally:
            del self.actors[key]
            self._scopes.pop(key, None)
            self._running_by_kind[job.kind] -= 1
            self._wake.set()

    def _finish(self, actor: Actor, finish: Finish) -> None:
        d = finish.decision
        ack = self._ack(
            actor.job, state=d.state, event=d.event, run_at=d.run_at,
            attempt_delta=d.attempt_delta, checkpoint=actor.checkpoint_json(),
            progress=actor.progress, step=actor.last_step, error_class=d.error_class,
            error_message=d.error_message, detail=d.error_message, result=finish.result,
            deferred_add=d.deferred_add)
        throttle = d.throttle
        if throttle is not None:
            self._new_throttles.append(
                {"upstream": throttle.upstream, "until": throttle.until,
                 "reason": throttle.reason})
            self._throttles[throttle.upstream] = max(
                throttle.until, self._throttles.get(throttle.upstream, 0.0))
        self._queue.append(_Queued(ack, throttle))
        level = logging.DEBUG if d.error_class is None else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "job %s %s%s", actor.job_id, d.event,
                    f" ({d.error_class}: {d.error_message})" if d.error_class else "",
                    extra={"event": str(d.event), "job_id": actor.job_id, "kind": actor.kind,
                           "attempt": actor.attempt, "error_class": d.error_class})

    def _ack(self, job: Claimed, *, state: JobState, event: EventType,
             **fields: object) -> Ack:
        self._seq += 1
        checkpoint = fields.pop("checkpoint", None)
        return Ack(
            id=job.id, tok=job.lease_token, ack=f"{job.lease_token}:{self._seq}",
            state=state.value, event=event.value, ts=self.wall(),
            has_checkpoint=checkpoint is not None, checkpoint=checkpoint,  # type: ignore[arg-type]
            **fields)  # type: ignore[arg-type]
