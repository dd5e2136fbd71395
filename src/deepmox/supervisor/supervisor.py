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
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..actors.actor import Actor, Finish
from ..actors.registry import Registry
from ..bindings import Bindings
from ..bindings.ai import AI
from ..bindings.d1 import D1, Result, Statement
from ..config import Config
from ..errors import LeaseLostError
from ..jobs import Claimed, EventType, JobState
from . import policy
from .budget import CostModel, family
from .histograms import Histograms
from .lane import Lane, Queued, riding_lane, share
from .pull import Ack, Cycle, own_events
from .timeline import FeedEvent, Span, Ticket

if TYPE_CHECKING:
    from ..api.feed import FeedHub
    from ..bindings.r2 import R2

log = logging.getLogger("deepmox.supervisor")

STEP_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
#: how often pull cycles reap expired leases and re-read the shared throttles
HOUSEKEEPING_S = 0.25

#: which statistics counter an outcome's event adds to
_COUNTERS = {
    EventType.COMPLETED.value: "completed", EventType.FAILED.value: "failed",
    EventType.RETRY_SCHEDULED.value: "retried", EventType.CONTINUED.value: "continued",
    EventType.RELEASED.value: "released",
}


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


class Supervisor:
    def __init__(self, cfg: Config, d1: D1, registry: Registry, *, node: str,
                 wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None, r2: R2 | None = None,
                 ai: AI | None = None, scratch_base: str | None = None) -> None:
        """``scratch_base``: the folder for actors' scratch folders (the
        daemon's :class:`~deepmox.actors.scratch.ScratchRoot`); default
        ``[video] scratch_dir``."""
        self.cfg = cfg
        self.scratch_base = cfg.video.scratch_dir if scratch_base is None else scratch_base
        self.d1 = d1
        #: an AI binding made here is closed here, when :meth:`run` ends
        self._own_ai = ai is None
        self.bindings = Bindings(cfg, d1, r2, ai if ai is not None else AI(cfg, rng=rng))
        self.registry = registry
        self.node = node
        self._wall = wall
        self.rng = rng or random.Random()
        self.costs = CostModel()
        #: outcomes that took effect, by (counter, kind, error class): for metrics
        self.outcomes: dict[tuple[str, str, str], int] = {}
        self.step_seconds = Histograms(STEP_BUCKETS_S)
        self.budget_use = Histograms(RATIO_BUCKETS)
        self.feed: FeedHub | None = None
        self._next_housekeeping = 0.0
        s = cfg.supervisor
        self.retry_policy = policy.RetryPolicy(s.backoff_base_s, s.backoff_max_s,
                                               s.max_deferral_s)
        #: running actors by lease (job id and lease token): a daemon may re-claim
        #: a job while a stale actor of its own still runs it
        self.actors: dict[tuple[str, str], Actor] = {}
        self._scopes: dict[tuple[str, str], trio.CancelScope] = {}
        self._lanes_of: dict[tuple[str, str], Lane] = {}
        self._running_by_kind: dict[str, int] = {}
        self._lost: list[dict[str, str]] = []
        self._new_throttles: list[dict[str, object]] = []
        self._throttles: dict[str, float] = {}
        self._seq = 0
        self._draining = False
        self.releasing = False
        self.drain_deadline = float("inf")
        self._stopped = trio.Event()
        self._cycle_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_cycle_at: float | None = None
        self.counts = dict.fromkeys(
            ("claimed", "completed", "failed", "retried", "continued", "released",
             "lease_lost", "reaped", "cycles", "failed_cycles"), 0)
        self._budgets = {name: registry.budget_for(cfg, name) for name in registry.names()}
        self.leases = {name: budget + s.lease_grace_s for name, budget in self._budgets.items()}
        self.default_lease_s = s.budget_s + s.lease_grace_s
        limited = {
            name: k.max_actors for name, k in cfg.kinds.items()
            if k.max_actors is not None and name in self.leases
        }
        self.unlimited_kinds = [n for n in registry.names() if n not in limited]
        # a REST-backed daemon spends at most a quarter of its request budget idling
        self.idle_floor_s = 0.0
        if cfg.d1.backend == "http":
            self.idle_floor_s = 4 * 300.0 / cfg.d1.requests_per_5min
        n = 2 if d1.backend == "sqlite" and s.max_actors >= 2 else 1
        self.lanes = [
            Lane(self, i, share(s.max_actors, n, i),
                 {k: share(cap, n, i) for k, cap in limited.items()})
            for i in range(n)
        ]

    # -- services for actors -----------------------------------------------------

    def wall(self) -> float:
        return self._wall()

    def plan_deadline(self) -> float:
        return self.drain_deadline

    def observe_step(self, kind: str, step: str, seconds: float) -> None:
        self.costs.observe(kind, step, seconds)
        self.step_seconds.observe((kind, family(step)), seconds)

    def throttles(self) -> dict[str, float]:
        """Upstreams throttled (as last read from D1), and until when."""
        return dict(self._throttles)

    def throttle_until(self, upstream: str) -> float | None:
        return self._throttles.get(upstream)

    def block(self, upstream: str, until: float, reason: str) -> None:
        """Extend ``upstream``'s throttle: here at once, in D1 with the next cycle."""
        if until <= self._throttles.get(upstream, 0.0):
            return
        self._throttles[upstream] = until
        self._new_throttles.append({"upstream": upstream, "until": until, "reason": reason})

    async def write_checkpoint(self, actor: Actor) -> None:
        job = actor.job
        self._seq += 1
        ack = Ack(
            id=job.id, tok=job.lease_token, ack=f"{job.lease_token}:{self._seq}",
            state=JobState.IN_PROGRESS.value, event=EventType.STEP_COMPLETED.value,
            ts=self._wall(), has_checkpoint=True, checkpoint=actor.checkpoint_json(),
            progress=actor.progress, step=actor.last_step, detail=actor.step_note)
        q = Queued(ack, actor.kind, self._attempt_of(actor), done=trio.Event())
        self._lanes_of[(actor.job_id, actor.job.lease_token)].enqueue(q)
        assert q.done is not None
        await q.done.wait()
        if not q.ok:
            raise LeaseLostError(f"job {actor.job_id}: lease lost before its checkpoint")

    # -- control -----------------------------------------------------------------

    def wake(self) -> None:
        """Start a cycle now (a local submission, a wake-up datagram): in the
        lane with the most free slots, which is enough to claim new work."""
        if self._draining:
            for lane in self.lanes:
                lane.wake.set()
            return
        max(self.lanes, key=lambda lane: lane.slots - lane.running).wake.set()

    async def submit_batch(self, statements: Sequence[Statement],
                           new_ids: Collection[str] = ()) -> list[Result]:
        """Write a local submission's statements (the daemon's own client;
        ``new_ids``: the jobs it submits).

        On SQLite they ride the next cycle of a lane (:meth:`Lane.ride`), which
        claims the new jobs in the same transaction; otherwise (REST, draining,
        a lane backing off) they go out on their own and a cycle is woken."""
        lane = riding_lane(self.lanes) if self.d1.backend == "sqlite" else None
        if lane is not None:
            return await lane.ride(statements, new_ids)
        results = await self.d1.batch(statements)
        self.wake()
        return results

    def stop(self) -> None:
        """Drain: claim nothing more, give actors ``drain_s``, then release."""
        if not self._draining:
            self._draining = True
            self.drain_deadline = trio.current_time() + self.cfg.supervisor.drain_s
            log.info("draining: %d actors running", len(self.actors),
                     extra={"event": "draining"})
            for lane in self.lanes:
                lane.wake.set()

    def release_all(self) -> None:
        """The drain time is up: cancel every actor; their jobs go back to pending."""
        if not self.releasing:
            self.releasing = True
            log.info("drain time is up: releasing %d jobs", len(self.actors),
                     extra={"event": "releasing"})
            for scope in self._scopes.values():
                scope.cancel()

    def in_cycle(self) -> bool:
        """Whether a pull cycle is in flight (the database is working for us)."""
        return any(lane.in_cycle for lane in self.lanes)

    @property
    def draining(self) -> bool:
        return self._draining

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def wait_cycle(self) -> None:
        """Return after the next pull cycle that reached D1 has been processed."""
        await self._cycle_done.wait()

    def statistics(self) -> SupervisorStatistics:
        c = self.counts
        return SupervisorStatistics(
            node=self.node, running=len(self.actors),
            running_by_kind=dict(self._running_by_kind),
            claimed=c["claimed"], completed=c["completed"], failed=c["failed"],
            retried=c["retried"], continued=c["continued"], released=c["released"],
            lease_lost=c["lease_lost"], reaped=c["reaped"], cycles=c["cycles"],
            failed_cycles=c["failed_cycles"],
            queued_acks=sum(len(lane.queue) for lane in self.lanes),
            draining=self._draining, last_cycle_at=self._last_cycle_at)

    # -- the loop ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run until :meth:`stop` has drained every actor."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with trio.open_nursery() as lanes:
                    for lane in self.lanes:
                        lanes.start_soon(lane.run)
                    task_status.started()
        finally:
            if self._own_ai and self.bindings.ai is not None:
                with trio.CancelScope(shield=True):
                    await self.bindings.ai.aclose()
            self._stopped.set()

    # -- the live feed -----------------------------------------------------------

    def attach_feed(self, hub: FeedHub) -> None:
        self.feed = hub

    def feed_ticket(self) -> Ticket | None:
        """What the next cycle reads for the feed (None: nobody listens).
        Taken right before the cycle is sent: tickets go in sending order."""
        return self.feed.timeline.begin() if self.feed is not None else None

    def feed_failed(self, ticket: Ticket | None) -> None:
        if ticket is not None and self.feed is not None:
            self.feed.timeline.fail(ticket)

    def feed_answered(self, ticket: Ticket | None, cycle: Cycle, results: list[Result],
                      queued: Sequence[Queued], now: float) -> bool:
        """Hand what the cycle read and what it wrote itself to the feed's
        timeline; True when more is waiting to be read back."""
        if ticket is None or self.feed is None:
            return False
        spans: list[Span] = []
        if cycle.tail is not None and ticket.tail_after is not None:
            events = [FeedEvent(*row) for row in results[cycle.tail].rows]
            spans.append(Span(ticket.tail_after, events[-1].id if events else ticket.tail_after,
                              events))
        if cycle.gaps is not None:
            events = [FeedEvent(*row) for row in results[cycle.gaps].rows]
            at = 0
            for lo, hi in ticket.gaps:  # both in id order
                while at < len(events) and events[at].id <= lo:
                    at += 1
                begin = at
                while at < len(events) and events[at].id <= hi:
                    at += 1
                spans.append(Span(lo, hi, events[begin:at]))
        top = int(results[cycle.top].scalar() or 0) if cycle.top is not None else 0
        own = own_events(cycle, results, node=self.node, now=now,
                         jobs={q.ack.id: (q.kind, q.attempt) for q in queued})
        # ids past the end the cycle saw would be a backend's mistake: then
        # read them back rather than trust them
        if own and (cycle.top is None or own[-1].hi <= top):
            spans += own
        return self.feed.timeline.finish(ticket, spans, top)

    # -- for the lanes -----------------------------------------------------------

    def take_notes(self) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
        """The lease-lost notes and throttle extensions for the next cycle."""
        lost, self._lost = self._lost, []
        throttles, self._new_throttles = self._new_throttles, []
        return lost, throttles

    def return_notes(self, lost: list[dict[str, str]],
                     throttles: list[dict[str, object]]) -> None:
        self._lost[:0] = lost
        self._new_throttles[:0] = throttles

    def take_housekeeping(self, *, defer: bool = False) -> bool:
        """Whether this cycle reaps and reads the throttles: at most every
        ``HOUSEKEEPING_S`` across the lanes. ``defer``: a submission waits on
        this cycle, so only when it is overdue by another ``HOUSEKEEPING_S``."""
        now = trio.current_time()
        if now < self._next_housekeeping + (HOUSEKEEPING_S if defer else 0.0):
            return False
        self._next_housekeeping = now + HOUSEKEEPING_S
        return True

    def housekeeping_failed(self) -> None:
        self._next_housekeeping = 0.0

    def cycle_finished(self, now: float, reaped: int,
                       throttle_rows: list[list[Any]] | None) -> None:
        self.counts["cycles"] += 1
        self.counts["reaped"] += reaped
        self._last_cycle_at = trio.current_time()
        if throttle_rows is not None:
            self._throttles = {
                row[0]: float(row[1]) for row in throttle_rows
            } | {k: v for k, v in self._throttles.items() if v > now}
        self._cycle_done.set()
        self._cycle_done = trio.Event()

    def acknowledged(self, q: Queued, ok: bool) -> None:
        q.ok = ok
        if q.done is not None:
            q.done.set()
        if not ok:
            self.counts["lease_lost"] += 1
            self._lost.append({"id": q.ack.id, "detail": (
                f"{q.ack.event} by {self.node} dropped: the lease was lost "
                f"(write {q.ack.ack})")})
            log.warning("lease lost: job %s, %s dropped", q.ack.id, q.ack.event,
                        extra={"event": "lease_lost", "job_id": q.ack.id})
            return
        if q.done is None:
            counter = _COUNTERS.get(q.ack.event)
            if counter:
                self.counts[counter] += 1
                key = (counter, q.kind, q.ack.error_class or "")
                self.outcomes[key] = self.outcomes.get(key, 0) + 1

    # -- actors ------------------------------------------------------------------

    def spawn(self, job: Claimed, lane: Lane) -> None:
        assert self._nursery is not None
        key = (job.id, job.lease_token)
        if key in self.actors:  # adopted twice; one actor is enough
            return
        kind = self.registry.get(job.kind)
        budget = self._budgets[job.kind]
        # never run past the lease, whatever the clocks did meanwhile
        lease_left = job.lease_until - self.wall() - self.cfg.supervisor.lease_grace_s
        deadline = trio.current_time() + min(budget, lease_left)
        assert kind is not None  # only registered kinds are claimed
        actor = Actor(self, job, kind, budget_s=budget, deadline=deadline)
        self.actors[key] = actor
        self._lanes_of[key] = lane
        lane.running += 1
        lane.running_by_kind[job.kind] = lane.running_by_kind.get(job.kind, 0) + 1
        self._running_by_kind[job.kind] = self._running_by_kind.get(job.kind, 0) + 1
        self.counts["claimed"] += 1
        self._nursery.start_soon(self._run_actor, actor)

    async def _run_actor(self, actor: Actor) -> None:
        job = actor.job
        key = (job.id, job.lease_token)
        finish: Finish | None = None
        started = trio.current_time()
        try:
            with trio.CancelScope(deadline=actor.deadline) as scope:
                self._scopes[key] = scope
                if self.releasing:
                    scope.cancel()
                try:
                    finish = await actor.run()
                except LeaseLostError as exc:
                    log.warning("%s: the actor stops", exc, extra={
                        "event": "lease_lost", "job_id": job.id, "kind": job.kind})
            if scope.cancelled_caught:
                finish = actor.on_cancelled(releasing=self.releasing)
            lane = self._lanes_of[key]
            if finish is not None:
                lane.enqueue(Queued(self._finish(actor, finish), job.kind,
                                    self._attempt_of(actor)))
            self.budget_use.observe((job.kind,), (trio.current_time() - started) /
                                    actor.budget_s)
        finally:
            if actor.scratch.created:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(actor.scratch.remove)
            del self.actors[key]
            self._scopes.pop(key, None)
            lane = self._lanes_of.pop(key)
            lane.running -= 1
            lane.running_by_kind[job.kind] -= 1
            self._running_by_kind[job.kind] -= 1
            lane.wake.set()

    @staticmethod
    def _attempt_of(actor: Actor) -> int | None:
        """The attempt the job's row holds while ``actor`` runs it (None: the
        row is broken, and holds something else)."""
        return None if actor.job.broken is not None else actor.job.attempt

    def _finish(self, actor: Actor, finish: Finish) -> Ack:
        d = finish.decision
        job = actor.job
        self._seq += 1
        ack = Ack(
            id=job.id, tok=job.lease_token, ack=f"{job.lease_token}:{self._seq}",
            state=d.state.value, event=d.event.value, ts=self._wall(), run_at=d.run_at,
            attempt_delta=d.attempt_delta, has_checkpoint=True,
            checkpoint=actor.checkpoint_json(), progress=actor.progress, step=actor.last_step,
            error_class=d.error_class, error_message=d.error_message,
            detail=" | ".join(filter(None, (d.error_message, actor.step_note))) or None,
            result=finish.result, deferred_add=d.deferred_add)
        throttle = d.throttle
        if throttle is not None:
            self.block(throttle.upstream, throttle.until, throttle.reason)
        level = logging.DEBUG if d.error_class is None else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "job %s %s%s", actor.job_id, d.event,
                    f" ({d.error_class}: {d.error_message})" if d.error_class else "",
                    extra={"event": str(d.event), "job_id": actor.job_id, "kind": actor.kind,
                           "attempt": actor.attempt, "error_class": d.error_class})
        return ack
