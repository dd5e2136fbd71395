"""The live feed: every job event of the fleet, and this daemon's live
progress, fanned out to websocket clients.

Sources: the supervisor's pull cycles hand the hub's :class:`Timeline` the
events they wrote themselves (known without reading them back) and those of
everybody else, read back from ``job_events`` in the cycles' own batches (so
the REST backend spends no extra request); the timeline delivers them in id
order, each once. A ticker publishes the progress of this daemon's running
actors and, every few seconds, statistics.

Frames: a websocket text frame carries one or more messages, one JSON object
per line, and at most ``FRAME_CHARS`` of them. Every message is encoded once,
and the frames of a burst are built once and shared by every client that
follows the whole fleet (only ``?job=`` clients get frames of their own); a
client that lags sends what piled up joined into as few frames as the limit
allows, so fanning out costs one send per client per burst, not per event.

Priority: the feed is an observer and must not slow the work it shows.
Clients wait at a gate before each send; :meth:`FeedHub.run` opens it for a
few of them (about ``GAP_SEND_S`` worth of sends) whenever the event loop has
nothing else to run (trio's ``wait_all_tasks_blocked``), and at the
latest every ``SEND_DEFER_MAX_S``. While the supervisor has a pull cycle in
flight (``busy``), sends take the GIL and the CPU from its database thread,
so then the feed gets at most ``BUSY_SHARE`` of the time (a token bucket
charged with the sends' measured durations). An idle daemon sends at once; a
saturated one shows a burst of work a little late rather than running it
slower, and a client that falls too far behind is dropped (below).

Backpressure: each client has a bounded backlog (``[server] feed_backlog``
messages). Publishing never waits: a client whose backlog would overflow is
dropped -- closed with code 1013 ("try again later") -- and the supervisor
goes on at full pace. Frames are shared, so a lagging client costs little
memory of its own. Tailing runs only while at least one client is connected.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

# trio.testing's wait_all_tasks_blocked, from where trio.testing takes it:
# importing trio.testing itself would load pytest into the daemon (7 MB, 80 ms)
from trio._core._generated_run import wait_all_tasks_blocked

from ..config import FEED_BACKLOG
from ..supervisor.timeline import FeedEvent, Timeline

log = logging.getLogger("deepmox.feed")

STATS_EVERY_S = 2.0
PROGRESS_EVERY_S = 0.5
CLOSE_TRY_AGAIN = 1013
#: characters of messages in one frame at most (one bigger message goes alone);
#: frames much larger than this cost wsproto and the kernel far more per byte
FRAME_CHARS = 64 * 1024
#: how long clients may wait for the event loop to be idle before some send anyway
SEND_DEFER_MAX_S = 0.25
#: how much sending one idle gap lets through (the gate admits that many
#: clients, from the sends' measured duration), and at most how many clients
GAP_SEND_S = 0.001
GAP_CLIENTS_MAX = 32
#: a send's duration counted at most (a send that waits on a slow reader costs no CPU)
SEND_SAMPLE_MAX_S = 0.002
#: the share of time the feed's sends may take while the supervisor is busy,
#: and how much of it may be saved up
BUSY_SHARE = 0.05
BUSY_BURST_S = 0.005
BUSY_RECHECK_S = 0.01

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_encode_lines = _encoder.encode_lines


#: a frame's text and how many messages it carries
Frame = tuple[str, int]
#: a message published and not encoded yet
Message = FeedEvent | dict[str, Any]


def pack(lines: Sequence[str]) -> list[Frame]:
    """``lines`` (one message each) as frames of at most ``FRAME_CHARS``."""
    return pack_text("\n".join(lines)) if lines else []


def pack_text(text: str) -> list[Frame]:
    """``text`` (messages, one per line) cut at line ends into frames of at
    most ``FRAME_CHARS`` (a longer line goes alone)."""
    frames: list[Frame] = []
    start, end = 0, len(text)
    while start < end:
        stop = end
        if end - start > FRAME_CHARS:
            stop = text.rfind("\n", start, start + FRAME_CHARS + 1)
            if stop <= start:  # one line longer than a frame
                stop = text.find("\n", start + FRAME_CHARS)
                stop = end if stop < 0 else stop
        chunk = text[start:stop]
        frames.append((chunk, chunk.count("\n") + 1))
        start = stop + 1
    return frames


@dataclass(eq=False)
class FeedClient:
    job: str | None
    #: frames queued for this client, oldest first (shared with other clients)
    frames: deque[Frame] = field(default_factory=deque)
    #: set when it is this client's turn to send, or it is dropped or disconnected
    ready: trio.Event = field(default_factory=trio.Event)
    #: in the hub's line of clients waiting for a turn
    queued: bool = False
    dropped: trio.Event = field(default_factory=trio.Event)
    #: messages queued and not yet sent
    backlog: int = 0
    closed: bool = False

    def take(self) -> Frame:
        """The queued frames, joined up to ``FRAME_CHARS`` (at least one)."""
        text, count = self.frames.popleft()
        if not self.frames or len(text) + len(self.frames[0][0]) >= FRAME_CHARS:
            return text, count
        parts, size = [text], len(text)
        while self.frames and size + len(self.frames[0][0]) < FRAME_CHARS:
            more, n = self.frames.popleft()
            parts.append(more)
            size += len(more) + 1
            count += n
        return "\n".join(parts), count


class FeedHub:
    def __init__(self, backlog: int = FEED_BACKLOG,
                 busy: Callable[[], bool] = lambda: False) -> None:
        """``busy``: whether the daemon's own work is in flight right now (a
        pull cycle waiting on the database), when sends are rationed."""
        #: messages a client may fall behind by before it is dropped
        self.backlog = backlog
        self.busy = busy
        self.clients: set[FeedClient] = set()
        self.dropped_total = 0
        self.connected_total = 0
        #: the events of the fleet in order, delivered here
        self.timeline = Timeline(self._publish_in_order, held_max=backlog,
                                 overflow=self._drop_everybody)
        #: messages published since the last flush, with the job of each
        self._pending: list[tuple[str | None, Message]] = []
        #: clients with frames to send, in line for a turn, and news of the first
        self._line: deque[FeedClient] = deque()
        self._arrived = trio.Event()
        #: a send's duration, a moving average
        self._send_s = 0.0001
        #: seconds of sending the feed may still spend while the daemon is busy
        self._tokens = BUSY_BURST_S
        self._charged = False

    @property
    def active(self) -> bool:
        return bool(self.clients)

    @property
    def cursor(self) -> int | None:
        """The last event id delivered; None while nobody listens."""
        return self.timeline.cursor

    @cursor.setter
    def cursor(self, event_id: int | None) -> None:
        """Deliver the events after ``event_id`` from now on."""
        self.timeline.start(event_id)

    def connect(self, job: str | None = None) -> FeedClient:
        client = FeedClient(job)
        self.clients.add(client)
        self.connected_total += 1
        return client

    def disconnect(self, client: FeedClient) -> None:
        self.clients.discard(client)
        client.closed = True
        client.frames.clear()
        client.ready.set()
        if not self.clients:
            self.timeline.start(None)
            self._pending.clear()

    def _deliver(self, client: FeedClient, frames: Sequence[Frame], count: int) -> None:
        """Queue ``frames`` (``count`` messages in all) for ``client``, or
        drop it when that is more than it may lag by."""
        if client.dropped.is_set() or client.closed:
            return
        if client.backlog + count > self.backlog:
            self._drop(client)
            return
        client.frames.extend(frames)
        client.backlog += count
        self.enlist(client)

    def _drop(self, client: FeedClient) -> None:
        client.dropped.set()
        client.frames.clear()
        client.ready.set()
        self.dropped_total += 1
        log.warning("feed client fell behind by %d messages: dropped", self.backlog,
                    extra={"event": "feed_client_dropped"})

    def _drop_everybody(self) -> None:
        """More events wait for an earlier one than any client may lag by
        (events the daemon cannot read back fast enough): everybody is
        that far behind."""
        self._pending.clear()
        for client in list(self.clients):
            if not (client.dropped.is_set() or client.closed):
                self._drop(client)

    def publish(self, message: dict[str, Any], job: str | None = None) -> None:
        """Send ``message`` to every client (watching ``job``, when given); never waits."""
        self.publish_many([(job, message)])

    def publish_many(self, messages: Sequence[tuple[str | None, dict[str, Any]]]) -> None:
        """Send each ``(job, message)`` to every client (watching ``job``, when
        it is not None), in order, after what was published before. Only
        queued here: the gate (:meth:`run`) encodes what piled up, once for
        every client, when it lets clients send."""
        if self.clients and messages:
            self._queue(messages)

    def publish_events(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of the ``tail_events`` query that are the next events in
        order, as ``event`` messages, queued for every client at once; the
        cursor moves past them."""
        events = [FeedEvent(*row) for row in rows]
        if not events:
            return
        if self.timeline.cursor is None:
            self.timeline.start(0)
        self._publish_in_order(events)
        self.timeline.skip_to(events[-1].id)
        self.flush()

    def _publish_in_order(self, events: Sequence[FeedEvent]) -> None:
        if self.clients:
            self._queue([(e.job_id, e) for e in events])

    def _queue(self, messages: Iterable[tuple[str | None, Message]]) -> None:
        self._pending.extend(messages)
        self._arrived.set()
        if len(self._pending) > self.backlog:
            self.flush()  # more than any client may lag by: drop them now

    def flush(self) -> None:
        """Encode what was published since the last flush (in one go: one
        JSON object per line is the frames' format) and queue its frames for
        the clients: the same frames for every client of the whole fleet."""
        pending, self._pending = self._pending, []
        if not pending or not self.clients:
            return
        text = _encode_lines([m for _, m in pending]).decode()[:-1]
        everything = pack_text(text)
        total = len(pending)
        lines: list[str] | None = None
        for client in list(self.clients):
            if client.job is None:
                self._deliver(client, everything, total)
                continue
            if lines is None:  # JSON text holds no raw newline: one message a line
                lines = text.split("\n")
            mine = [line for (job, _), line in zip(pending, lines, strict=True)
                    if job is None or job == client.job]
            if mine:
                self._deliver(client, pack(mine), len(mine))

    def enlist(self, client: FeedClient) -> None:
        """Put ``client`` in line for a turn to send (once)."""
        if not client.queued:
            client.queued = True
            self._line.append(client)
            self._arrived.set()

    def _admit(self, count: int) -> None:
        while count > 0 and self._line:
            client = self._line.popleft()
            client.queued = False
            if client.frames and not client.closed:
                client.ready.set()
                count -= 1

    def sent(self, seconds: float) -> None:
        """A send took ``seconds``: the gate's measure of how many fit in a
        gap, and the busy share's bill."""
        seconds = min(seconds, SEND_SAMPLE_MAX_S)
        self._send_s += 0.1 * (seconds - self._send_s)
        if self._charged:
            self._tokens = max(self._tokens - seconds, -BUSY_BURST_S)

    async def run(self) -> None:
        """The gate: whenever the event loop is idle (or ``SEND_DEFER_MAX_S``
        has passed), let about ``GAP_SEND_S`` of waiting clients' sends through;
        while the daemon is busy, only as far as ``BUSY_SHARE`` allows. Runs in
        the daemon's nursery; clients wait forever without it."""
        last = trio.current_time()
        while True:
            while not self._line and not self._pending:
                self._arrived = trio.Event()
                await self._arrived.wait()
            with trio.move_on_after(SEND_DEFER_MAX_S):
                await wait_all_tasks_blocked()
            now = trio.current_time()
            self._tokens = min(BUSY_BURST_S, self._tokens + (now - last) * BUSY_SHARE)
            last = now
            self._charged = self.busy()
            if self._charged and self._tokens < 0:
                # earned back at BUSY_SHARE; looked at again soon, in case the
                # daemon went idle meanwhile (then sends are not rationed)
                await trio.sleep(min(-self._tokens / BUSY_SHARE, BUSY_RECHECK_S))
                continue
            if self._pending:
                began = time.perf_counter()
                self.flush()
                if self._charged:
                    self._tokens -= time.perf_counter() - began
            admit = max(1, min(GAP_CLIENTS_MAX, int(GAP_SEND_S / self._send_s)))
            self._admit(admit)
            # the admitted clients run (and send) before the next gap is looked for
            await trio.lowlevel.cancel_shielded_checkpoint()


async def ticker(hub: FeedHub, progress: Callable[[], list[dict[str, Any]]],
                 stats: Callable[[], Any]) -> None:
    """Publish live progress often, and statistics every few seconds, while
    anybody listens."""
    next_stats = trio.current_time()
    while True:
        await trio.sleep(PROGRESS_EVERY_S)
        if not hub.active:
            continue
        hub.publish_many([(m["job_id"], m) for m in progress()])
        if trio.current_time() >= next_stats:
            next_stats = trio.current_time() + STATS_EVERY_S
            hub.publish({"type": "stats", **(await stats())})


async def serve_client(hub: FeedHub, client: FeedClient, snapshot: dict[str, Any],
                       send_text: Callable[[str], Any],
                       close: Callable[[int, str], Any]) -> None:
    """Deliver ``snapshot`` then the client's frames through ``send_text``
    until it disconnects or is dropped (then ``close(1013, ...)``)."""
    try:
        await send_text(_encode(snapshot).decode())
        while not (client.closed or client.dropped.is_set()):
            # woken when the gate gives this client its turn (it is in line
            # whenever it has frames), or when it is dropped or disconnected
            client.ready = trio.Event()
            if client.frames:
                hub.enlist(client)
            await client.ready.wait()
            if client.closed or client.dropped.is_set() or not client.frames:
                continue
            text, count = client.take()
            # the frame is this client's now: a drop meanwhile clears only the rest
            began = time.perf_counter()
            await send_text(text)
            hub.sent(time.perf_counter() - began)
            client.backlog -= count
        if client.dropped.is_set() and not client.closed:
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
            start = int(await last_event_id())
            if hub.cursor is None:  # not set by a client that connected meanwhile
                hub.cursor = start
        snap = await snapshot(job)
    except BaseException:
        hub.disconnect(client)
        raise

    async def send_text(text: str) -> None:
        await send({"type": "websocket.send", "text": text})

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
