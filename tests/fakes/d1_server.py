"""A test fake of the Cloudflare D1 REST API, backed by a real SQLite file.

It is a test fake, not a product feature: a plain ASGI3 app (no framework, no
hand-written HTTP) served by hypercorn under trio on loopback.  It must not
import ``deepmox``.

Wire format (Cloudflare v4)
---------------------------
``POST {prefix}/accounts/{account_id}/d1/database/{database_id}/query`` and
``.../raw``; ``prefix`` is the path of :attr:`D1Fake.api_base` (``/client/v4``).

* Auth: ``Authorization: Bearer <token>``; missing or wrong -> 401, error
  ``10000 Authentication error``.  Unknown account or database id -> 404,
  ``7404 The database <id> could not be found``.  Other paths -> 404 ``7000``;
  other methods on a D1 path -> 405 ``10405``.
* Body: ``{"sql": "...", "params": [...]}`` or
  ``{"batch": [{"sql": "...", "params": [...]}, ...]}``.  A ``sql`` string may
  hold several ``;``-separated statements (split with
  :func:`sqlite3.complete_statement`, so ``;`` inside literals and trigger
  bodies is safe); each gets its own result entry, and ``params`` are then
  refused (400, ``7400``) since they can only bind a single statement.  Params
  are JSON strings, numbers, booleans (bound as 0/1) or null, bound to ``?``.
  Invalid JSON or a wrong shape -> 400, ``7400 The request is malformed: ...``.
* Success: ``{"result": [entry, ...], "success": true, "errors": [],
  "messages": []}``, one entry per statement: ``/query`` rows are objects,
  ``/raw`` rows are ``{"columns": [...], "rows": [[...]]}``; ``meta`` carries
  ``changed_db, changes, duration, last_row_id, rows_read, rows_written,
  size_after, served_by_primary, served_by_region``.  BLOBs come back as
  lists of byte values, non-finite floats as null (as JSON.stringify does).
* Everything in one request is atomic: ``BEGIN IMMEDIATE ... COMMIT``; any
  error rolls it all back and answers 400 with ``"result": []`` and error
  ``7500 "<sqlite message>: SQLITE_<PRIMARY CODE>"`` (a syntax error also gets
  a best-effort `` at offset N``).  ``SQLITE_BUSY``/``SQLITE_LOCKED`` (another
  process holds the file past the 10 s busy timeout) answer 500 instead.
* Refused SQL (checked before anything runs): a statement starting (after
  whitespace and comments) with BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE
  or PRAGMA -> 400 ``7500 not authorized: SQLITE_AUTH``; an SQLite authorizer
  also denies transaction control, savepoints, ATTACH and DETACH anywhere.
  ``pragma_*()`` table-valued functions are allowed.  More than 100 params in
  one statement -> 400 ``7500 too many SQL variables: SQLITE_ERROR``.
* Error envelopes other than SQL errors carry ``"result": null`` as
  Cloudflare's do.

Rate limiting, faults, stats
----------------------------
* ``limit`` requests per ``window_s`` sliding window (on :func:`trio.current_time`,
  so a test's ``mock_clock`` drives it) across all D1 requests; only admitted
  requests use the window.  Over it -> 429, ``Retry-After: <int seconds, >= 1>``,
  error ``971 Please wait and consider throttling your request speed``.
* ``POST /__control/faults`` ``{"fault": NAME, "count": N}`` queues N faulty
  answers (FIFO) for the next N D1 requests, before auth and rate limiting.
  See :data:`FAULTS`.  ``drop`` sends a ``200`` status line announcing a
  ``Content-Length: 64`` body, then raises so hypercorn closes the connection
  without a byte of body: the client sees a connection error
  (``httpx2.RemoteProtocolError``: peer closed connection without sending
  complete message body), never a response it could parse.
* ``GET /__control/stats`` -> ``{"requests": n, "statements": n,
  "by_endpoint": {"query": n, "raw": n}}``.  ``requests`` counts every request
  to a D1 endpoint path (refused, faulted and rate-limited ones too);
  ``statements`` counts statements of committed requests only.
  ``POST /__control/reset_stats`` zeros them.  Control endpoints need no auth.

SQLite
------
One connection per server (autocommit, WAL, busy timeout 10 s, no statement
cache so the authorizer sees every prepare), used synchronously inside the
handler; other processes may open the same file concurrently.

Entry points
------------
* In process: ``fake = await serve_d1(nursery, db_path=...)``; ``await
  fake.shutdown()`` (or cancel the nursery) stops it and closes the database.
* As a process: ``python tests/fakes/d1_server.py --db PATH [--port 0]
  [--account acc] [--database db] [--token-env D1_FAKE_TOKEN] [--limit N
  --window-s S]`` prints exactly ``LISTENING http://127.0.0.1:PORT/client/v4``
  once listening, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["FAULTS", "MAX_PARAMS", "D1Fake", "main", "serve_d1"]

LOG = logging.getLogger("tests.fakes.d1_server")
#: hypercorn's error log; an injected ``drop`` is not logged as an app error.
SERVER_LOG = logging.getLogger("tests.fakes.d1_server.hypercorn")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_PREFIX = "/client/v4"
MAX_PARAMS = 100
REGION = "WEUR"
DROP_CONTENT_LENGTH = 64

REFUSED_HEADS = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA"})

#: fault name -> (HTTP status, extra headers, body); ``drop`` is special.
FAULTS: dict[str, tuple[int, dict[str, str], dict[str, Any] | str | None]] = {
    "network_lost": (500, {}, {"code": 7500, "message": "Network connection lost."}),
    "reset": (500, {}, {"code": 7500, "message": "D1 DB storage caused object to be reset."}),
    "code_updated": (
        500,
        {},
        {"code": 7500, "message": "D1 DB reset because its code was updated."},
    ),
    "overloaded": (
        500,
        {},
        {"code": 7500, "message": "D1 DB is overloaded. Too many requests queued."},
    ),
    "http429": (
        429,
        {"retry-after": "2"},
        {"code": 971, "message": "Please wait and consider throttling your request speed"},
    ),
    "http500": (500, {}, {"code": 7500, "message": "Internal error"}),
    "http503": (503, {}, "upstream unavailable"),
    "drop": (0, {}, None),
}

# SQLite primary result codes (extended code & 0xFF -> name).
_PRIMARY_CODES = {
    1: "SQLITE_ERROR",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
}
_TRANSIENT_CODES = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})
_DENIED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_SAVEPOINT,
        sqlite3.SQLITE_ATTACH,
        sqlite3.SQLITE_DETACH,
    }
)
_DDL_HEADS = frozenset({"CREATE", "DROP", "ALTER"})
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?(?:\*/|$)", re.S)
_NEAR = re.compile(r'^near "(.*)": syntax error$', re.S)
_D1_PATH = re.compile(r"/accounts/([^/]+)/d1/database/([^/]+)/(query|raw)")


class _DropConnection(Exception):
    """Raised by the app after the status line to make hypercorn hang up."""


def _not_a_drop(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, _DropConnection)


SERVER_LOG.addFilter(_not_a_drop)


class _SQLFailure(Exception):
    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class _Stmt:
    sql: str
    params: list[Any]


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    drop: bool = False


# ---------------------------------------------------------------------------
# helpers


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    hdrs = [(b"content-type", b"application/json")]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return _Response(status, body, hdrs)


def _envelope_error(
    status: int,
    code: int,
    message: str,
    *,
    result: Any = None,
    headers: dict[str, str] | None = None,
) -> _Response:
    return _json_response(
        status,
        {
            "result": result,
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        },
        headers,
    )


def _malformed(detail: str) -> _Response:
    return _envelope_error(400, 7400, f"The request is malformed: {detail}")


def _head_keyword(sql: str) -> str:
    rest = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    m = re.match(r"[A-Za-z]+", rest)
    return m.group(0).upper() if m else ""


def _is_blank(sql: str) -> bool:
    return not _COMMENT.sub("", sql).strip().strip(";").strip()


def split_statements(sql: str) -> list[str]:
    """Split ``sql`` into complete statements; blank or comment-only ones are dropped."""
    out: list[str] = []
    start = pos = 0
    while (i := sql.find(";", pos)) >= 0:
        candidate = sql[start : i + 1]
        if sqlite3.complete_statement(candidate):
            out.append(candidate)
            start = i + 1
        pos = i + 1
    out.append(sql[start:])
    return [s.strip() for s in out if not _is_blank(s)]


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sqlite_message(exc: BaseException, stmt: str) -> tuple[str, int]:
    """D1's message for a driver error (``"<message>: SQLITE_<CODE>"``) and HTTP status."""
    code = getattr(exc, "sqlite_errorcode", None)
    message = str(exc)
    if isinstance(code, int):
        name = _PRIMARY_CODES.get(code & 0xFF, "SQLITE_ERROR")
    elif isinstance(exc, OverflowError):
        name = "SQLITE_RANGE"
    elif isinstance(exc, sqlite3.ProgrammingError) and "bindings" in message:
        name, message = "SQLITE_RANGE", "Wrong number of parameter bindings for SQL query."
    else:
        name = "SQLITE_ERROR"
    near = _NEAR.match(message)
    if near:
        offset = stmt.find(near.group(1))
        if offset >= 0:
            message = f"{message} at offset {offset}"
    return f"{message}: {name}", (500 if name in _TRANSIENT_CODES else 400)


def _parse_params(raw: Any, where: str) -> list[Any] | str:
    if raw is None:
        return []
    if not isinstance(raw, list):
        return f"{where}.params must be an array"
    for i, value in enumerate(raw):
        if value is not None and not isinstance(value, str | int | float):
            return f"{where}.params[{i}] must be a string, number, boolean or null"
    return list(raw)


def _parse_body(body: bytes) -> list[_Stmt] | _Response:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _malformed(f"invalid JSON body ({exc})")
    if not isinstance(data, dict):
        return _malformed("the body must be a JSON object")
    if ("sql" in data) == ("batch" in data):
        return _malformed('the body needs exactly one of "sql" and "batch"')
    if "sql" in data:
        entries: list[Any] = [data]
        names = ["$"]
    else:
        if not isinstance(data["batch"], list) or not data["batch"]:
            return _malformed('"batch" must be a non-empty array')
        entries = data["batch"]
        names = [f"$.batch[{i}]" for i in range(len(entries))]
    stmts: list[_Stmt] = []
    for where, entry in zip(names, entries, strict=True):
        if not isinstance(entry, dict) or not isinstance(entry.get("sql"), str):
            return _malformed(f"{where}.sql must be a string")
        params = _parse_params(entry.get("params"), where)
        if isinstance(params, str):
            return _malformed(params)
        parts = split_statements(entry["sql"])
        if not parts:
            return _malformed(f"{where}.sql holds no SQL statement")
        if len(parts) > 1 and params:
            return _malformed(f"{where}.params can only bind a single statement")
        stmts.extend(_Stmt(p, params if len(parts) == 1 else []) for p in parts)
    return stmts


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


# ---------------------------------------------------------------------------
# the app


class _D1App:
    """The ASGI3 app; all state lives here and is touched only from the trio thread."""

    def __init__(
        self,
        *,
        db_path: str | os.PathLike[str],
        account_id: str,
        database_id: str,
        token: str,
        limit: int | None,
        window_s: float,
        prefix: str,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 (or None)")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.account_id = account_id
        self.database_id = database_id
        self.token = token
        self.limit = limit
        self.window_s = float(window_s)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.faults: deque[str] = deque()
        self.admitted: deque[float] = deque()
        self.requests = 0
        self.statements = 0
        self.by_endpoint = {"query": 0, "raw": 0}
        self._authorizer_on = False
        self.db = sqlite3.connect(
            os.fspath(db_path), isolation_level=None, timeout=10.0, cached_statements=0
        )
        try:
            self.db.execute("PRAGMA busy_timeout = 10000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.set_authorizer(self._authorize)
        except BaseException:
            self.db.close()
            raise

    # -- public-ish state ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statements": self.statements,
            "by_endpoint": dict(self.by_endpoint),
        }

    def reset_stats(self) -> None:
        self.requests = 0
        self.statements = 0
        self.by_endpoint = {"query": 0, "raw": 0}

    def inject(self, fault: str, count: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        self.faults.extend([fault] * count)

    def close(self) -> None:
        self.db.close()

    # -- ASGI ------------------------------------------------------------------

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
        body = await _read_body(receive)
        if body is None:
            return
        response = self._route(scope, body)
        if response.drop:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(DROP_CONTENT_LENGTH).encode()),
                    ],
                }
            )
            raise _DropConnection("d1 fake: injected fault 'drop'")
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _route(self, scope: Scope, body: bytes) -> _Response:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/__control/"):
            return self._control(method, path.removeprefix("/__control/"), body)
        if self.prefix and not path.startswith(self.prefix + "/"):
            return _envelope_error(404, 7000, "No route for that URI")
        m = _D1_PATH.fullmatch(path[len(self.prefix) :])
        if not m:
            return _envelope_error(404, 7000, "No route for that URI")
        account_id, database_id, endpoint = m.groups()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        return self._d1(method, headers, account_id, database_id, endpoint, body)

    def _control(self, method: str, name: str, body: bytes) -> _Response:
        if name == "stats" and method == "GET":
            return _json_response(200, self.stats())
        if name == "reset_stats" and method == "POST":
            self.reset_stats()
            return _json_response(200, {"ok": True})
        if name == "faults" and method == "POST":
            try:
                data = json.loads(body)
                self.inject(data["fault"], data.get("count", 1))
            except (ValueError, TypeError, KeyError) as exc:
                return _json_response(400, {"ok": False, "error": str(exc)})
            return _json_response(200, {"ok": True, "pending": len(self.faults)})
        return _json_response(404, {"ok": False, "error": f"no control endpoint {method} {name}"})

    def _d1(
        self,
        method: str,
        headers: dict[str, str],
        account_id: str,
        database_id: str,
        endpoint: str,
        body: bytes,
    ) -> _Response:
        self.requests += 1
        self.by_endpoint[endpoint] += 1

        if self.faults:
            fault = self.faults.popleft()
            status, extra, payload = FAULTS[fault]
            if fault == "drop":
                return _Response(0, b"", drop=True)
            if isinstance(payload, str):
                return _Response(status, payload.encode(), [(b"content-type", b"text/plain")])
            assert payload is not None
            return _envelope_error(status, payload["code"], payload["message"], headers=extra)

        if self.limit is not None:
            now = trio.current_time()
            while self.admitted and self.admitted[0] <= now - self.window_s:
                self.admitted.popleft()
            if len(self.admitted) >= self.limit:
                retry_after = max(1, math.ceil(self.admitted[0] + self.window_s - now))
                return _envelope_error(
                    429,
                    971,
                    "Please wait and consider throttling your request speed",
                    headers={"retry-after": str(retry_after)},
                )
            self.admitted.append(now)

        if method != "POST":
            return _envelope_error(405, 10405, f"Method {method} not allowed")
        if headers.get("authorization") != f"Bearer {self.token}":
            return _envelope_error(401, 10000, "Authentication error")
        if account_id != self.account_id or database_id != self.database_id:
            return _envelope_error(404, 7404, f"The database {database_id} could not be found")
        parsed = _parse_body(body)
        if isinstance(parsed, _Response):
            return parsed
        try:
            results = self._run(parsed, raw=endpoint == "raw")
        except _SQLFailure as failure:
            return _envelope_error(failure.status, 7500, failure.message, result=[])
        self.statements += len(parsed)
        return _json_response(
            200, {"result": results, "success": True, "errors": [], "messages": []}
        )

    # -- SQLite --------------------------------------------------------------

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None
    ) -> int:
        if self._authorizer_on and action in _DENIED_ACTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _run(self, stmts: Sequence[_Stmt], *, raw: bool) -> list[dict[str, Any]]:
        for stmt in stmts:
            if _head_keyword(stmt.sql) in REFUSED_HEADS:
                raise _SQLFailure("not authorized: SQLITE_AUTH")
            if len(stmt.params) > MAX_PARAMS:
                raise _SQLFailure("too many SQL variables: SQLITE_ERROR")
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            message, _ = _sqlite_message(exc, "BEGIN IMMEDIATE")
            raise _SQLFailure(message, status=500) from exc
        outputs: list[tuple[list[str], list[tuple[Any, ...]], dict[str, Any]]] = []
        current = "COMMIT"
        try:
            for stmt in stmts:
                current = stmt.sql
                outputs.append(self._execute(stmt))
            current = "COMMIT"
            db.execute("COMMIT")
        except (sqlite3.Error, OverflowError) as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            message, status = _sqlite_message(exc, current)
            raise _SQLFailure(message, status=status) from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        (page_count,) = db.execute("PRAGMA page_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        size_after = int(page_count) * int(page_size)
        results: list[dict[str, Any]] = []
        for columns, rows, meta in outputs:
            meta["size_after"] = size_after
            if raw:
                payload: Any = {
                    "columns": columns,
                    "rows": [[_json_value(v) for v in row] for row in rows],
                }
            else:
                payload = [
                    {c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows
                ]
            results.append({"results": payload, "success": True, "meta": meta})
        return results

    def _execute(self, stmt: _Stmt) -> tuple[list[str], list[tuple[Any, ...]], dict[str, Any]]:
        db = self.db
        before = db.total_changes
        started = time.perf_counter()
        self._authorizer_on = True
        try:
            cursor = db.execute(stmt.sql, stmt.params)
            rows = cursor.fetchall()
        finally:
            self._authorizer_on = False
        columns = [d[0] for d in cursor.description or ()]
        cursor.close()
        duration = (time.perf_counter() - started) * 1000.0
        changes = db.total_changes - before
        (last_row_id,) = db.execute("SELECT last_insert_rowid()").fetchone()
        meta = {
            "changed_db": changes > 0 or _head_keyword(stmt.sql) in _DDL_HEADS,
            "changes": changes,
            "duration": duration,
            "last_row_id": int(last_row_id),
            "rows_read": len(rows),
            "rows_written": changes,
            "size_after": 0,
            "served_by_primary": True,
            "served_by_region": REGION,
        }
        return columns, rows, meta


# ---------------------------------------------------------------------------
# in-process entry point


class D1Fake:
    """A running fake; made by :func:`serve_d1`."""

    def __init__(self, app: _D1App, *, host: str, port: int) -> None:
        self._app = app
        self.host = host
        self.port = port
        self.api_base = ""
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    @property
    def account_id(self) -> str:
        return self._app.account_id

    @property
    def database_id(self) -> str:
        return self._app.database_id

    @property
    def token(self) -> str:
        return self._app.token

    @property
    def origin(self) -> str:
        """``http://host:port``, where ``/__control/...`` lives."""
        parts = urlsplit(self.api_base)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def database_url(self) -> str:
        return f"{self.api_base}/accounts/{self.account_id}/d1/database/{self.database_id}"

    @property
    def query_url(self) -> str:
        return f"{self.database_url}/query"

    @property
    def raw_url(self) -> str:
        return f"{self.database_url}/raw"

    @property
    def pending_faults(self) -> int:
        return len(self._app.faults)

    def stats(self) -> dict[str, Any]:
        """Same as ``GET /__control/stats``."""
        return self._app.stats()

    def reset_stats(self) -> None:
        self._app.reset_stats()

    def inject(self, fault: str, count: int = 1) -> None:
        """Queue ``count`` faulty answers named ``fault`` (one of :data:`FAULTS`)."""
        self._app.inject(fault, count)

    def clear_faults(self) -> None:
        self._app.faults.clear()

    async def shutdown(self) -> None:
        """Stop serving (gracefully), close the database, and wait until done."""
        self._shutdown.set()
        await self._stopped.wait()

    async def _run(
        self,
        config: Config,
        *,
        task_status: trio.TaskStatus[D1Fake] = trio.TASK_STATUS_IGNORED,
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
                self.api_base = f"{url.scheme}://{url.netloc}{self._app.prefix}"
                task_status.started(self)
        finally:
            self._app.close()
            self._stopped.set()


def _config(host: str, port: int, errorlog: logging.Logger) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = errorlog
    config.graceful_timeout = 2.0
    config.include_server_header = False
    return config


async def serve_d1(
    nursery: trio.Nursery,
    *,
    db_path: str | os.PathLike[str],
    account_id: str = "acc",
    database_id: str = "db",
    token: str = "test-token",
    limit: int | None = None,
    window_s: float = 60.0,
    host: str = "127.0.0.1",
    port: int = 0,
    prefix: str = DEFAULT_PREFIX,
) -> D1Fake:
    """Start the fake in ``nursery``; return once it listens (port 0: an unused one).

    The port comes from the socket hypercorn bound before it reported ready, so
    there is no race.  Stop it with :meth:`D1Fake.shutdown` or by cancelling
    ``nursery``; either closes the SQLite connection.
    """
    app = _D1App(
        db_path=db_path,
        account_id=account_id,
        database_id=database_id,
        token=token,
        limit=limit,
        window_s=window_s,
        prefix=prefix,
    )
    fake = D1Fake(app, host=host, port=port)
    try:
        started: D1Fake = await nursery.start(fake._run, _config(host, port, SERVER_LOG))
    except BaseException:
        app.close()
        raise
    return started


# ---------------------------------------------------------------------------
# process entry point


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, str]:
    parser = argparse.ArgumentParser(description="A fake Cloudflare D1 REST API over SQLite.")
    parser.add_argument("--db", required=True, type=Path, help="the SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account", default="acc")
    parser.add_argument("--database", default="db")
    parser.add_argument(
        "--token-env", default="D1_FAKE_TOKEN", help="environment variable holding the token"
    )
    parser.add_argument("--limit", type=int, default=None, help="requests per window")
    parser.add_argument("--window-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env)
    if not token:
        parser.error(f"environment variable {args.token_env} (--token-env) is not set")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.window_s <= 0:
        parser.error("--window-s must be > 0")
    return args, token


async def _serve_process(args: argparse.Namespace, token: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            fake = await serve_d1(
                nursery,
                db_path=args.db,
                account_id=args.account,
                database_id=args.database,
                token=token,
                limit=args.limit,
                window_s=args.window_s,
                host=args.host,
                port=args.port,
            )
            sys.stdout.write(f"LISTENING {fake.api_base}\n")
            sys.stdout.flush()
            async for signum in signals:
                LOG.info("d1 fake: got signal %d, shutting down", signum)
                break
            await fake.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args, token = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    trio.run(_serve_process, args, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
