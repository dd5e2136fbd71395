"""The fleet's job events in commit order, for the live feed.

Every event has an id from ``job_events``'s AUTOINCREMENT key, assigned in
commit order across every writer of the database; the feed delivers them in
that order, each once. Where an event's content comes from:

- this daemon's own pull cycles wrote most of them, and know them: an
  acknowledgement's or a claim's event is built in memory from what the
  cycle sent and got back (``changes`` and ``last_row_id`` of the insert
  give its ids), and never read back;
- everything else -- other daemons' events, submissions and cancellations
  written by clients, reaps, the events of a cycle whose answer was lost --
  is read from D1 by later cycles, in the same request as their own work.

A cycle learns where the events table ends (``last_event_id``, at the end of
its batch). Ids up to there that no cycle accounted for are *gaps*: a
later cycle reads exactly those ranges. A cycle that starts while no other
is in flight also reads everything after that end from the head of its batch
(``tail_events``): then the events of other writers arrive with the cycle
that first could see them, as before, and a lone daemon (or the REST
backend's single lane) needs no extra read for them.

Ordering between two lanes: the SQLite backend commits batches in the order
they were sent, so a cycle's end is applied only once every cycle sent before
it has answered (or failed); otherwise the events of a cycle still in flight
would look like a gap and be read back for nothing. What is known (a
:class:`Span`: every event in ``(lo, hi]``) is kept above the cursor until
everything before it is known too, then delivered in id order; anything
known twice (a read racing a cycle's own account) is delivered once.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

#: ids one cycle reads back at most (gaps and the tail each)
TAIL_LIMIT = 2_000
#: gaps one cycle reads at most
GAPS_MAX = 50


class FeedEvent(msgspec.Struct, tag_field="type", tag="event", gc=False):
    """An ``event`` message: one row of ``job_events`` with its job's kind, in
    the column order of the ``tail_events`` query (encoding a struct is several
    times cheaper than a dict). Never tracked by the garbage collector (it
    holds only strings and numbers): thousands of them wait for the feed
    during a burst, and tracked they would bring on full collections."""

    id: int
    job_id: str
    kind: str | None
    event: str
    ts: float
    attempt: int
    state: str
    progress: float | None
    step: str | None
    error_class: str | None
    detail: str | None
    node: str | None


@dataclass(slots=True)
class Span:
    """Every event with an id in ``(lo, hi]``: ``events``, in id order (an id
    in the span without an event does not exist)."""

    lo: int
    hi: int
    events: list[FeedEvent] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Ticket:
    """One cycle's share of the timeline: what it reads, and once it
    answered, where the events table ended."""

    generation: int
    #: read every event after this id at the head of the cycle
    tail_after: int | None
    #: read these ranges ``(lo, hi]``
    gaps: list[tuple[int, int]]
    done: bool = False
    top: int = 0


def _minus(gaps: list[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``gaps`` without the ranges in ``taken`` (both ``(lo, hi]``)."""
    out = gaps
    for t_lo, t_hi in taken:
        nxt = []
        for lo, hi in out:
            if t_hi <= lo or t_lo >= hi:
                nxt.append((lo, hi))
                continue
            if lo < t_lo:
                nxt.append((lo, t_lo))
            if t_hi < hi:
                nxt.append((t_hi, hi))
        out = nxt
    return out


class Timeline:
    """Put the events that cycles account for or read back in id order, and
    hand them to ``deliver`` once each, when everything before them is known."""

    def __init__(self, deliver: Callable[[list[FeedEvent]], None], *,
                 held_max: int = 1_000_000,
                 overflow: Callable[[], None] = lambda: None) -> None:
        """``held_max``: events kept waiting for a gap before it, at most;
        past that, ``overflow`` is called (whoever listens is too far
        behind) and the timeline stops."""
        self._deliver = deliver
        self._held_max = held_max
        self._overflow = overflow
        self._held = 0
        #: every event up to here was delivered; None while nobody listens
        self.cursor: int | None = None
        #: the highest id known to exist
        self.top = 0
        #: what is known above the cursor, sorted by ``lo`` (spans may overlap)
        self._spans: list[Span] = []
        #: cycles sent and not yet answered, in the order they were sent
        self._flight: deque[Ticket] = deque()
        #: gaps handed to cycles in flight
        self._reading: dict[Ticket, list[tuple[int, int]]] = {}
        #: a restart (a new cursor) makes tickets of before it stale
        self._generation = 0

    @property
    def active(self) -> bool:
        return self.cursor is not None

    def start(self, cursor: int | None) -> None:
        """Deliver every event after ``cursor`` from now on (None: stop)."""
        self._generation += 1
        self.cursor = cursor
        self.top = cursor or 0
        self._spans.clear()
        self._held = 0
        self._flight.clear()
        self._reading.clear()

    def skip_to(self, event_id: int) -> None:
        """Everything up to ``event_id`` was delivered by other means."""
        if self.cursor is None or event_id <= self.cursor:
            return
        self.cursor = event_id
        self.top = max(self.top, event_id)
        self._flush()

    # -- for the pull cycles ---------------------------------------------------

    def begin(self) -> Ticket | None:
        """A cycle is about to be sent: what it should read (None: nobody
        listens, read nothing). Call it right before the cycle's batch is
        sent, in the order the batches are sent."""
        if self.cursor is None:
            return None
        gaps = self._gaps()
        for taken in self._reading.values():
            gaps = _minus(gaps, taken)
        picked: list[tuple[int, int]] = []
        left = TAIL_LIMIT
        for lo, hi in gaps[:GAPS_MAX]:
            if left <= 0:
                break
            hi = min(hi, lo + left)
            picked.append((lo, hi))
            left -= hi - lo
        # with no cycle in flight, everything after the known end was written
        # by somebody else: read it at the head of this cycle
        ticket = Ticket(self._generation, self.top if not self._flight else None, picked)
        self._flight.append(ticket)
        if picked:
            self._reading[ticket] = picked
        return ticket

    def finish(self, ticket: Ticket, spans: Sequence[Span], top: int) -> bool:
        """The cycle of ``ticket`` answered: ``spans`` is what it knows
        (its own events, what it read), ``top`` the highest id it saw.
        True when gaps are left to read (the lanes should cycle soon)."""
        if ticket.generation != self._generation:
            return False
        self._reading.pop(ticket, None)
        for span in spans:
            self._add(span)
        ticket.top = max([top, *(s.hi for s in spans)])
        ticket.done = True
        self._settle()
        if self._held > self._held_max:
            self.start(None)
            self._overflow()
            return False
        return self.wants_read()

    def fail(self, ticket: Ticket) -> None:
        """The cycle of ``ticket`` failed: whatever it may have written is
        read back later, as a gap, and the gaps it was to read go to others."""
        if ticket.generation != self._generation:
            return
        self._reading.pop(ticket, None)
        ticket.done = True
        self._settle()

    def wants_read(self) -> bool:
        """Whether some gap is waiting for a cycle to read it."""
        gaps = self._gaps()
        for taken in self._reading.values():
            gaps = _minus(gaps, taken)
        return bool(gaps)

    # -- inside ----------------------------------------------------------------

    def _add(self, span: Span) -> None:
        if self.cursor is None or span.hi <= self.cursor:
            return
        bisect.insort(self._spans, span, key=lambda s: s.lo)
        self._held += len(span.events)

    def _settle(self) -> None:
        # the end of the table a cycle saw counts once every cycle sent
        # before it answered: until then its events could still be on the way
        while self._flight and self._flight[0].done:
            self.top = max(self.top, self._flight.popleft().top)
        self._flush()

    def _flush(self) -> None:
        cursor = self.cursor
        if cursor is None:
            return
        out: list[FeedEvent] = []
        spans = self._spans
        while spans and spans[0].lo <= cursor:
            span = spans.pop(0)
            self._held -= len(span.events)
            if span.hi <= cursor:
                continue
            out.extend(e for e in span.events if e.id > cursor)
            cursor = span.hi
        self.cursor = cursor
        if out:
            self._deliver(out)

    def _gaps(self) -> list[tuple[int, int]]:
        """Ids above the cursor, up to the known end, that nothing accounts for."""
        if self.cursor is None:
            return []
        out: list[tuple[int, int]] = []
        pos = self.cursor
        for span in self._spans:
            if span.lo > pos:
                out.append((pos, min(span.lo, self.top)))
            pos = max(pos, span.hi)
            if pos >= self.top:
                break
        if pos < self.top:
            out.append((pos, self.top))
        return [(lo, hi) for lo, hi in out if hi > lo]


__all__ = ["GAPS_MAX", "TAIL_LIMIT", "FeedEvent", "Span", "Ticket", "Timeline"]
