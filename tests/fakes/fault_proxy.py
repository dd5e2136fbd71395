"""A fault-injecting HTTP reverse proxy on loopback, for chaos runs and tests.

It is a test fake, not a product feature, and must not import ``deepmox``. It
is a TCP server under trio that speaks HTTP/1.1 through h11 (the protocol
state machine hypercorn itself is built on: no hand-written HTTP parsing), so
that a fault can hang up at any byte with a TCP reset -- which an ASGI app
cannot do: its server answers 500 for an app that gives up before its status
line. It forwards with an httpx2 client to one upstream: the D1 REST test
fake, moto's S3 server, or (issue 4) the Messages API test fake.

Each request draws a fault with probability ``rate`` (seeded, so a run can be
repeated), one of the enabled :data:`FAULTS` with equal weight; a fault queued
with ``POST /__proxy/next`` comes first. What the faults do:

===============  =============================================================
``error``        answers a 5xx in the upstream's own words (``flavor``); the
                 request is not forwarded
``throttle``     answers 429 with ``retry-after`` (D1: error 971; S3:
                 ``SlowDown``; Messages: ``rate_limit_error``); not forwarded
``overloaded``   D1: "D1 DB is overloaded. Too many requests queued." (500,
                 code 7500); S3: 503 ``SlowDown``; Messages: 529
                 ``overloaded_error``; not forwarded
``latency``      waits ``latency_s``, then forwards as usual
``reset``        forwards (the request takes effect upstream), sends the status
                 line, the headers and half of the body, then resets the
                 connection: the client sees a connection error, never the answer
``cut_upload``   reads no more than the first piece of the request body, then
                 resets the connection without forwarding anything or sending
                 a byte: an upload cut off
``applied``      forwards (the request takes effect), then answers a 5xx as
                 ``error`` does: the answer to a write that did happen is lost
===============  =============================================================

The error bodies of D1 are the D1 fake's own (:data:`d1_server.FAULTS`), so
both fakes speak D1's exact words.

Control (not forwarded, no auth): ``GET /__proxy/stats`` -> ``{"requests",
"forwarded", "faults": {name: n}, "into_throttle", "statuses": {code: n}}``,
where ``into_throttle`` counts requests that arrived while a ``retry-after``
this proxy announced had not yet run out; ``GET /__proxy/log`` -> one
``[wall time, method, path, fault or null]`` per request, in arrival order;
``POST /__proxy/next`` ``{"fault": NAME, "count": N}`` queues faults for the
next N requests (FIFO).

As a process: ``python tests/fakes/fault_proxy.py --upstream URL [--flavor
d1|s3|messages] [--rate 0.1] [--faults error,throttle,...] [--latency-s 0.3]
[--retry-after-s 1] [--seed N] [--port 0]`` prints exactly ``LISTENING
http://127.0.0.1:PORT`` once listening, and exits 0 on SIGTERM or SIGINT.
In process: ``proxy = await serve_proxy(nursery, upstream=...)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx2
import trio

try:
    from .d1_server import FAULTS as D1_FAULTS
except ImportError:  # run as a script: tests/fakes is sys.path[0]
    from d1_server import FAULTS as D1_FAULTS  # type: ignore[no-redef]

__all__ = ["FAULTS", "FLAVORS", "FaultProxy", "main", "serve_proxy"]

FAULTS = ("error", "throttle", "overloaded", "latency", "reset", "cut_upload", "applied")
FLAVORS = ("d1", "s3", "messages")
CONTROL = "/__proxy/"
RECEIVE_BYTES = 65536
#: never forwarded either way: they describe one connection, not the message
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "expect", "content-length",
})


def _s3_error(status: int, code: str, message: str) -> tuple[int, str, bytes]:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>FAULTPROXY0000001</RequestId></Error>")
    return status, "application/xml", body.encode()


def _d1_error(name: str) -> tuple[int, str, bytes]:
    status, _, payload = D1_FAULTS[name]
    if isinstance(payload, str):
        return status, "text/plain", payload.encode()
    return status, "application/json", json.dumps(
        {"result": None, "success": False, "errors": [payload], "messages": []}).encode()


def _messages_error(status: int, kind: str, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(
        {"type": "error", "error": {"type": kind, "message": message},
         "request_id": "req_faultproxy"}).encode()


def error_answer(flavor: str, fault: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of an ``error``/``applied``, ``throttle``
    or ``overloaded`` answer in ``flavor``'s words."""
    if fault == "applied":
        fault = "error"
    if flavor == "d1":
        return _d1_error({"error": "http500", "throttle": "http429",
                          "overloaded": "overloaded"}[fault])
    if flavor == "s3":
        return {
            "error": _s3_error(500, "InternalError",
                               "We encountered an internal error. Please try again."),
            "throttle": _s3_error(429, "TooManyRequests", "Reduce your concurrent request rate"),
            "overloaded": _s3_error(503, "SlowDown", "Please reduce your request rate."),
        }[fault]
    return {
        "error": _messages_error(500, "api_error", "Internal server error"),
        "throttle": _messages_error(429, "rate_limit_error", "Number of requests has exceeded "
                                    "your rate limit"),
        "overloaded": _messages_error(529, "overloaded_error", "Overloaded"),
    }[fault]


@dataclass
class _Stats:
    requests: int = 0
    forwarded: int = 0
    into_throttle: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    log: list[list[Any]] = field(default_factory=list)


class _Hangup(Exception):
    """End this connection now, with a TCP reset."""


class _Proxy:
    """One proxy's state and its connection handler; everything runs on the
    trio thread."""

    def __init__(self, *, upstream: str, flavor: str, rate: float, faults: Sequence[str],
                 latency_s: float, retry_after_s: float, seed: int | None) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        if not 0 <= rate <= 1:
            raise ValueError("rate must be 0..1")
        self.upstream = upstream.rstrip("/")
        self.flavor = flavor
        self.rate = rate
        self.faults = list(faults)
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.rng = random.Random(seed)
        self.queued: deque[str] = deque()
        self.stats = _Stats()
        self.throttled_until = 0.0
        self.client = httpx2.AsyncClient(timeout=60.0)

    # -- one connection: HTTP/1.1 through h11, keep-alive --------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return  # closed, or a protocol error
                await self._one(conn, stream, event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except _Hangup:
            _reset(stream)
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _one(self, conn: h11.Connection, stream: trio.SocketStream,
                   request: h11.Request) -> None:
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        if path.startswith(CONTROL):
            body = await _read_body(conn, stream)
            await _respond(conn, stream, method, *self._control(method, path, body))
            return
        s = self.stats
        now = time.time()
        s.requests += 1
        if now < self.throttled_until:
            s.into_throttle += 1
        fault = self._draw()
        s.log.append([round(now, 6), method, path, fault])
        if fault is not None:
            s.faults[fault] = s.faults.get(fault, 0) + 1
        if fault == "cut_upload":
            await _read_some(conn, stream)
            raise _Hangup
        body = await _read_body(conn, stream)
        if fault in ("error", "throttle", "overloaded"):
            status, ctype, payload = error_answer(self.flavor, fault)
            extra: list[tuple[bytes, bytes]] = []
            if status in (429, 503, 529) or fault == "throttle":
                extra.append((b"retry-after", f"{self.retry_after_s:g}".encode()))
                self.throttled_until = max(self.throttled_until, now + self.retry_after_s)
            self._count(status)
            await _respond(conn, stream, method, status, ctype, payload, extra)
            return
        if fault == "latency":
            await trio.sleep(self.latency_s)
        try:
            status, headers, raw = await self._forward(method, target, request.headers, body)
        except httpx2.HTTPError as exc:
            self._count(502)
            await _respond(conn, stream, method, 502, "text/plain",
                           f"fault proxy: upstream: {exc}".encode())
            return
        s.forwarded += 1
        if fault == "applied":
            status, ctype, payload = error_answer(self.flavor, fault)
            self._count(status)
            await _respond(conn, stream, method, status, ctype, payload)
            return
        if status == 429 and (after := dict(headers).get(b"retry-after")):
            try:
                self.throttled_until = max(self.throttled_until, now + float(after))
            except ValueError:
                pass
        if method != "HEAD":
            headers.append((b"content-length", str(len(raw)).encode()))
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if fault == "reset" and raw:
            await stream.send_all(conn.send(h11.Data(data=raw[: len(raw) // 2])))
            raise _Hangup
        self._count(status)
        if raw and method != "HEAD":
            await stream.send_all(conn.send(h11.Data(data=raw)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    def _draw(self) -> str | None:
        if self.queued:
            return self.queued.popleft()
        if self.faults and self.rng.random() < self.rate:
            return self.rng.choice(self.faults)
        return None

    async def _forward(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]],
                       body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # every header as sent, Host included: S3 signatures cover it
        sent = [(k, v) for k, v in headers if k.decode("latin-1") not in HOP_BY_HOP]
        request = self.client.build_request(method, self.upstream + target, headers=sent,
                                            content=body)
        response = await self.client.send(request, stream=True)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        keep = HOP_BY_HOP - {"content-length"} if method == "HEAD" else HOP_BY_HOP
        out = [(k.lower(), v) for k, v in response.headers.raw
               if k.decode("latin-1").lower() not in keep]
        return response.status_code, out, raw

    def _count(self, status: int) -> None:
        key = str(status)
        self.stats.statuses[key] = self.stats.statuses.get(key, 0) + 1

    # -- control ---------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        name = path.removeprefix(CONTROL)
        s = self.stats
        if method == "GET" and name == "stats":
            data: Any = {"requests": s.requests, "forwarded": s.forwarded,
                         "faults": s.faults, "into_throttle": s.into_throttle,
                         "statuses": s.statuses}
        elif method == "GET" and name == "log":
            data = s.log
        elif method == "POST" and name == "next":
            try:
                order = json.loads(body)
                fault, count = order["fault"], int(order.get("count", 1))
                if fault not in FAULTS:
                    raise ValueError(f"unknown fault {fault!r}")
            except (ValueError, TypeError, KeyError) as exc:
                return 400, "application/json", json.dumps({"error": str(exc)}).encode()
            self.queued.extend([fault] * count)
            data = {"queued": len(self.queued)}
        else:
            return 404, "application/json", b'{"error": "no such control endpoint"}'
        return 200, "application/json", json.dumps(data).encode()

    async def aclose(self) -> None:
        await self.client.aclose()


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100,
                                                                      headers=[])))
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes:
    chunks: list[bytes] = []
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise _Hangup  # the client went away mid-request


async def _read_some(conn: h11.Connection, stream: trio.SocketStream) -> None:
    """Read no more than the first piece of the body (an upload cut off)."""
    event = await _next_event(conn, stream)
    if isinstance(event, h11.Data | h11.EndOfMessage):
        return


async def _respond(conn: h11.Connection, stream: trio.SocketStream, method: str, status: int,
                   ctype: str, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               *extra]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if method != "HEAD" and body:
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST rather than FIN: a connection reset, as the client sees it."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


# ---------------------------------------------------------------------------
# entry points


class FaultProxy:
    """A running proxy; made by :func:`serve_proxy`."""

    def __init__(self, proxy: _Proxy, url: str, scope: trio.CancelScope) -> None:
        self.proxy = proxy
        self.url = url
        self._scope = scope

    def queue(self, fault: str, count: int = 1) -> None:
        """The next ``count`` requests get ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.proxy.queued.extend([fault] * count)

    @property
    def stats(self) -> _Stats:
        return self.proxy.stats

    async def shutdown(self) -> None:
        self._scope.cancel()
        await self.proxy.aclose()


async def serve_proxy(nursery: trio.Nursery, *, upstream: str, flavor: str = "d1",
                      rate: float = 0.0, faults: Sequence[str] = FAULTS,
                      latency_s: float = 0.3, retry_after_s: float = 1.0,
                      seed: int | None = None, host: str = "127.0.0.1",
                      port: int = 0) -> FaultProxy:
    """Start the proxy in ``nursery``; return once it listens (port 0: a free one,
    read back from the bound socket)."""
    proxy = _Proxy(upstream=upstream, flavor=flavor, rate=rate, faults=faults,
                   latency_s=latency_s, retry_after_s=retry_after_s, seed=seed)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with scope:
            await trio.serve_tcp(proxy.handle, port, host=host, task_status=task_status)

    listeners: list[trio.SocketListener] = await nursery.start(run)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    return FaultProxy(proxy, f"http://{bound_host}:{bound_port}", scope)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A fault-injecting reverse proxy.")
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--flavor", choices=FLAVORS, default="d1")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="comma-separated, of: " + ", ".join(FAULTS))
    parser.add_argument("--latency-s", type=float, default=0.3)
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    if set(args.faults) - set(FAULTS):
        parser.error(f"--faults: unknown {sorted(set(args.faults) - set(FAULTS))}")
    if not 0 <= args.rate <= 1:
        parser.error("--rate must be 0..1")
    return args


async def _serve_process(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            proxy = await serve_proxy(
                nursery, upstream=args.upstream, flavor=args.flavor, rate=args.rate,
                faults=args.faults, latency_s=args.latency_s,
                retry_after_s=args.retry_after_s, seed=args.seed, host=args.host,
                port=args.port)
            sys.stdout.write(f"LISTENING {proxy.url}\n")
            sys.stdout.flush()
            async for _ in signals:
                break
            await proxy.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    trio.run(_serve_process, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
