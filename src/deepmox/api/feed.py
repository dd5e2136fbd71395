"""The live feed: every job event of the fleet, and this daemon's live
progress, fanned out to websocket clients.

Sources: the supervisor's pull cycles tail ``job_events`` from D1 (the query
rides in the cycle's own batch, so the REST backend spends no extra request)
and hand the rows to :meth:`FeedHub.publish_events`; a ticker publishes the
progress of this daemon's running actors and, every few seconds, statistics.

Frames: a websocket frame carries one or more messages, one JSON object per
line: a client that keeps up gets one frame per message, one that lags gets
what piled up in a single frame (at most ``FRAME_MESSAGES``), so fanning out
to many clients costs one send per client per burst, not per event.

Backpressure: each client has a bounded queue. Publishing never waits: a
client whose queue is full is dropped -- closed with code 1013 ("try again
later") -- and the supervisor goes on at full pace. Tailing runs only while
at least one client is connected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

log = logging.getLogger("deepmox.feed")

#: messages a client may fall behind by before it is dropped
CLIENT_QUEUE = 10_000
STATS_EVERY_S = 2.0
PROGRESS_EVERY_S = 0.5
CLOSE_TRY_AGAIN = 1013
#: messages joined into one frame at most
FRAME_MESSAGES = 500

_encode = msgspec.json.Encoder().encode

EVENT_FIELDS = ("id", "job_id", "kind", "event", "ts", "attempt", "state", "progress", "step",
                "error_class", "detail", "node")


@dataclass(eq=False)
class FeedClient:
    job: str | None
    #: queued frames: one or more messages, one JSON object per line
    send: trio.MemorySendChannel[tuple[bytes, int]]
    receive: trio.MemoryReceiveChannel[tuple[bytes, int]]
    dropped: trio.Event = field(default_factory=trio.Event)
    #: messages queued and not yet sent
    backlog: int = 0


class FeedHub:
    def __init__(self) -> None:
        self.clients: set[FeedClient] = set()
        self.dropped_total = 0
        self.connected_total = 0
        #: the last event id delivered; None while nobody listens
        self.cursor: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.clients)

    def connect(self, job: str | None = None) -> FeedClient:
        # bounded by the backlog count (messages), not by the channel
        send, receive = trio.open_memory_channel[tuple[bytes, int]](math.inf)
        client = FeedClient(job, send, receive)
        self.clients.add(client)
        self.connected_total += 1
        return client

    def disconnect(self, client: FeedClient) -> None:
        self.clients.discard(client)
        client.send.close()
        if not self.clients:
            self.cursor = None

    def _deliver(self, client: FeedClient, data: bytes, count: int = 1) -> None:
        if client.dropped.is_set():
            return
        if client.backlog + count > CLIENT_QUEUE:
            client.dropped.set()
            self.dropped_total += 1
            log.warning("feed client fell behind by %d messages: dropped", CLIENT_QUEUE,
                        extra={"event": "feed_client_dropped"})
            return
        try:
            client.send.send_nowait((data, count))
            client.backlog += count
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def publish(self, message: dict[str, Any], job: str | None = None) -> None:
        """Send ``message`` to every client (watching ``job``, when given); never waits."""
        if not self.clients:
            return
        data = _encode(message)
        for client in list(self.clients):
            if job is None or client.job is None or client.job == job:
                self._deliver(client, data)

    def publish_events(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of the ``tail_events`` query, in order: encoded once, and
        delivered to each client as one frame."""
        lines: list[tuple[str, bytes]] = []
        for row in rows:
            message = dict(zip(EVENT_FIELDS, row, strict=True))
            message["type"] = "event"
            self.cursor = max(self.cursor or 0, int(message["id"]))
            lines.append((message["job_id"], _encode(message)))
        if not lines or not self.clients:
            return
        everything = b"\n".join(data for _, data in lines)
        for client in list(self.clients):
            if client.job is None:
                self._deliver(client, everything, len(lines))
            else:
                mine = [data for job, data in lines if job == client.job]
                if mine:
                    self._deliver(client, b"\n".join(mine), len(mine))

    def send_to(self, client: FeedClient, message: dict[str, Any]) -> None:
        self._deliver(client, _encode(message))


async def ticker(hub: FeedHub, progress: Callable[[], list[dict[str, Any]]],
                 stats: Callable[[], Any]) -> None:
    """Publish live progress often, and statistics every few seconds, while
    anybody listens."""
    next_stats = trio.current_time()
    while True:
        await trio.sleep(PROGRESS_EVERY_S)
        if not hub.active:
            continue
        for message in progress():
            hub.publish(message, job=message["job_id"])
        if trio.current_time() >= next_stats:
            next_stats = trio.current_time() + STATS_EVERY_S
            hub.publish({"type": "stats", **(await stats())})


async def serve_client(hub: FeedHub, client: FeedClient, snapshot: dict[str, Any],
                       send_text: Callable[[bytes], Any],
                       close: Callable[[int, str], Any]) -> None:
    """Deliver ``snapshot`` then the client's queue through ``send_text``
    until it disconnects or is dropped (then ``close(1013, ...)``)."""
    try:
        await send_text(_encode(snapshot))
        async with trio.open_nursery() as nursery:
            async def watch_drop() -> None:
                await client.dropped.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_drop)
            async for data, count in client.receive:
                frame, sent = [data], count
                while sent < FRAME_MESSAGES:
                    try:
                        more, n = client.receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    frame.append(more)
                    sent += n
                await send_text(b"\n".join(frame))
                client.backlog -= sent
            nursery.cancel_scope.cancel()
        if client.dropped.is_set():
            with trio.move_on_after(1):
                await close(CLOSE_TRY_AGAIN, "fell behind the feed")
    finally:
        hub.disconnect(client)


async def asgi_feed(scope: dict[str, Any], receive: Callable[[], Any],
                    send: Callable[[dict[str, Any]], Any], *, hub: FeedHub,
                    snapshot: Callable[[str | None], Any],
                    last_event_id: Callable[[], Any]) -> None:
    """The websocket ``/v1/feed`` (``?job=ID`` to follow one job), as an ASGI
    handler; authorisation is the caller's."""
    first = await receive()
    if first.get("type") != "websocket.connect":
        return
    job = None
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        if name == "job" and value:
            job = value
    await send({"type": "websocket.accept"})
    client = hub.connect(job)
    try:
        if hub.cursor is None:
            hub.cursor = int(await last_event_id())
        snap = await snapshot(job)
    except BaseException:
        hub.disconnect(client)
        raise

    async def send_text(data: bytes) -> None:
        await send({"type": "websocket.send", "text": data.decode()})

    async def close(code: int, reason: str) -> None:
        await send({"type": "websocket.close", "code": code, "reason": reason})

    async with trio.open_nursery() as nursery:
        async def read_until_gone() -> None:
            while True:
                message = await receive()
                if message.get("type") == "websocket.disconnect":
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(read_until_gone)
        await serve_client(hub, client, {"type": "snapshot", **snap}, send_text, close)
        nursery.cancel_scope.cancel()
