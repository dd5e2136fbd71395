"""The D1 binding's interface: statements, atomic batches, queries.

One SQLite dialect for every implementation, with the Cloudflare D1 REST API's
rules: positional ``?`` parameters only, at most 100 per statement, no
``BEGIN``/``COMMIT`` and no PRAGMAs -- atomicity comes from :meth:`D1.batch`.

Errors are translated at the implementation's boundary into the classified
families of :mod:`deepmox.errors`: :class:`~deepmox.errors.D1UnavailableError`
(transient), :class:`~deepmox.errors.D1RateLimitedError` and
:class:`~deepmox.errors.D1QueryError` (permanent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

MAX_PARAMS = 100


class Statement(msgspec.Struct, frozen=True):
    sql: str
    params: tuple[Any, ...] = ()


class Result(msgspec.Struct, frozen=True):
    """The rows one statement returned (``columns`` names them), and its changes."""

    columns: list[str]
    rows: list[list[Any]]
    changes: int = 0
    last_row_id: int | None = None

    def dicts(self) -> list[dict[str, Any]]:
        cols = self.columns
        return [dict(zip(cols, row, strict=True)) for row in self.rows]

    def first(self) -> dict[str, Any] | None:
        if not self.rows:
            return None
        return dict(zip(self.columns, self.rows[0], strict=True))

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class D1Statistics(msgspec.Struct, frozen=True, kw_only=True):
    backend: str
    requests: int
    statements: int
    errors: int
    #: seconds spent waiting for answers, summed over requests
    seconds: float
    #: requests this binding may still send now without waiting (None: unlimited)
    budget_remaining: float | None


class D1(Protocol):
    """A SQL system of record."""

    backend: str

    async def batch(self, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` atomically, in order, in one request or transaction;
        one :class:`Result` each. Either all take effect or none does."""
        ...

    async def execute(self, sql: str, *params: Any) -> Result:
        """Run one statement."""
        ...

    def statistics(self) -> D1Statistics: ...

    async def aclose(self) -> None: ...


def check_statement(stmt: Statement) -> None:
    """Refuse what D1 would refuse, so the sqlite backend cannot drift from it."""
    from ...errors import D1QueryError

    if len(stmt.params) > MAX_PARAMS:
        raise D1QueryError(f"too many SQL variables ({len(stmt.params)} > {MAX_PARAMS})")
    head = stmt.sql.lstrip().split(None, 1)[0].upper() if stmt.sql.strip() else ""
    if head in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA"}:
        raise D1QueryError(f"{head} is not allowed in D1 SQL: not authorized")
