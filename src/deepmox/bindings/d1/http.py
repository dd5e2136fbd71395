"""The ``http`` D1 backend: the Cloudflare D1 REST API over httpx2.

Every batch is one ``POST .../raw`` (rows as arrays: fewer bytes than
``/query``'s objects) carrying ``{"batch": [{"sql", "params"}, ...]}``, which D1
runs atomically. Each request first spends one token of the shared
:class:`~.budget.RequestBudget`.

Failures are classified here and nowhere else:

=====================================================  ==================
what came back                                         class
=====================================================  ==================
network error, timeout, reset; "Network connection     transient
lost", "storage caused object to be reset", "reset
because its code was updated"; other 5xx
HTTP 429; "D1 DB is overloaded"                        rate_limited
SQL error (code 7500), 400, 401, 403, 404              permanent
=====================================================  ==================
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx2
import msgspec

from ...errors import D1Error, D1QueryError, D1RateLimitedError, D1UnavailableError
from .budget import RequestBudget
from .interface import D1Statistics, Result, Statement, check_statement

UPSTREAM = "d1"
DEFAULT_RETRY_AFTER_S = 10.0
_TRANSIENT_MESSAGES = (
    "network connection lost",
    "storage caused object to be reset",
    "reset because its code was updated",
    "internal error",
)
_OVERLOADED_MESSAGES = ("d1 db is overloaded", "too many requests queued")


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class _Meta(msgspec.Struct):
    changes: int = 0
    last_row_id: int | None = None


class _RawRows(msgspec.Struct):
    columns: list[str] = msgspec.field(default_factory=list)
    rows: list[list[Any]] = msgspec.field(default_factory=list)


class _RawResult(msgspec.Struct):
    results: _RawRows | None = None
    meta: _Meta = msgspec.field(default_factory=_Meta)
    success: bool = True


class _Envelope(msgspec.Struct):
    success: bool = False
    errors: list[_Error] = msgspec.field(default_factory=list)
    result: list[_RawResult] | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode


def _retry_after(response: httpx2.Response) -> float:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else DEFAULT_RETRY_AFTER_S
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def classify(status: int, errors: list[_Error], retry_after: float) -> D1Error:
    """The class of a failed answer: by D1's messages first, then by HTTP status."""
    text = "; ".join(f"{e.message} (code {e.code})" for e in errors) or f"HTTP {status}"
    lowered = text.lower()
    if status == 429 or any(m in lowered for m in _OVERLOADED_MESSAGES):
        return D1RateLimitedError(f"D1 is throttling: {text}", upstream=UPSTREAM,
                                  retry_after=retry_after)
    if any(m in lowered for m in _TRANSIENT_MESSAGES) or status >= 500:
        return D1UnavailableError(f"D1 is unavailable: {text}")
    if status in (401, 403):
        return D1QueryError(f"D1 refused the credentials (HTTP {status}): {text}")
    return D1QueryError(f"D1 refused the statement (HTTP {status}): {text}")


class HttpD1:
    backend = "http"

    def __init__(
        self,
        *,
        api_base: str,
        account_id: str,
        database_id: str,
        token: str,
        requests_per_5min: int,
        timeout_s: float = 30.0,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        base = api_base.rstrip("/")
        self.url = f"{base}/accounts/{account_id}/d1/database/{database_id}/raw"
        self.budget = RequestBudget(requests_per_5min)
        self._client = client or httpx2.AsyncClient(timeout=timeout_s)
        self._headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        self._requests = 0
        self._seconds = 0.0
        self._statements = 0
        self._errors = 0

    async def batch(self, statements: Sequence[Statement]) -> list[Result]:
        for s in statements:
            check_statement(s)
        try:
            body = _encode({"batch": [{"sql": s.sql, "params": list(s.params)}
                                      for s in statements]})
        except (UnicodeEncodeError, TypeError) as exc:
            raise D1QueryError(f"D1: a parameter cannot be sent: {exc}") from exc
        await self.budget.acquire()
        self._requests += 1
        self._statements += len(statements)
        began = time.perf_counter()
        try:
            response = await self._client.post(self.url, content=body, headers=self._headers)
        except httpx2.HTTPError as exc:
            self._errors += 1
            # str(exc) names the failure (a refused connection, a read timeout),
            # never the request's headers, so the token cannot leak into it.
            raise D1UnavailableError(
                f"D1 is unreachable: {type(exc).__name__}: {exc}") from exc
        finally:
            self._seconds += time.perf_counter() - began
        try:
            envelope = _decode_envelope(response.content)
        except ValueError:  # not JSON, not UTF-8 (a body cut off mid-character)
            envelope = None
        if response.status_code == 200 and envelope is None:
            self._errors += 1
            raise D1UnavailableError("D1 answered HTTP 200 with a body that is not its JSON "
                                     f"({len(response.content)} bytes)")
        if response.status_code != 200 or envelope is None or not envelope.success:
            self._errors += 1
            errors = envelope.errors if envelope is not None else []
            raise classify(response.status_code, errors, _retry_after(response))
        entries = envelope.result or []
        if len(entries) != len(statements):
            self._errors += 1
            raise D1UnavailableError(
                f"D1 answered {len(entries)} results for {len(statements)} statements")
        return [
            Result(
                columns=e.results.columns if e.results else [],
                rows=e.results.rows if e.results else [],
                changes=e.meta.changes,
                last_row_id=e.meta.last_row_id,
            )
            for e in entries
        ]

    async def execute(self, sql: str, *params: Any) -> Result:
        return (await self.batch([Statement(sql, params)]))[0]

    def statistics(self) -> D1Statistics:
        return D1Statistics(
            backend=self.backend,
            requests=self._requests,
            statements=self._statements,
            errors=self._errors,
            seconds=self._seconds,
            budget_remaining=self.budget.remaining(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
