"""The ``sqlite`` D1 backend: a local file in WAL mode.

One connection, driven by a dedicated writer thread that takes batches from a
queue in order, so the event loop never blocks on disk -- and the thread
starts the next queued batch the moment one ends, without a round trip
through the event loop (the supervisor's two lanes rely on that to overlap
their database work with their actors). Batches run
in ``BEGIN IMMEDIATE`` transactions: writers queue on SQLite's lock for up to
``busy_timeout_s`` instead of failing, which is what several daemons on one
file need.

Durability: ``synchronous = "full"`` (the default) fsyncs the WAL at every
commit, so an acknowledged submission or outcome survives power loss;
``"normal"`` survives a crash of the process but may lose the last commits on
power loss.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import outcome
import trio

from ...errors import D1QueryError, D1UnavailableError
from .interface import D1Statistics, Result, Statement, check_statement

_TRANSIENT_MARKERS = ("locked", "busy", "disk i/o", "unable to open")


def _map(exc: sqlite3.Error) -> D1QueryError | D1UnavailableError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and any(
        m in message.lower() for m in _TRANSIENT_MARKERS
    ):
        return D1UnavailableError(f"sqlite: {message}")
    return D1QueryError(f"sqlite: {message}")


class SqliteD1:
    backend = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "full", busy_timeout_s: float = 10.0,
                 in_thread: bool = True):
        """``in_thread=False`` runs statements on the event loop's own thread:
        for tests on a virtual clock, where a worker thread would let the
        clock jump while a statement runs."""
        self.path = path
        self._in_thread = in_thread
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout_s,
                cached_statements=256,
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            raise _map(exc) from exc
        self._jobs: queue.SimpleQueue[
            tuple[Sequence[Statement], trio.lowlevel.Task, trio.lowlevel.TrioToken] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._requests = 0
        self._seconds = 0.0
        self._statements = 0
        self._errors = 0

    # -- the worker-thread side ------------------------------------------------

    def _run_one(self, cur: sqlite3.Cursor, stmt: Statement) -> Result:
        cur.execute(stmt.sql, stmt.params)
        rows = cur.fetchall()
        columns = [d[0] for d in cur.description] if cur.description else []
        return Result(
            columns=columns,
            rows=[list(r) for r in rows],
            changes=max(cur.rowcount, 0),
            last_row_id=cur.lastrowid,
        )

    def _batch_sync(self, statements: Sequence[Statement]) -> list[Result]:
        cur = self._conn.cursor()
        try:
            if len(statements) == 1:
                return [self._run_one(cur, statements[0])]
            cur.execute("BEGIN IMMEDIATE")
            try:
                results = [self._run_one(cur, s) for s in statements]
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise
            return results
        finally:
            cur.close()

    def _writer(self) -> None:
        while (job := self._jobs.get()) is not None:
            statements, task, token = job
            result = outcome.capture(self._batch_sync, statements)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # pragma: no cover - the loop is gone
                pass
        self._conn.close()

    async def _in_writer(self, statements: Sequence[Statement]) -> list[Result]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="deepmox-sqlite",
                                            daemon=True)
            self._thread.start()
        self._jobs.put((statements, trio.lowlevel.current_task(),
                        trio.lowlevel.current_trio_token()))
        # Not abortable: once queued, the batch runs, and its outcome must be
        # known (a commit the caller never heard of would be a lost answer).
        result: list[Result] = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    # -- the event-loop side ---------------------------------------------------

    async def batch(self, statements: Sequence[Statement]) -> list[Result]:
        for s in statements:
            check_statement(s)
        self._requests += 1
        self._statements += len(statements)
        began = time.perf_counter()
        try:
            if not self._in_thread:
                await trio.lowlevel.checkpoint()
                return self._batch_sync(statements)
            return await self._in_writer(statements)
        except sqlite3.Error as exc:
            self._errors += 1
            raise _map(exc) from exc
        except (OverflowError, UnicodeEncodeError) as exc:
            # a parameter SQLite cannot hold (an integer beyond 64 bits, text
            # with a lone surrogate): the statement can never succeed
            self._errors += 1
            raise D1QueryError(f"sqlite: a parameter cannot be stored: {exc}") from exc
        finally:
            self._seconds += time.perf_counter() - began

    async def execute(self, sql: str, *params: Any) -> Result:
        return (await self.batch([Statement(sql, params)]))[0]

    def statistics(self) -> D1Statistics:
        return D1Statistics(
            backend=self.backend,
            requests=self._requests,
            statements=self._statements,
            errors=self._errors,
            seconds=self._seconds,
            budget_remaining=None,
        )

    async def aclose(self) -> None:
        if self._thread is None:
            self._conn.close()
            return
        self._jobs.put(None)
        await trio.to_thread.run_sync(self._thread.join)
        self._thread = None
