"""The feed's timeline (``deepmox.supervisor.timeline``): the fleet's events
in id order, each once, from what pull cycles wrote themselves and what they
read back.

Rules: the first tests drive a :class:`Timeline` by hand, cycle by cycle, as
the lanes do (``begin`` before a batch goes out, ``finish`` or ``fail`` with
its answer). The others run supervisors on a real SQLite file on the
autojump clock (as in test_supervisor.py) with a feed hub attached, and
compare what the feed delivered with the ``job_events`` table itself: the
same rows, field for field, in id order, none twice, none missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio
from trio.testing import MockClock

from deepmox.api.feed import FeedClient, FeedHub
from deepmox.bindings.d1 import Result, SqliteD1, Statement
from deepmox.bindings.d1.queries import Q
from deepmox.errors import D1UnavailableError
from deepmox.jobs import new_id
from deepmox.supervisor import Supervisor
from deepmox.supervisor.timeline import TAIL_LIMIT, FeedEvent, Span, Ticket, Timeline
from tests.helpers import ReadBackCounter
from tests.unit.conftest import wall

MakeHarness = Callable[..., Any]


def ev(i: int, job: str = "j") -> FeedEvent:
    return FeedEvent(i, job, "noop", "claimed", 1_800_000_000.0 + i, 1, "in_progress", 0.0,
                     None, None, None, "n")


def span(lo: int, hi: int, ids: Sequence[int] | None = None) -> Span:
    """Every event in ``(lo, hi]`` (or only ``ids`` of them: the rest do not exist)."""
    return Span(lo, hi, [ev(i) for i in (ids if ids is not None else range(lo + 1, hi + 1))])


class Delivered:
    def __init__(self) -> None:
        self.ids: list[int] = []

    def __call__(self, events: list[FeedEvent]) -> None:
        self.ids += [e.id for e in events]


def timeline(cursor: int = 0) -> tuple[Timeline, Delivered]:
    got = Delivered()
    t = Timeline(got)
    t.start(cursor)
    return t, got


def begin(t: Timeline) -> Ticket:
    ticket = t.begin()
    assert ticket is not None, "somebody listens: the cycle has a ticket"
    return ticket


# -- the timeline by hand --------------------------------------------------------


def test_own_events_and_read_back_ones_are_delivered_in_id_order() -> None:
    t, got = timeline()
    a = begin(t)
    assert a.tail_after == 0, "nothing in flight: it reads everything after the end"
    # the tail at the head of a found 1..2 (somebody else's); a wrote 3..5
    assert t.finish(a, [span(0, 2), span(2, 5)], top=5) is False
    assert got.ids == [1, 2, 3, 4, 5]
    b = begin(t)
    assert (b.tail_after, b.gaps) == (5, [])
    t.finish(b, [span(5, 7), span(7, 9)], top=9)
    assert got.ids == list(range(1, 10))
    assert t.cursor == 9


def test_a_gap_between_two_cycles_is_read_back_by_a_later_one() -> None:
    t, got = timeline()
    a, b = begin(t), begin(t)
    assert b.tail_after is None, "a cycle in flight: its events must not be read back"
    t.finish(a, [span(0, 3)], top=3)
    # somebody else wrote 4..5 between the two cycles; b wrote 6..8
    assert t.finish(b, [span(5, 8)], top=8) is True, "a gap is left to read"
    assert got.ids == [1, 2, 3]
    c = begin(t)
    assert c.gaps == [(3, 5)]
    assert not begin(t).gaps, "one cycle reads a gap, not two"
    assert not t.wants_read()
    t.finish(c, [span(3, 5)], top=8)
    assert got.ids == list(range(1, 9))


def test_a_cycle_answering_first_waits_for_the_one_sent_before_it() -> None:
    # SQLite commits batches in the order they were sent: while a (sent
    # first) is in flight, b's events are not a gap to read back
    t, got = timeline()
    a, b = begin(t), begin(t)
    assert t.finish(b, [span(4, 6)], top=6) is False, "a's events are not a gap"
    assert got.ids == []
    assert not begin(t).gaps
    t.finish(a, [span(0, 4)], top=4)
    assert got.ids == [1, 2, 3, 4, 5, 6]


def test_the_events_of_a_failed_cycle_are_read_back() -> None:
    # a lost answer: the cycle may have committed; its events are read back
    # by id (the acks the next cycle sends again write nothing again)
    t, got = timeline()
    a, b = begin(t), begin(t)
    t.fail(a)
    assert t.finish(b, [span(3, 5)], top=5) is True
    c = begin(t)
    assert (c.gaps, c.tail_after) == ([(0, 3)], 5)
    t.finish(c, [span(0, 3)], top=5)
    assert got.ids == [1, 2, 3, 4, 5]
    assert not t.wants_read()


def test_an_event_known_twice_is_delivered_once() -> None:
    t, got = timeline()
    a, b = begin(t), begin(t)
    t.fail(a)  # ... but it committed 1..4
    t.finish(b, [], top=4)
    c = begin(t)
    assert c.gaps == [(0, 4)]
    # the read, and an account of 3..5 that overlaps it
    t.finish(c, [span(0, 4), span(2, 5)], top=5)
    assert got.ids == [1, 2, 3, 4, 5]


def test_ids_that_do_not_exist_are_skipped() -> None:
    t, got = timeline()
    t.finish(begin(t), [], top=10)
    b = begin(t)
    assert b.gaps == [(0, 10)]
    t.finish(b, [span(0, 10, ids=[2, 7])], top=10)
    assert got.ids == [2, 7]
    assert t.cursor == 10


def test_a_cycle_reads_a_bounded_range() -> None:
    t, got = timeline()
    t.finish(begin(t), [], top=3 * TAIL_LIMIT)
    b, c = begin(t), begin(t)
    assert b.gaps == [(0, TAIL_LIMIT)]
    assert c.gaps == [(TAIL_LIMIT, 2 * TAIL_LIMIT)], "the next range, by the next cycle"
    assert t.finish(c, [span(TAIL_LIMIT, 2 * TAIL_LIMIT, ids=[])], top=3 * TAIL_LIMIT)
    assert t.finish(b, [span(0, TAIL_LIMIT, ids=[1])], top=3 * TAIL_LIMIT) is True
    assert got.ids == [1]
    assert t.cursor == 2 * TAIL_LIMIT


def test_a_restart_forgets_the_cycles_in_flight() -> None:
    t, got = timeline()
    a = begin(t)
    t.start(None)
    assert t.begin() is None, "nobody listens: read nothing"
    t.start(100)
    assert t.finish(a, [span(0, 200)], top=200) is False, "a's answer is of before"
    assert got.ids == []
    assert begin(t).tail_after == 100


def test_too_much_waiting_behind_a_gap_stops_the_timeline() -> None:
    got = Delivered()
    overflowed: list[bool] = []
    t = Timeline(got, held_max=3, overflow=lambda: overflowed.append(True))
    t.start(0)
    a, b = begin(t), begin(t)
    t.finish(b, [span(1, 3)], top=3)
    assert not overflowed, "two events wait for a's"
    t.finish(a, [], top=1)  # a wrote nothing: 1 is somebody else's, a gap
    c = begin(t)
    assert c.gaps == [(0, 1)]
    t.finish(c, [span(5, 8)], top=8)  # and more waits, while 1 is read
    assert overflowed == [True]
    assert t.cursor is None
    assert t.begin() is None
    assert got.ids == []


# -- supervisors on a real database ------------------------------------------------


def listen(sup: Supervisor) -> tuple[FeedHub, FeedClient]:
    hub = FeedHub()
    sup.attach_feed(hub)
    client = hub.connect()
    hub.cursor = 0
    return hub, client


def received(hub: FeedHub, client: FeedClient) -> list[dict[str, Any]]:
    """What the client was sent since the last call (as the gate would)."""
    hub.flush()
    out: list[dict[str, Any]] = []
    while client.frames:
        text, _ = client.frames.popleft()
        out += [msgspec.json.decode(line) for line in text.split("\n")]
    return out


async def table(d1: SqliteD1) -> list[dict[str, Any]]:
    """``job_events`` as feed messages."""
    rows = (await d1.execute(Q["tail_events"], 0, 1_000_000)).rows
    return [msgspec.to_builtins(FeedEvent(*row)) for row in rows]


class ReadBack(ReadBackCounter):
    """Counts the event rows cycles read back, and can lose the answer of
    the next cycle that acknowledges something (it commits)."""

    def __init__(self, inner: SqliteD1) -> None:
        super().__init__(inner)
        self.lose_next_ack = False
        self.lost = 0

    async def batch(self, statements: Sequence[Statement]) -> list[Result]:
        results = await super().batch(statements)
        if self.lose_next_ack and any(s.sql == Q["complete_events"] for s in statements):
            self.lose_next_ack = False
            self.lost += 1
            raise D1UnavailableError("the answer was lost")
        return results


def follower(h: Any) -> tuple[ReadBack, Supervisor, FeedHub, FeedClient]:
    """Daemon "a" on the harness's database, through a :class:`ReadBack`, with
    one feed client following the fleet from the first event."""
    d1 = ReadBack(SqliteD1(h.path, in_thread=False))
    sup = Supervisor(h.cfg, d1, h.registry, node="a", wall=odd_wall)  # type: ignore[arg-type]
    hub, client = listen(sup)
    return d1, sup, hub, client


def odd_wall() -> float:
    """The virtual wall clock with digits to the last place (times on the
    autojump clock are round, and print the same whoever formats them)."""
    return wall() + 0.123456789


async def drain(h: Any, sup: Supervisor, ids: Sequence[str]) -> None:
    for job_id in ids:
        await h.wait_state(sup, job_id, "completed", "failed")
    for _ in range(5):  # what the last cycles left to read back
        await sup.wait_cycle()


async def test_a_lone_daemon_reads_back_only_what_others_wrote(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # one lane: its cycles are in order, and it knows all it wrote itself
    async with make_harness("[supervisor]\nmax_actors = 1\n") as h:
        d1, sup, hub, client = follower(h)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ids = [(await h.submit("sleep", {"seconds": 0.5, "steps": 2})).id
                   for _ in range(5)]
            await drain(h, sup, ids)
            got = received(hub, client)
            sup.stop()
        await d1.aclose()
        events = await table(h.d1)
        assert got == events
        assert [e["event"] for e in got if e["job_id"] == ids[0]] == [
            "submitted", "claimed", "step_completed", "completed"]
        assert d1.rows == 5, "only the client's submissions were read back"


async def test_own_and_fleet_events_interleave_in_commit_order(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # a follows the feed; b is another daemon on the same database; a client
    # submits; one job's row is broken (its payload does not decode: it
    # fails before any step, an event a cannot know without reading it)
    async with make_harness("[supervisor]\nmax_actors = 4\n") as h:
        d1, a, hub, client = follower(h)
        broken = new_id(wall())
        await h.d1.execute(Q["insert_job"], broken, "noop", '{"bogus": 1}', 0, wall(), 3,
                           None, wall(), wall())
        async with h.supervisor("b") as b, trio.open_nursery() as nursery:
            await nursery.start(a.run)
            ids = [broken]
            for _ in range(6):
                ids += [(await h.submit("sleep", {"seconds": 0.3, "steps": 3})).id
                        for _ in range(4)]
                await trio.sleep(0.2)
            await drain(h, a, ids)
            got = received(hub, client)
            a.stop()
            assert b.statistics().completed > 0, "both daemons ran some"
            assert a.statistics().completed > 0
        await d1.aclose()
        events = await table(h.d1)
        assert got == events, "every event, once, in id order, as the table has it"
        assert {e["node"] for e in got} >= {"a", "b", "test"}
        assert [e["event"] for e in got if e["job_id"] == broken] == ["claimed", "failed"]
        assert d1.rows < len(events)


async def test_none_missing_or_twice_across_a_lost_answer(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness("[supervisor]\nmax_actors = 1\n") as h:
        d1, sup, hub, client = follower(h)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            first = (await h.submit("noop")).id
            await drain(h, sup, [first])
            d1.lose_next_ack = True
            ids = [(await h.submit("noop")).id for _ in range(3)]
            await drain(h, sup, ids)
            got = received(hub, client)
            sup.stop()
        await d1.aclose()
        assert d1.lost == 1
        assert sup.statistics().failed_cycles == 1
        events = await table(h.d1)
        assert got == events
        assert sorted(e["id"] for e in got) == [e["id"] for e in got]
        assert [e["event"] for e in got if e["job_id"] == ids[0]] == [
            "submitted", "claimed", "completed"]
