"""Helpers for tests that watch other processes: real daemons, the D1 fake.

Rules these helpers enforce, so that every process-level test follows them:

* Nothing sleeps on the wall clock to wait for something. Another process's
  progress is observed by polling a condition with a bounded timeout, in one
  place only: :func:`wait_until`. Process exits are awaited, not polled.
* Every child runs in its own process group (its own session), so a signal
  reaches exactly the processes a test started, and :class:`Processes` kills
  every group that is still alive when the test ends, whatever happened.
* Results are read straight from the SQLite file that holds the jobs (the
  daemons' file, or the D1 fake's), never through the daemon under test.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from deepmox.bindings.d1 import Statement
from deepmox.bindings.d1.queries import Q

T = TypeVar("T")

#: events that end the lease a ``claimed`` event began
LEASE_ENDING = frozenset({
    "completed", "failed", "retry_scheduled", "continued", "released", "reaped", "cancelled",
    "lease_lost",
})


# -- waiting ----------------------------------------------------------------------

async def wait_until(predicate: Callable[[], T | Awaitable[T | None] | None], timeout: float,
                     interval: float = 0.05, *, what: str = "",
                     explain: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy and
    return that; raise ``AssertionError`` once ``timeout`` seconds have passed.

    The only wall-clock wait in the test suite: another process's progress can
    only be observed, not awaited. ``explain`` adds context (daemon logs, row
    counts) to the failure message.
    """
    deadline = trio.current_time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if trio.current_time() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what or predicate!r}"
            if explain is not None:
                message += "\n" + explain()
            raise AssertionError(message)
        await trio.sleep(interval)  # wall-clock: polling another process


# -- processes --------------------------------------------------------------------

def _open_logs(stdout: Path, stderr: Path) -> tuple[Any, Any]:
    return stdout.open("wb"), stderr.open("wb")


class Proc:
    """A child process in its own process group, its output in two files."""

    def __init__(self, name: str, process: trio.Process, stdout: Path, stderr: Path) -> None:
        self.name = name
        self.process = process
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process group (only while the leader lives:
        a reaped leader's pid may already name someone else's process)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    async def wait(self, timeout: float) -> int:
        """Await the exit (no polling); fail after ``timeout`` seconds."""
        try:
            with trio.fail_after(timeout):
                return await self.process.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:g} s\n{self.describe()}") from None

    async def kill(self) -> int:
        """``kill -9`` the whole group and reap the leader."""
        self.signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            returncode = await self.process.wait()
        return returncode

    def lines(self) -> list[str]:
        """The complete lines written to stdout so far."""
        try:
            text = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[: text.count("\n")]

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The JSON log records whose ``event`` is ``event``."""
        return [r for r in self.json_lines() if r.get("event") == event]

    def describe(self, lines: int = 15) -> str:
        def tail(path: Path) -> str:
            try:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                return "(no output)"

        return (f"--- {self.name} (pid {self.pid}, returncode {self.returncode}) stdout:\n"
                f"{tail(self.stdout_path)}\n--- {self.name} stderr:\n{tail(self.stderr_path)}")


class Processes:
    """Starts children in their own process groups; :meth:`kill_all` ends them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    async def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str],
                    cwd: Path) -> Proc:
        stdout_path = self.log_dir / f"{name}.out"
        stderr_path = self.log_dir / f"{name}.err"
        out, err = _open_logs(stdout_path, stderr_path)
        try:
            process = await trio.lowlevel.open_process(
                list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True)
        finally:
            out.close()
            err.close()
        proc = Proc(name, process, stdout_path, stderr_path)
        self.started.append(proc)
        return proc

    async def kill_all(self) -> None:
        for proc in self.started:
            await proc.kill()

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.started)


# -- the database -----------------------------------------------------------------

def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one read on the SQLite file ``db`` with a fresh connection."""
    with contextlib.closing(sqlite3.connect(db, timeout=10.0)) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(db: Path, sql: str, *params: object) -> Any:
    rows = query(db, sql, *params)
    return rows[0][0] if rows else None


def count_by_state(db: Path) -> dict[str, int]:
    try:
        return dict(query(db, "SELECT state, count(*) FROM jobs GROUP BY state"))
    except sqlite3.OperationalError:  # the daemons have not migrated yet
        return {}


def event_types(db: Path, job_id: str) -> list[str]:
    return [r[0] for r in query(db, "SELECT type FROM job_events WHERE job_id = ? ORDER BY id",
                                job_id)]


def lease_overlaps(events: Iterable[tuple[str, str]]) -> list[str]:
    """Jobs claimed again while an earlier claim's lease had not ended.

    ``events`` are ``(job_id, type)`` in event-id order. Per job, every
    ``claimed`` must be followed by a lease-ending event (:data:`LEASE_ENDING`)
    before the next ``claimed``.
    """
    held: dict[str, bool] = {}
    overlaps = []
    for job_id, kind in events:
        if kind == "claimed":
            if held.get(job_id):
                overlaps.append(job_id)
            held[job_id] = True
        elif kind in LEASE_ENDING:
            held[job_id] = False
    return overlaps


# -- configuration ----------------------------------------------------------------

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """``{"supervisor": {"node": "a"}, "kinds.sleep": {...}}`` as TOML text."""
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


# -- a D1 binding wrapped, to watch or break its batches ------------------------------

class D1Wrapper:
    """A D1 binding around another one: every call goes through, and a test
    subclass overrides :meth:`batch` to watch the batches or break them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.backend = inner.backend

    async def batch(self, statements: Sequence[Statement]) -> list[Any]:
        return list(await self.inner.batch(statements))

    async def execute(self, sql: str, *params: Any) -> Any:
        return (await self.batch([Statement(sql, params)]))[0]

    def statistics(self) -> Any:
        return self.inner.statistics()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ReadBackCounter(D1Wrapper):
    """Counts the event rows the live feed's reads (``tail_events``,
    ``tail_ranges``) got back: the events pull cycles did not know themselves."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.rows = 0

    async def batch(self, statements: Sequence[Statement]) -> list[Any]:
        results = await super().batch(statements)
        for stmt, result in zip(statements, results, strict=True):
            if stmt.sql in (Q["tail_events"], Q["tail_ranges"]):
                self.rows += len(result.rows)
        return results
