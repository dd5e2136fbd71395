"""The feed's fan-out (``deepmox.api.feed``) without a network: frames,
sharing, the backlog bound, and the gate that lets clients send.

Rules: the hub runs its gate in a nursery on the autojump clock; clients are
``serve_client`` with a ``send_text`` that records what it was given. No
wall-clock waits: tests wait on what the fake client received.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from trio.testing import MockClock

from deepmox.api.feed import FRAME_CHARS, FeedHub, pack, serve_client


def event_row(i: int, job: str = "j") -> list[Any]:
    return [i, job, "noop", "claimed", 1_800_000_000.0 + i, 1, "in_progress", 0.0, None, None,
            None, "n"]


class FakeSocket:
    """What ``serve_client`` sends, decoded; ``pause`` blocks the next send."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.pause: trio.Event | None = None
        self.changed = trio.Event()

    async def send_text(self, text: str) -> None:
        if self.pause is not None:
            await self.pause.wait()
        self.frames.append(text)
        self.changed.set()
        self.changed = trio.Event()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.changed.set()

    def messages(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for f in self.frames for line in f.splitlines()]

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The messages once at least ``count`` arrived (the snapshot included)."""
        while len(self.messages()) < count:
            await self.changed.wait()
        return self.messages()


def test_pack_cuts_frames_at_the_limit_and_keeps_every_line() -> None:
    line = "x" * 1000
    frames = pack([line] * 200)
    assert sum(n for _, n in frames) == 200
    assert all(len(text) <= FRAME_CHARS for text, _ in frames)
    assert [text.split("\n") for text, _ in frames] == [[line] * n for _, n in frames]
    huge = "y" * (FRAME_CHARS + 1)
    assert pack(["a", huge, "b"]) == [("a", 1), (huge, 1), ("b", 1)]


async def test_events_reach_every_client_in_order_and_frames_are_shared(
        autojump_clock: MockClock) -> None:
    hub = FeedHub()
    a, b, mine = FakeSocket(), FakeSocket(), FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        clients = [hub.connect(), hub.connect(), hub.connect("j2")]
        for client, sock in zip(clients, (a, b, mine), strict=True):
            nursery.start_soon(serve_client, hub, client, {"type": "snapshot"}, sock.send_text,
                               sock.close)
        hub.publish_events([event_row(1), event_row(2, "j2"), event_row(3)])
        assert clients[0].frames[0] is clients[1].frames[0], "one frame for both"
        got_a, got_b = await a.wait_for(4), await b.wait_for(4)
        got_mine = await mine.wait_for(2)
        assert hub.cursor == 3
        nursery.cancel_scope.cancel()
    assert [m["type"] for m in got_a] == ["snapshot", "event", "event", "event"]
    assert [m["id"] for m in got_a[1:]] == [1, 2, 3]
    assert got_a == got_b
    assert [(m["id"], m["job_id"]) for m in got_mine[1:]] == [(2, "j2")]
    assert set(got_a[1]) == {"type", "id", "job_id", "kind", "event", "ts", "attempt", "state",
                             "progress", "step", "error_class", "detail", "node"}
    assert hub.cursor is None, "nobody listens any more"


async def test_a_lagging_client_gets_what_piled_up_in_few_frames(
        autojump_clock: MockClock) -> None:
    hub = FeedHub()
    sock = FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        client = hub.connect()
        sock.pause = trio.Event()
        nursery.start_soon(serve_client, hub, client, {"type": "snapshot"}, sock.send_text,
                           sock.close)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 101):  # a hundred cycles' worth, one event each
            hub.publish_events([event_row(i)])
        sock.pause.set()
        got = await sock.wait_for(101)
        nursery.cancel_scope.cancel()
    assert [m["id"] for m in got[1:]] == list(range(1, 101))
    assert len(sock.frames) <= 3, "the snapshot, then what piled up joined"
    assert client.backlog == 0


async def test_a_client_past_its_backlog_is_dropped_and_closed(
        autojump_clock: MockClock) -> None:
    hub = FeedHub(backlog=50)
    stalled, reader = FakeSocket(), FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        slow, fast = hub.connect(), hub.connect()
        stalled.pause = trio.Event()
        nursery.start_soon(serve_client, hub, slow, {"type": "snapshot"}, stalled.send_text,
                           stalled.close)
        nursery.start_soon(serve_client, hub, fast, {"type": "snapshot"}, reader.send_text,
                           reader.close)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 61):
            hub.publish_events([event_row(i)])
            await trio.sleep(0.01)  # the reader keeps up, the stalled one cannot
        assert slow.dropped.is_set()
        assert not fast.dropped.is_set()
        assert hub.dropped_total == 1
        assert not slow.frames, "a dropped client holds no frames"
        stalled.pause.set()  # its pending send completes; then it is closed
        with trio.fail_after(5):
            while stalled.closed is None:
                await stalled.changed.wait()
        got = await reader.wait_for(61)
        nursery.cancel_scope.cancel()
    assert stalled.closed == (1013, "fell behind the feed")
    assert [m["id"] for m in got[1:]] == list(range(1, 61))
    assert slow not in hub.clients


async def test_a_busy_daemon_still_feeds_its_clients(autojump_clock: MockClock) -> None:
    # while a pull cycle is always in flight the feed is rationed, not stopped
    hub = FeedHub(busy=lambda: True)
    sock = FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        client = hub.connect()
        nursery.start_soon(serve_client, hub, client, {"type": "snapshot"}, sock.send_text,
                           sock.close)
        for i in range(1, 21):
            hub.publish_events([event_row(i)])
            got = await sock.wait_for(i + 1)
        nursery.cancel_scope.cancel()
    assert [m["id"] for m in got[1:]] == list(range(1, 21))


async def test_progress_batches_are_one_frame_for_the_fleet_and_filtered_per_job(
        autojump_clock: MockClock) -> None:
    hub = FeedHub()
    fleet, one = FakeSocket(), FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        everyone, watcher = hub.connect(), hub.connect("j7")
        for client, sock in ((everyone, fleet), (watcher, one)):
            nursery.start_soon(serve_client, hub, client, {"type": "snapshot"}, sock.send_text,
                               sock.close)
        hub.publish_many([(f"j{i}", {"type": "progress", "job_id": f"j{i}", "progress": 0.5})
                          for i in range(10)] + [(None, {"type": "stats", "running": 10})])
        got = await fleet.wait_for(12)
        mine = await one.wait_for(3)
        nursery.cancel_scope.cancel()
    assert len(fleet.frames) == 2, "the snapshot, then one frame"
    assert [m.get("job_id") for m in mine[1:]] == ["j7", None]
    assert got[-1]["type"] == "stats"


def test_the_daemon_does_not_load_test_tooling() -> None:
    # trio.testing imports pytest; the feed takes wait_all_tasks_blocked from
    # trio's core instead, so a daemon stays lean
    import subprocess
    import sys

    code = ("import sys, deepmox.daemon; "
            "print(sorted(m for m in ('pytest', 'trio.testing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
