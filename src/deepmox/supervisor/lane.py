"""A lane: one pull loop and its share of the actor slots.

A supervisor on SQLite runs two lanes. Each claims into its own half of the
slots and sends its own actors' acknowledgements, one cycle at a time; the
two alternate on the database's single writer thread, so while one lane's
batch runs there, the other lane's actors run on the event loop. On the REST
backend there is one lane: one request in flight.

Per-kind actor limits are split between the lanes the same way, so the two
never over-claim a kind between them.

Riders: a submission through the daemon's own client (the HTTP API) does not
write on its own and then wake a lane; its statements ride the next cycle of
a lane (:meth:`Lane.ride`), ahead of that cycle's claim, so the new job is
committed and claimed in one transaction -- one commit, one cycle less before
it runs. The cycle's claim is the ordinary one (priority order, free slots,
kind limits): a rider never jumps the queue. The submission is acknowledged
only once that transaction has committed, exactly as when it writes alone.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..bindings.d1 import Result, Statement
from ..errors import D1UnavailableError, JobError, RateLimitedError
from . import pull
from .pull import Ack, ClaimSpec

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("deepmox.supervisor")

#: after the drain, how long the last acknowledgements may take before the
#: lane gives up on them (the leases then expire and the reaper acts)
FINAL_FLUSH_S = 10.0
#: after a failed cycle, wait at least this long, doubling up to poll_max_s
FAILED_CYCLE_MIN_S = 0.05


@dataclass(slots=True)
class Queued:
    ack: Ack
    kind: str = ""
    #: the attempt the job's row holds (None: unknown, its row is broken)
    attempt: int | None = None
    done: trio.Event | None = None
    ok: bool | None = None


@dataclass(slots=True, eq=False)
class Rider:
    """A local submission's statements, riding a lane's next cycle."""

    statements: Sequence[Statement]
    #: the ids of the jobs it submits: claiming them is not news of other work
    new_ids: Collection[str] = ()
    done: trio.Event = field(default_factory=trio.Event)
    results: list[Result] | None = None
    error: BaseException | None = None


def riding_lane(lanes: Sequence[Lane]) -> Lane | None:
    """The lane a local submission should ride: one between cycles if there
    is one (it starts at once), else the one with the most free slots; None
    when no lane takes riders now (draining, or backing off after a failed
    cycle), and the submission writes on its own."""
    open_lanes = [lane for lane in lanes if lane.takes_riders()]
    if not open_lanes:
        return None
    return max(open_lanes, key=lambda lane: (not lane.in_cycle, lane.slots - lane.running))


def share(total: int, lanes: int, index: int) -> int:
    """Lane ``index``'s share of ``total`` slots."""
    return total // lanes + (1 if index < total % lanes else 0)


@dataclass(eq=False)
class Lane:
    sup: Supervisor
    index: int
    slots: int
    kind_caps: dict[str, int]
    queue: deque[Queued] = field(default_factory=deque)
    running: int = 0
    running_by_kind: dict[str, int] = field(default_factory=dict)
    wake: trio.Event = field(default_factory=trio.Event)
    adopt: list[str] = field(default_factory=list)
    resent: bool = False
    riders: list[Rider] = field(default_factory=list)
    in_cycle: bool = False
    #: after a failed cycle, no cycle (and no rider) before this time
    not_before: float = 0.0
    #: when the earliest job this lane handed back for later becomes due
    due_at: float = math.inf

    def enqueue(self, q: Queued) -> None:
        self.queue.append(q)
        self.wake.set()

    def takes_riders(self) -> bool:
        return not self.sup.draining and trio.current_time() >= self.not_before

    async def ride(self, statements: Sequence[Statement], new_ids: Collection[str] = ()
                   ) -> list[Result]:
        """Run ``statements`` at the head of this lane's next cycle, in its
        transaction; their results, or the cycle's error. Cancelled before
        the cycle took them, they are never sent."""
        rider = Rider(statements, new_ids)
        self.riders.append(rider)
        self.wake.set()
        try:
            await rider.done.wait()
        except BaseException:
            if rider in self.riders:
                self.riders.remove(rider)
            raise
        if rider.error is not None:
            if isinstance(rider.error, Exception):
                raise rider.error
            raise D1UnavailableError("the pull loop stopped before the submission was written")
        assert rider.results is not None
        return rider.results

    async def run(self) -> None:
        sup = self.sup
        s = sup.cfg.supervisor
        interval = s.poll_min_s
        failed_wait = FAILED_CYCLE_MIN_S
        while True:
            if sup.draining:
                now = trio.current_time()
                if self.running and now >= sup.drain_deadline:
                    sup.release_all()
                if not self.running and not self.queue and not self.riders:
                    return
                if now >= sup.drain_deadline + FINAL_FLUSH_S:
                    log.error("giving up on %d acknowledgements; their leases will expire",
                              len(self.queue), extra={"event": "flush_abandoned"})
                    return
            now = trio.current_time()
            # a job this lane handed back for later is claimed when it is due
            due = max(self.due_at, now + sup.idle_floor_s)
            deadline = max(self.not_before, min(now + interval, due))
            if sup.draining and self.running and not sup.releasing:
                deadline = min(deadline, sup.drain_deadline)
            with trio.move_on_at(deadline):
                await self.wake.wait()
            self.wake = trio.Event()
            if trio.current_time() < self.not_before:
                continue
            if trio.current_time() >= self.due_at:
                self.due_at = math.inf
            try:
                busy = await self._cycle()
            except JobError as exc:
                sup.counts["failed_cycles"] += 1
                log.warning("pull cycle failed (%s): %s", exc.error_class, exc.message,
                            extra={"event": "cycle_failed", "error_class": exc.error_class})
                wait = failed_wait * (0.5 + sup.rng.random())
                if isinstance(exc, RateLimitedError):
                    wait = max(wait, exc.retry_after)
                self.not_before = trio.current_time() + wait
                failed_wait = min(failed_wait * 2, max(s.poll_max_s, FAILED_CYCLE_MIN_S))
                continue
            failed_wait = FAILED_CYCLE_MIN_S
            # Polling fast pays only while work shows up that nobody told the
            # lane about (other hosts' submissions, retries coming due); what
            # it was told about -- riders, outcomes, wake-ups -- wakes it anyway.
            if busy:
                interval = s.poll_min_s
            else:
                interval = max(min(interval * 2, s.poll_max_s), sup.idle_floor_s)

    def _free_slots(self) -> tuple[int, list[ClaimSpec]]:
        if self.sup.draining:
            return 0, []
        free = self.slots - self.running
        if free <= 0:
            return 0, []
        claims = []
        for name, cap in self.kind_caps.items():
            left = cap - self.running_by_kind.get(name, 0)
            if left > 0:
                claims.append(ClaimSpec([name], left))
        if self.sup.unlimited_kinds:
            claims.append(ClaimSpec(self.sup.unlimited_kinds, free))
        return free, claims

    def _take_acks(self) -> list[Queued]:
        """At most one ack per job per cycle: a second one waits for the next."""
        taken: list[Queued] = []
        seen: set[str] = set()
        later: deque[Queued] = deque()
        while self.queue:
            q = self.queue.popleft()
            if q.ack.id in seen:
                later.append(q)
            else:
                seen.add(q.ack.id)
                taken.append(q)
        self.queue = later
        return taken

    async def _cycle(self) -> bool:
        """One cycle; True when it found work it was not told about (claimed
        jobs other than its riders', or fleet events left to read back)."""
        self.in_cycle = True
        try:
            return await self._cycle_once()
        finally:
            self.in_cycle = False

    async def _cycle_once(self) -> bool:
        sup = self.sup
        now = sup.wall()
        riders, self.riders = self.riders, []
        queued = self._take_acks()
        lost, throttles = sup.take_notes()
        adopt = list(self.adopt)
        free, claims = self._free_slots()
        token = secrets.token_hex(8)
        # a submission waits on this cycle: the reaper and the throttles can
        # wait for the next one (a few times a second is all they need)
        housekeeping = sup.take_housekeeping(defer=bool(riders))
        # taken last, right before the batch goes out: in sending order
        ticket = sup.feed_ticket()
        try:
            cycle = pull.build(
                head=[stmt for r in riders for stmt in r.statements], now=now,
                node=sup.node, acks=[q.ack for q in queued], lost=lost,
                throttles=throttles, claims=claims, free=free, token=token,
                leases=sup.leases, default_lease_s=sup.default_lease_s, adopt_tokens=adopt,
                resent=self.resent, feed=ticket, housekeeping=housekeeping)
        except BaseException:
            sup.feed_failed(ticket)  # a ticket left in flight would hold the feed up
            raise
        try:
            # nothing to say or ask (draining, every slot taken): no request
            results = await sup.d1.batch(cycle.statements) if cycle.statements else []
        except BaseException as exc:
            for r in riders:
                r.error = exc
                r.done.set()
            sup.feed_failed(ticket)
            if housekeeping:
                sup.housekeeping_failed()
            # Nothing is known to have happened: everything goes again next
            # time. A claim may have committed even so; adopt its rows then.
            self.queue.extendleft(reversed(queued))
            sup.return_notes(lost, throttles)
            self.resent = self.resent or bool(queued)
            if cycle.claims:
                self.adopt.append(token)
            raise
        at = 0
        for r in riders:
            r.results = results[at:at + len(r.statements)]
            at += len(r.statements)
            r.done.set()
        self.adopt = [t for t in self.adopt if t not in adopt]
        if queued:
            took = {row[0] for i in cycle.acks for row in results[i].rows}
            if cycle.ack_check is not None:
                took.update(row[0] for row in results[cycle.ack_check].rows)
                self.resent = False
            for q in queued:
                ok = q.ack.id in took
                sup.acknowledged(q, ok)
                if ok and q.ack.run_at is not None and q.ack.state == "pending":
                    self.due_at = min(self.due_at,
                                      trio.current_time() + max(0.0, q.ack.run_at - now))
        reaped = results[cycle.reap].changes if cycle.reap is not None else 0
        throttle_rows = results[cycle.throttles].rows if cycle.throttles is not None else None
        claimed = pull.claimed_rows(cycle, results)
        for job in claimed:
            sup.spawn(job, self)
        more = sup.feed_answered(ticket, cycle, results, queued, now)
        sup.cycle_finished(now, reaped, throttle_rows)
        told = {job_id for r in riders for job_id in r.new_ids}
        found = any(job.id not in told for job in claimed)
        return found or more
