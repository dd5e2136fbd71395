"""Local submissions that ride a pull cycle (``Supervisor.submit_batch``).

Rules: as in test_supervisor.py -- a real SQLite file on the event loop's
thread, the autojump clock, no wall-clock waits. A daemon's own client (the
HTTP API) submits through ``submit_batch``; these tests use a client built
the same way on the supervisor's connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from deepmox.bindings.d1 import Result, SqliteD1, Statement
from deepmox.client import Client, JobSpec
from deepmox.errors import D1UnavailableError
from deepmox.supervisor import Supervisor
from tests.helpers import D1Wrapper
from tests.unit.conftest import wall

MakeHarness = Callable[..., Any]


def riding_client(h: Any, sup: Supervisor) -> Client:
    return Client(h.cfg, sup.d1, h.registry, wall=wall, node="a", on_submit=sup.wake,
                  submit_batch=sup.submit_batch)


def spec(kind: str, payload: dict[str, Any] | None = None, **extra: Any) -> JobSpec:
    return msgspec.convert({"kind": kind, "payload": payload or {}, **extra}, JobSpec)


async def test_a_riding_submission_is_claimed_in_its_own_transaction(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness("[kinds.sleep]\nbudget_s = 30") as h, h.supervisor() as sup:
        client = riding_client(h, sup)
        await trio.sleep(5)  # the lanes idle
        before = sup.d1.statistics().requests
        job, created = await client.submit(spec("sleep", {"seconds": 10}))
        requests = sup.d1.statistics().requests - before
        row = await h.job(job.id)
        assert created
        assert job.state == "pending", "the answer shows the job as submitted"
        assert (row.state, row.attempt) == ("in_progress", 1)
        assert requests == 1, "submission and claim are one transaction"
        assert await h.types(job.id) == ["submitted", "claimed"]
        done = await h.wait_state(sup, job.id, "completed")
        assert done.attempt == 1


async def test_a_rider_never_jumps_the_queue(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # two lanes of one slot each; one slot is taken, so the cycle the rider
    # rides has one free slot: the claim takes the higher-priority job that was
    # already waiting, and the rider's job waits its turn.
    toml = ("[supervisor]\nmax_actors = 2\npoll_max_s = 60\n"
            "[kinds.sleep]\nbudget_s = 30\nmax_attempts = 1")
    async with make_harness(toml) as h, h.supervisor() as sup:
        client = riding_client(h, sup)
        busy, _ = await client.submit(spec("sleep", {"seconds": 20}))
        await trio.sleep(1)
        assert (await h.job(busy.id)).state == "in_progress"
        # inserted behind the supervisor's back: no wake-up, and the lanes
        # poll only every 60 s by now
        waiting = await h.submit("sleep", {"seconds": 1}, priority=5)
        mine, _ = await client.submit(spec("sleep", {"seconds": 1}))
        assert (await h.job(waiting.id)).state == "in_progress"
        assert (await h.job(mine.id)).state == "pending"
        for job in (busy, waiting, mine):
            assert (await h.wait_state(sup, job.id, "completed")).state == "completed"


async def test_a_draining_supervisor_takes_submissions_without_claiming(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h, h.supervisor() as sup:
        client = riding_client(h, sup)
        sup.stop()
        job, created = await client.submit(spec("noop"))
        assert created
        assert (await h.job(job.id)).state == "pending"
        assert await h.types(job.id) == ["submitted"]


class _FailRiders(D1Wrapper):
    """A D1 whose batches fail while ``failing`` is set (nothing commits)."""

    def __init__(self, inner: SqliteD1) -> None:
        super().__init__(inner)
        self.failing = False

    async def batch(self, statements: Sequence[Statement]) -> list[Result]:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise D1UnavailableError("sqlite: database is locked")
        return await super().batch(statements)


async def test_a_failed_cycle_fails_its_riders_and_nothing_is_written(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        d1 = _FailRiders(SqliteD1(h.path, in_thread=False))
        sup = Supervisor(h.cfg, d1, h.registry, node="a", wall=wall)  # type: ignore[arg-type]
        client = riding_client(h, sup)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            d1.failing = True
            with pytest.raises(D1UnavailableError, match="locked"):
                await client.submit(spec("noop"))
            assert await h.client.list_jobs() == []
            d1.failing = False
            # once the lane's back-off is over, riding works again
            await trio.sleep(1)
            job, _ = await client.submit(spec("noop"))
            assert (await h.wait_state(sup, job.id, "completed")).attempt == 1
            sup.stop()
        await d1.aclose()
        assert sup.statistics().failed_cycles >= 1


async def test_the_feed_tails_every_event_without_waiting_for_an_idle_poll(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # Two lanes, and the lanes poll only every 60 s when idle: an event that a
    # lane commits while the other lane's cycle holds the tail must still
    # reach the feed within a few cycles, not at the next idle poll.
    from deepmox.api.feed import FeedHub

    async with make_harness("[supervisor]\npoll_max_s = 60") as h, h.supervisor() as sup:
        hub = FeedHub()
        sup.attach_feed(hub)
        client = hub.connect()
        hub.cursor = 0
        riding = riding_client(h, sup)
        seen: list[dict[str, Any]] = []
        for _ in range(20):
            job, _ = await riding.submit(spec("noop"))
            await h.wait_state(sup, job.id, "completed")
            done_at = trio.current_time()
            while True:
                hub.flush()  # what the hub's gate does when it lets clients send
                while client.frames:
                    text, _ = client.frames.popleft()
                    seen += [msgspec.json.decode(line) for line in text.split("\n")]
                if any(m["job_id"] == job.id and m["event"] == "completed" for m in seen):
                    break
                with trio.fail_after(30):
                    await sup.wait_cycle()
            assert trio.current_time() - done_at < 1.0
        assert [m["id"] for m in seen] == list(range(1, 61))
