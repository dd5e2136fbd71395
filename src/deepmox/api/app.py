"""The HTTP API: a plain ASGI3 app, its routes, and the jobs handlers.

Every route is one :class:`Route` line in :func:`job_routes` (or in the
``routes`` given to :func:`create_app`): a method, a path template whose
``{name}`` segments become ``request.params``, a handler and the
:class:`~.auth.Access` it needs (reads need the read token, everything else
the write token, unless the route says otherwise). A websocket route uses the
method ``"WEBSOCKET"`` and talks ASGI through ``request.receive`` and
``request.send`` itself.

Requests are authenticated before they are routed any further: an
unauthenticated client gets a 401 for an unknown path as well, and learns
nothing about which routes exist. Errors are JSON bodies built in
:mod:`.errors`; a handler raises, it never builds an error response itself.

Everything a request needs is built once, with the app: the tokens, the
router, the msgspec encoder and decoder. The submission path reads the body,
decodes it straight into :class:`~deepmox.client.JobSpec` and hands it to
:meth:`Client.submit <deepmox.client.Client.submit>`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import msgspec

from ..client import Client, JobSpec, valid_idempotency_key
from ..config import Config, database_identity
from ..jobs import JobState
from .auth import Access, Tokens
from .errors import JSON_HEADERS, Headers, HttpError, log, response_for

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: ``GET /v1/jobs`` without ``limit``
DEFAULT_LIST_LIMIT = 100
#: job ids are 26-character ULIDs; anything much longer is not looked up
MAX_ID_CHARS = 128
MAX_QUERY_FIELDS = 20
#: how much of a body over the limit is read (and dropped) to answer its 413 cleanly
DRAIN_BYTES = 1024 * 1024

_STATES = frozenset(s.value for s in JobState)
_LIMIT = re.compile(r"[0-9]{1,9}")


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    """What ``/healthz`` answers, computed by the daemon at each request: ok
    while the pull loop ticks (200), not ok when it is stuck or draining (503,
    with the reason)."""

    ok: bool
    reason: str = ""


class Response(NamedTuple):
    status: int
    body: bytes
    headers: Headers = JSON_HEADERS


class ClientGone(Exception):
    """The client disconnected before its request was read: nobody to answer."""


class Request:
    """One request, as handlers see it; ``params`` holds the path's ``{name}`` values."""

    __slots__ = ("max_body_bytes", "params", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, params: dict[str, str],
                 max_body_bytes: int) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.params = params
        self.max_body_bytes = max_body_bytes

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower case), None when absent; a 400
        when the request repeats it."""
        found: bytes | None = None
        for key, value in self.scope["headers"]:
            if key == name:
                if found is not None:
                    raise HttpError(400, "invalid_request",
                                    f"more than one {name.decode()} header")
                found = value
        return found

    def query(self, allowed: Iterable[str]) -> dict[str, str]:
        """The query parameters; a 400 for an unknown or repeated one."""
        raw: bytes = self.scope.get("query_string", b"")
        if not raw:
            return {}
        try:
            pairs = _parse_query(raw)
        except ValueError:
            raise HttpError(400, "invalid_request", "the query string does not parse") from None
        names = frozenset(allowed)
        out: dict[str, str] = {}
        for key, value in pairs:
            if key not in names:
                raise HttpError(400, "invalid_request",
                                f"unknown query parameter {key!r} "
                                f"(known: {', '.join(sorted(names))})")
            if key in out:
                raise HttpError(400, "invalid_request", f"query parameter {key!r} is repeated")
            out[key] = value
        return out

    async def body(self) -> bytes:
        """The whole body, read up to ``max_body_bytes``: a 413 as soon as it
        is longer (announced or counted), with no more than that buffered.

        Before the 413, the rest of a body that overshoots by at most
        ``DRAIN_BYTES`` is read and thrown away, so the client reads its
        answer on a connection that stays open; a larger one is answered at
        once and the connection closed (its unread bytes may reset it)."""
        limit = self.max_body_bytes
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise await self._refuse(limit, unread=True,
                                     drain=int(length) - limit <= DRAIN_BYTES)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            more: bool = message.get("more_body", False)
            if total > limit:
                chunks.clear()
                raise await self._refuse(limit, unread=more)
            if chunk:
                chunks.append(chunk)
            if not more:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, limit: int, *, unread: bool, drain: bool = True) -> HttpError:
        """The 413. When part of the body is ``unread``, it is first read and
        dropped (at most ``DRAIN_BYTES`` of it, and only if ``drain``); if some
        is left even so, the answer says the connection closes."""
        closes = unread
        if unread and drain:
            seen = 0
            while seen <= DRAIN_BYTES:
                message = await self.receive()
                if message["type"] != "http.request":
                    raise ClientGone
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    closes = False
                    break
        return HttpError(413, "payload_too_large",
                         f"the body is over {limit:,} bytes ([server] max_body_bytes)",
                         ((b"connection", b"close"),) if closes else ())


def _parse_query(raw: bytes) -> list[tuple[str, str]]:
    """``parse_qsl`` with blank values kept, a bound on fields, and strict UTF-8."""
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True,
                     max_num_fields=MAX_QUERY_FIELDS, errors="strict")


Handler = Callable[[Request], Awaitable[Response | None]]


class Route(NamedTuple):
    """One line of the routing table."""

    method: str
    path: str
    handler: Handler
    #: None: reads (GET) need the read token, anything else the write token
    access: Access | None = None

    @property
    def needs(self) -> Access:
        if self.access is not None:
            return self.access
        return Access.READ if self.method == "GET" else Access.WRITE


class Match(NamedTuple):
    #: the routes for the path, by method
    methods: dict[str, Route]
    params: dict[str, str]


class Router:
    """Static paths by dictionary, templates by segment; built once."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._templates: dict[tuple[str, ...], dict[str, Route]] = {}
        for route in routes:
            if not route.path.startswith("/"):
                raise ValueError(f"route path {route.path!r} must start with /")
            if "{" in route.path:
                table = self._templates.setdefault(tuple(route.path.split("/")), {})
            else:
                table = self._static.setdefault(route.path, {})
            if route.method in table:
                raise ValueError(f"duplicate route {route.method} {route.path}")
            table[route.method] = route

    def match(self, path: str) -> Match | None:
        methods = self._static.get(path)
        if methods is not None:
            return Match(methods, {})
        segments = path.split("/")
        for template, methods in self._templates.items():
            if len(template) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(template, segments, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return Match(methods, params)
        return None


class App:
    """The ASGI3 application."""

    def __init__(self, router: Router, tokens: Tokens, *, max_body_bytes: int) -> None:
        self.router = router
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    def _route(self, method: str, path: str, scope: Scope) -> tuple[Route, dict[str, str]]:
        """The route for the request, once its token allows it; else the 401,
        403, 404 or 405 :class:`HttpError`."""
        match = self.router.match(path)
        if match is None:
            self.tokens.check(Access.READ, scope)
            raise HttpError(404, "not_found", f"no route {path}")
        route = match.methods.get(method)
        if route is None and method == "HEAD":
            route = match.methods.get("GET")
        if route is None:
            self.tokens.check(min(r.needs for r in match.methods.values()), scope)
            allow = ", ".join(sorted(m for m in match.methods if m != "WEBSOCKET"))
            raise HttpError(405, "method_not_allowed",
                            f"{path} does not take {method} (it takes {allow or 'websockets'})",
                            ((b"allow", allow.encode()),))
        self.tokens.check(route.needs, scope)
        return route, match.params

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        try:
            route, params = self._route(method, path, scope)
            response = await route.handler(
                Request(scope, receive, send, params, self.max_body_bytes))
        except ClientGone:
            return
        except Exception as exc:
            status, body, headers = response_for(exc, method=method, path=path)
            response = Response(status, body, (*JSON_HEADERS, *headers))
        if response is not None:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-length", b"%d" % len(response.body)),
                                    *response.headers]})
            await send({"type": "http.response.body", "body": response.body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            route, params = self._route("WEBSOCKET", path, scope)
        except HttpError:
            # closing before accepting makes the server answer the upgrade with a 403
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            await route.handler(Request(scope, receive, send, params, self.max_body_bytes))
        except Exception as exc:
            log.error("websocket %s: unhandled %s", path, type(exc).__name__, exc_info=exc,
                      extra={"event": "api_error"})
            try:
                await send({"type": "websocket.close", "code": 1011})
            except Exception:
                pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- the jobs API ---------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode
_decode_spec = msgspec.json.Decoder(JobSpec).decode


def json_response(status: int, value: Any, headers: Headers = ()) -> Response:
    return Response(status, _encode(value), (*JSON_HEADERS, *headers) if headers else JSON_HEADERS)


def decode_spec(body: bytes) -> JobSpec:
    """The body as a job spec; a 400 that says what is wrong otherwise."""
    try:
        return _decode_spec(body)
    except msgspec.ValidationError as exc:
        raise HttpError(400, "invalid_request", f"not a job spec: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HttpError(400, "malformed_json", f"the body is not JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec's answer to bad UTF-8 inside a string
        raise HttpError(400, "malformed_json",
                        f"the body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") \
            from None
    except RecursionError:
        raise HttpError(400, "malformed_json", "the body nests too deeply") from None


class JobsApi:
    """The handlers of ``/v1/jobs`` and ``/healthz``."""

    def __init__(self, client: Client, health: Callable[[], Health]) -> None:
        self.client = client
        self.health = health
        self.database = database_identity(client.cfg.d1)

    def _job_id(self, request: Request) -> str:
        job_id = request.params["id"]
        if len(job_id) > MAX_ID_CHARS:
            raise HttpError(404, "not_found", "no job with such a long id")
        return job_id

    async def healthz(self, request: Request) -> Response:
        health = self.health()
        return json_response(200 if health.ok else 503, health)

    async def submit(self, request: Request) -> Response:
        database = request.header(b"x-deepmox-database")
        if database is not None and database.decode("latin-1") != self.database:
            raise HttpError(409, "other_database",
                            "this daemon serves another database than the one the client "
                            "names (X-Deepmox-Database)")
        key: str | None = None
        raw_key = request.header(b"idempotency-key")
        if raw_key is not None:
            key = raw_key.decode("latin-1")
            if not valid_idempotency_key(key):
                raise HttpError(400, "invalid_request",
                                "Idempotency-Key must be 1 to 255 printable ASCII characters")
        spec = decode_spec(await request.body())
        job, created = await self.client.submit(spec, key)
        if created:
            return json_response(201, job, ((b"location", f"/v1/jobs/{job.id}".encode()),))
        return json_response(200, job)

    async def get(self, request: Request) -> Response:
        return json_response(200, await self.client.get(self._job_id(request)))

    async def list_jobs(self, request: Request) -> Response:
        query = request.query(("state", "kind", "limit"))
        state = query.get("state") or None
        if state is not None and state not in _STATES:
            raise HttpError(400, "invalid_request",
                            f"unknown state {state!r} (known: {', '.join(sorted(_STATES))})")
        limit = DEFAULT_LIST_LIMIT
        raw_limit = query.get("limit")
        if raw_limit:
            if not _LIMIT.fullmatch(raw_limit):
                raise HttpError(400, "invalid_request",
                                "limit must be a whole number from 0 (all) to 999999999")
            limit = int(raw_limit)
        jobs = await self.client.list_jobs(state=state, kind=query.get("kind") or None,
                                           limit=limit)
        return json_response(200, jobs)

    async def cancel(self, request: Request) -> Response:
        return json_response(200, await self.client.cancel(self._job_id(request)))

    async def retry(self, request: Request) -> Response:
        return json_response(200, await self.client.retry(self._job_id(request)))

    async def events(self, request: Request) -> Response:
        return json_response(200, await self.client.events(self._job_id(request)))


def job_routes(api: JobsApi) -> list[Route]:
    """The routing table; ``/metrics``, ``/v1/feed`` and ``/`` come from their
    own modules, one line each (answered 404 until then)."""
    return [
        Route("GET", "/healthz", api.healthz, Access.PUBLIC),
        Route("POST", "/v1/jobs", api.submit),
        Route("GET", "/v1/jobs", api.list_jobs),
        Route("GET", "/v1/jobs/{id}", api.get),
        Route("POST", "/v1/jobs/{id}/cancel", api.cancel),
        Route("POST", "/v1/jobs/{id}/retry", api.retry),
        Route("GET", "/v1/jobs/{id}/events", api.events),
    ]


def create_app(cfg: Config, client: Client, *, health: Callable[[], Health],
               tokens: Tokens | None = None, routes: Sequence[Route] = ()) -> App:
    """The app for ``cfg``: its tokens are read now (or given), once."""
    api = JobsApi(client, health)
    return App(Router([*job_routes(api), *routes]),
               tokens if tokens is not None else Tokens.load(cfg.server),
               max_body_bytes=cfg.server.max_body_bytes)


__all__ = ["App", "Health", "JobsApi", "Request", "Response", "Route", "Router", "create_app",
           "job_routes", "json_response"]
