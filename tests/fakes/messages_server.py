"""A test fake of the Anthropic Messages API (``POST /v1/messages``).

It is a test fake, not a product feature: a plain ASGI3 app (no framework, no
hand-written HTTP) served by hypercorn under trio on loopback.  It must not
import ``deepmox``.

Wire format
-----------
* ``POST /v1/messages`` with a JSON body; every received request is recorded
  in :attr:`MessagesFake.requests` (path, lower-cased headers, parsed body)
  before anything else happens.
* Checks, in order: no ``x-api-key`` and no ``Authorization`` header -> 401
  ``authentication_error``; a body that is not a JSON object with ``model``,
  ``max_tokens`` and ``messages`` -> 400 ``invalid_request_error``; the rate
  limit; then the next scripted answer (FIFO, see :meth:`MessagesFake.queue`),
  or, when nothing is queued, ``default`` (:func:`ok` with :data:`DEFAULT_TEXT`
  unless given).
* Success (200): ``{"id": "msg_...", "type": "message", "role": "assistant",
  "model": <requested model>, "content": [{"type": "text", "text": ...}],
  "stop_reason": "end_turn", "stop_sequence": null, "usage": {...}}``.
* Errors: ``{"type": "error", "error": {"type": T, "message": M},
  "request_id": "req_..."}`` with the status of :data:`ERROR_TYPES`.
* Every answer carries a ``request-id: req_...`` header, as the API's do.
* Other paths -> 404 ``not_found_error``; other methods on ``/v1/messages``
  -> 405 ``invalid_request_error``.

Rate limit
----------
``limit_per_minute`` admitted requests per sliding window of ``window_s``
(60 s unless a test compresses time) on :func:`trio.current_time` (a test's
``mock_clock`` drives it).  Over it -> 429 ``rate_limit_error`` with
``retry-after: <int seconds, >= 1>``; refused requests do not use the window.
While a limit is set (and unless ``rate_headers`` is false, an API that
does not say), every admitted answer carries the API's rate-limit headers:
``anthropic-ratelimit-requests-limit``, ``-remaining`` (after this request)
and ``-reset`` (RFC 3339: when the window is fully replenished, on the
``wall`` clock given).

Outage
------
:meth:`MessagesFake.outage` makes every admitted request answer
``outage_status`` (503 ``api_error`` by default) for a while: the limit
still counts them, as an API's front door does.

Every answer's time and status are kept in :attr:`MessagesFake.log`.

Entry point
-----------
``fake = await serve_messages(nursery, script=[...])``; ``fake.base_url`` is
``http://127.0.0.1:PORT`` (give it to ``AsyncAnthropic(base_url=...)``);
``await fake.shutdown()`` (or cancelling ``nursery``) stops it.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import secrets
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = [
    "DEFAULT_TEXT",
    "ERROR_TYPES",
    "Answer",
    "MessagesFake",
    "ReceivedRequest",
    "error",
    "ok",
    "rate_limited",
    "serve_messages",
    "slow",
]

SERVER_LOG = logging.getLogger("tests.fakes.messages_server.hypercorn")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MESSAGES_PATH = "/v1/messages"
WINDOW_S = 60.0

#: The text of the default answer: a fixed JSON document.
DEFAULT_TEXT = json.dumps(
    {"title": "A fake title", "description": "A fake description.", "tags": ["fake", "test"]}
)

#: error type -> HTTP status, as the API documents them.
ERROR_TYPES: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_BASE62 = string.ascii_letters + string.digits


def _ident(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(24))


@dataclass(frozen=True)
class Answer:
    """One scripted answer.  ``text`` set: a success; else ``error_type``."""

    status: int = 200
    text: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error_type: str | None = None
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, or the raw text when it was not JSON


def ok(text: str = DEFAULT_TEXT, *, input_tokens: int = 12, output_tokens: int = 34) -> Answer:
    """A 200 with one text block."""
    return Answer(200, text=text, input_tokens=input_tokens, output_tokens=output_tokens)


def error(
    error_type: str,
    message: str | None = None,
    *,
    status: int | None = None,
    retry_after: float | None = None,
) -> Answer:
    """An error answer; ``status`` defaults from :data:`ERROR_TYPES`.

    ``error("api_error", status=504)`` gives the other form a 504 takes.
    """
    if status is None:
        status = ERROR_TYPES[error_type]
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        headers = (("retry-after", value),)
    return Answer(
        status,
        error_type=error_type,
        message=message or f"fake {error_type}",
        headers=headers,
    )


def rate_limited(retry_after: float | None = None) -> Answer:
    """A 429 ``rate_limit_error``, with a ``retry-after`` header when given."""
    return error(
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        retry_after=retry_after,
    )


def slow(seconds: float, answer: Answer | None = None) -> Answer:
    """``answer`` (default :func:`ok`) sent after ``seconds`` (the server waits)."""
    return replace(answer if answer is not None else ok(), delay=float(seconds))


def _json(
    status: int, payload: Any, extra: Iterable[tuple[str, str]] = ()
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"request-id", _ident("req_011C").encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in extra]
    return status, headers, body


def _error(
    status: int, error_type: str, message: str, extra: Iterable[tuple[str, str]] = ()
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    payload = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": _ident("req_011C"),
    }
    return _json(status, payload, extra)


class _MessagesApp:
    def __init__(self, *, script: Iterable[Answer], limit_per_minute: int | None,
                 window_s: float = WINDOW_S, wall: Callable[[], float] = time.time,
                 rate_headers: bool = True, default: Answer | None = None) -> None:
        if limit_per_minute is not None and limit_per_minute < 1:
            raise ValueError("limit_per_minute must be >= 1 (or None)")
        self.limit = limit_per_minute
        self.window_s = window_s
        self.wall = wall
        self.rate_headers = rate_headers
        self.default = default or ok()
        self.script: deque[Answer] = deque(script)
        self.admitted: deque[float] = deque()
        self.requests: list[ReceivedRequest] = []
        #: (trio time, status) of every answer
        self.log: list[tuple[float, int]] = []
        self.outage_until = -math.inf
        self.outage_pending: float | None = None
        self.outage_status = 503

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = raw.decode("utf-8", "replace")
        self.requests.append(ReceivedRequest(scope["method"], scope["path"], headers, body))

        delay, response = self._answer(scope["method"], scope["path"], headers, body)
        self.log.append((trio.current_time(), response[0]))
        if delay > 0 and not await self._wait(delay, receive):
            return  # the client hung up while we were "thinking"
        status, out_headers, out_body = response
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    @staticmethod
    async def _wait(delay: float, receive: Receive) -> bool:
        """Sleep ``delay`` seconds; False if the client disconnected first."""
        finished = True

        async def watch_disconnect(cancel: trio.CancelScope) -> None:
            nonlocal finished
            while (await receive())["type"] != "http.disconnect":
                pass
            finished = False
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery.cancel_scope)
            await trio.sleep(delay)
            nursery.cancel_scope.cancel()
        return finished

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[float, tuple[int, list[tuple[bytes, bytes]], bytes]]:
        if path != MESSAGES_PATH:
            return 0.0, _error(404, "not_found_error", "Not Found")
        if method != "POST":
            return 0.0, _error(405, "invalid_request_error", f"Method Not Allowed: {method}")
        if "x-api-key" not in headers and "authorization" not in headers:
            return 0.0, _error(401, "authentication_error", "x-api-key header is required")
        if not isinstance(body, dict):
            return 0.0, _error(400, "invalid_request_error", "Request body is not valid JSON")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return 0.0, _error(400, "invalid_request_error", f"{name}: Field required")

        limit_headers: list[tuple[str, str]] = []
        now = trio.current_time()
        if self.outage_pending is not None:
            self.outage_until, self.outage_pending = now + self.outage_pending, None
        if self.limit is not None:
            while self.admitted and self.admitted[0] <= now - self.window_s:
                self.admitted.popleft()
            if len(self.admitted) >= self.limit:
                retry_after = max(1, math.ceil(self.admitted[0] + self.window_s - now))
                return 0.0, _error(
                    429,
                    "rate_limit_error",
                    f"This request would exceed the rate limit of {self.limit} "
                    "requests per minute",
                    [("retry-after", str(retry_after))],
                )
            self.admitted.append(now)
        if self.limit is not None and self.rate_headers:
            reset = datetime.datetime.fromtimestamp(
                self.wall() + self.window_s, tz=datetime.UTC)
            limit_headers = [
                ("anthropic-ratelimit-requests-limit", str(self.limit)),
                ("anthropic-ratelimit-requests-remaining", str(self.limit - len(self.admitted))),
                ("anthropic-ratelimit-requests-reset",
                 reset.isoformat(timespec="seconds").replace("+00:00", "Z")),
            ]
        if now < self.outage_until:
            return 0.0, _error(self.outage_status, "api_error", "Service Unavailable",
                               limit_headers)

        answer = self.script.popleft() if self.script else self.default
        if answer.text is None:
            assert answer.error_type is not None
            return answer.delay, _error(
                answer.status, answer.error_type, answer.message,
                [*limit_headers, *answer.headers]
            )
        payload = {
            "id": _ident("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": answer.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": answer.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": answer.output_tokens,
                "service_tier": "standard",
            },
        }
        return answer.delay, _json(answer.status, payload, [*limit_headers, *answer.headers])


@dataclass
class MessagesFake:
    """A running fake; made by :func:`serve_messages`."""

    _app: _MessagesApp
    base_url: str = ""
    port: int = 0
    _shutdown: trio.Event = field(default_factory=trio.Event)
    _stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self._app.requests

    @property
    def pending(self) -> int:
        return len(self._app.script)

    @property
    def log(self) -> list[tuple[float, int]]:
        """(trio time, status) of every answer, in order."""
        return self._app.log

    def queue(self, *answers: Answer) -> None:
        """Script the next answers (FIFO, after any already queued)."""
        self._app.script.extend(answers)

    def outage(self, seconds: float, status: int = 503, *, from_next_request: bool = False
               ) -> None:
        """Answer ``status`` to every admitted request for the next ``seconds``
        (``from_next_request``: counted from the next request that arrives)."""
        self._app.outage_status = status
        if from_next_request:
            self._app.outage_pending = seconds
        else:
            self._app.outage_until = trio.current_time() + seconds

    def most_in_window(self, window_s: float | None = None) -> int:
        """The most answers (any status) in any window of ``window_s`` (default:
        the limit's window)."""
        w = self._app.window_s if window_s is None else window_s
        times = [t for t, _ in self._app.log]
        best = lo = 0
        for hi, t in enumerate(times):
            while times[lo] <= t - w:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    async def shutdown(self) -> None:
        self._shutdown.set()
        await self._stopped.wait()

    async def _run(
        self,
        config: Config,
        *,
        task_status: trio.TaskStatus[MessagesFake] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    partial(
                        serve,
                        self._app,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=self._shutdown.wait,
                        mode="asgi",
                    )
                )
                url = urlsplit(binds[0] if binds else "")
                if url.port is None:
                    raise RuntimeError(f"hypercorn reported no usable bind: {binds!r}")
                self.port = url.port
                self.base_url = f"{url.scheme}://{url.netloc}"
                task_status.started(self)
        finally:
            self._stopped.set()


async def serve_messages(
    nursery: trio.Nursery,
    *,
    script: Iterable[Answer] = (),
    limit_per_minute: int | None = None,
    window_s: float = WINDOW_S,
    wall: Callable[[], float] = time.time,
    rate_headers: bool = True,
    default: Answer | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> MessagesFake:
    """Start the fake in ``nursery``; return once it listens (port 0: an unused one).

    The port is read from the bind hypercorn reports once its socket is
    bound, so there is no race.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = SERVER_LOG
    config.graceful_timeout = 1.0
    config.include_server_header = False
    fake = MessagesFake(_MessagesApp(script=script, limit_per_minute=limit_per_minute,
                                     window_s=window_s, wall=wall,
                                     rate_headers=rate_headers, default=default))
    started: MessagesFake = await nursery.start(fake._run, config)
    return started
