"""One pull cycle as one D1 request.

Everything the supervisor has to tell or ask the database goes out together,
in this order, as one atomic batch:

0. the statements of local submissions riding this cycle (so its claim
   sees the new jobs);
1. ``lease_lost`` notes and throttle extensions that piled up;
2. the acknowledgements (checkpoints and outcomes, fenced by lease token)
   and their events; which took effect comes back from ``RETURNING`` (or,
   for acks sent again after a lost answer, from ``last_ack``);
3. reap: expired leases back to pending (class zombie), or failed when their
   attempts are spent;
4. claim: up to the free actor slots, per kind where kinds have limits, with
   one fresh lease token, and the ``claimed`` events;
5. adopt: rows claimed by an earlier cycle whose answer was lost;
6. the active throttles, for every actor's :meth:`wait_throttle`;
7. while feed clients listen: the events this daemon did not write itself
   (read back by id, see :mod:`.timeline`), and where the events table ends.

The events this cycle writes for its acknowledgements and claims are known
without reading them back (:func:`own_events`): each insert writes them in
the order of its input, and its ``changes`` and ``last_row_id`` give their
ids; riders' events, reaps and lease-lost notes are left to the read-back.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..bindings.d1 import Result, Statement
from ..bindings.d1.queries import Q
from ..jobs import Claimed, EventType, JobState, claimed_from_row, dumps
from .timeline import TAIL_LIMIT, FeedEvent, Span, Ticket


class Ack(msgspec.Struct, kw_only=True):
    """One fenced write of an actor, as a row of the ``ack`` statement's JSON."""

    id: str
    tok: str
    ack: str
    state: str
    event: str
    ts: float
    attempt_delta: int = 0
    run_at: float | None = None
    has_checkpoint: bool = False
    checkpoint: str | None = None
    progress: float | None = None
    step: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    detail: str | None = None
    result: str | None = None
    deferred_add: float = 0.0


_encode = msgspec.json.Encoder().encode
#: the claim's columns that make a :class:`Claimed`; the job's step follows
_CLAIMED_COLUMNS = 10


@dataclass(slots=True)
class ClaimSpec:
    kinds: list[str]
    cap: int


@dataclass(slots=True)
class Cycle:
    """The statements of one cycle and where each answer will be."""

    statements: list[Statement] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    ack_check: int | None = None
    reap: int | None = None
    claims: list[int] = field(default_factory=list)
    adopt: int | None = None
    throttles: int | None = None
    #: the live feed's reads: everything after an id, ranges of ids, the end
    tail: int | None = None
    gaps: int | None = None
    top: int | None = None
    #: the inserts of events this cycle knows, each with the acks (or claim
    #: statements) it wrote events for and the update that says which took
    done: tuple[int, int, list[Ack]] | None = None
    other: tuple[int, int, list[Ack]] | None = None
    claimed_events: int | None = None
    #: the ``detail`` of a claimed event and the lease's end, by kind
    claim_details: dict[str, tuple[str, float]] = field(default_factory=dict)

    def add(self, sql: str, *params: object) -> int:
        self.statements.append(Statement(sql, params))
        return len(self.statements) - 1


def build(*, head: Sequence[Statement] = (), now: float, node: str, acks: Sequence[Ack],
          lost: Sequence[dict[str, str]],
          throttles: Sequence[dict[str, object]], claims: Sequence[ClaimSpec], free: int,
          token: str, leases: dict[str, float], default_lease_s: float,
          adopt_tokens: Sequence[str], resent: bool = False,
          feed: Ticket | None = None, housekeeping: bool = True) -> Cycle:
    """``resent``: some acks went out before in a request whose answer was
    lost; then which took effect is asked of ``last_ack``, not of this
    request's ``RETURNING``. ``housekeeping``: reap expired leases and read
    the throttles in this cycle (a few times a second is enough; a cycle
    without them is leaner, which is what a single submission waits on).
    ``head``: statements that go first (riding submissions), their results
    the first of the answer. ``feed``: what the live feed wants read."""
    c = Cycle(statements=list(head))
    if feed is not None and feed.tail_after is not None:
        # after the riders, so that their events are read here too
        c.tail = c.add(Q["tail_events"], feed.tail_after, TAIL_LIMIT)
    if lost:
        c.add(Q["lease_lost_events"], now, node, dumps(list(lost)))
    if throttles:
        c.add(Q["throttle_extend"], now, dumps(list(throttles)))
    if acks:
        # completions without a note for their event take the lean path
        done = [a for a in acks if a.state == "completed" and a.detail is None]
        other = ([a for a in acks if a.state != "completed" or a.detail is not None]
                 if len(done) < len(acks) else [])
        if done:
            rows = _encode([[a.id, a.tok, a.ts, a.step, a.ack, a.result, a.checkpoint]
                            for a in done]).decode()
            events = c.add(Q["complete_events"], rows, node)
            c.acks.append(c.add(Q["complete"], rows))
            c.done = (events, c.acks[-1], done)
        if other:
            payload = _encode(other).decode()
            events = c.add(Q["ack_events"], payload, node)
            c.acks.append(c.add(Q["ack"], payload))
            c.other = (events, c.acks[-1], other)
        if resent:
            c.ack_check = c.add(Q["ack_check"], _encode(list(acks)).decode())
    if housekeeping:
        c.add(Q["reap_failed_events"], now, node, now)
        c.add(Q["reap_events"], now, node, now)
        c.reap = c.add(Q["reap"], now, now, now, now)
    if free > 0 and claims:
        leases_json = dumps(leases)
        for spec in claims:
            c.claims.append(c.add(
                Q["claim"], now, leases_json, default_lease_s, token, node, now, now,
                dumps(spec.kinds), min(spec.cap, free), free, token))
        for spec in claims:
            for kind in spec.kinds:
                if kind not in c.claim_details:
                    until = now + leases.get(kind, default_lease_s)
                    c.claim_details[kind] = (
                        _encode({"lease": token, "lease_until": until}).decode(), until)
        c.claimed_events = c.add(
            Q["claimed_events"],
            dumps({kind: detail for kind, (detail, _) in c.claim_details.items()}), now, token)
    if adopt_tokens:
        c.adopt = c.add(Q["adopt"], dumps(list(adopt_tokens)))
    if housekeeping:
        c.throttles = c.add(Q["throttles_active"], now)
    if feed is not None:
        if feed.gaps:
            c.gaps = c.add(Q["tail_ranges"], dumps(feed.gaps))
        c.top = c.add(Q["last_event_id"])
    return c


def claimed_rows(cycle: Cycle, results: Sequence[Result]) -> list[Claimed]:
    out: list[Claimed] = []
    for i in [*cycle.claims, *([cycle.adopt] if cycle.adopt is not None else [])]:
        out.extend(claimed_from_row(row[:_CLAIMED_COLUMNS]) for row in results[i].rows)
    return out


# -- the cycle's events, for the live feed ------------------------------------------

_COMPLETED = EventType.COMPLETED.value
_CLAIMED = EventType.CLAIMED.value
_IN_PROGRESS = JobState.IN_PROGRESS.value


def _first_id(result: Result, count: int) -> int | None:
    """The id the first of ``count`` events an insert wrote got, if it says so
    (ids of one insert are consecutive: AUTOINCREMENT, one writer)."""
    if result.changes != count or result.last_row_id is None:
        return None
    return result.last_row_id - count + 1


def _spans(events: Sequence[FeedEvent | None], first: int) -> list[Span]:
    """``events`` (None where one is not known here), the first with id
    ``first``, as spans of what is known."""
    spans: list[Span] = []
    run: list[FeedEvent] = []
    lo = first - 1
    for event_id, event in enumerate(events, first):
        if event is None:
            if run:
                spans.append(Span(lo, event_id - 1, run))
                run = []
            lo = event_id
        else:
            run.append(event)
    if run:
        spans.append(Span(lo, first + len(events) - 1, run))
    return spans


def _ack_events(acks: Sequence[Ack], first: int, *, completed: bool, node: str,
                jobs: Mapping[str, tuple[str, int | None]]) -> list[FeedEvent | None]:
    """The events ``ack_events`` (or ``complete_events``) wrote for ``acks``,
    where the ack alone says what they are: otherwise (no step or progress
    in the ack: the row's own; a broken row, whose attempt is None here) the
    event is None, to be read back."""
    out: list[FeedEvent | None] = []
    for event_id, a in enumerate(acks, first):
        kind, attempt = jobs.get(a.id, ("", None))
        if attempt is None or a.step is None:
            out.append(None)
        elif completed:
            out.append(FeedEvent(event_id, a.id, kind, _COMPLETED, a.ts, attempt, _COMPLETED,
                                 1.0, a.step, None, None, node))
        elif a.progress is None:
            out.append(None)
        else:
            out.append(FeedEvent(event_id, a.id, kind, a.event, a.ts, attempt, a.state,
                                 a.progress, a.step, a.error_class, a.detail, node))
    return out


def _claimed_events(rows: Sequence[Sequence[Any]], first: int, *, now: float, node: str,
                    details: Mapping[str, tuple[str, float]]) -> list[FeedEvent | None]:
    """The events ``claimed_events`` wrote for the claimed ``rows``, in job id
    order; None for a row of the wrong types or whose lease is not the one
    its detail was written for."""
    out: list[FeedEvent | None] = []
    for event_id, row in enumerate(rows, first):
        job_id, kind, _, attempt, _, _, until, _, progress, _, step = row
        detail = details.get(kind)
        if (detail is None or until != detail[1] or type(attempt) is not int
                or type(progress) not in (int, float) or not (step is None or type(step) is str)):
            out.append(None)
        else:
            out.append(FeedEvent(event_id, job_id, kind, _CLAIMED, now, attempt, _IN_PROGRESS,
                                 progress, step, None, detail[0], node))
    return out


def own_events(cycle: Cycle, results: Sequence[Result], *, node: str, now: float,
               jobs: Mapping[str, tuple[str, int | None]]) -> list[Span] | None:
    """The events this cycle wrote for its acks and claims, as spans, known
    from what it sent and got back; None when the numbers do not add up (then
    every one is read back). ``jobs``: each acked job's kind and attempt by
    job id (attempt None: its row is broken)."""
    spans: list[Span] = []
    for part, completed in ((cycle.done, True), (cycle.other, False)):
        if part is None:
            continue
        events_at, update_at, acks = part
        took = {row[0] for row in results[update_at].rows}
        wrote = [a for a in acks if a.id in took] if len(took) < len(acks) else acks
        if not wrote:
            continue
        first = _first_id(results[events_at], len(wrote))
        if first is None:
            return None
        spans += _spans(_ack_events(wrote, first, completed=completed, node=node, jobs=jobs),
                        first)
    if cycle.claimed_events is not None:
        rows = [row for i in cycle.claims for row in results[i].rows]
        if rows:
            first = _first_id(results[cycle.claimed_events], len(rows))
            if first is None:
                return None
            rows.sort(key=lambda row: str(row[0]))  # the insert's order
            spans += _spans(_claimed_events(rows, first, now=now, node=node,
                                            details=cycle.claim_details), first)
    # the inserts ran one after the other: their ids only grow
    if any(after.lo < before.hi for before, after in itertools.pairwise(spans)):
        return None
    return spans
