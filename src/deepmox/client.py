"""The Python API that the CLI (and the HTTP API) submit and read through.

:meth:`Client.prepare` is where a job spec is validated: the kind must be
registered, the payload must decode into the kind's msgspec type and stay
under 256 KiB. A refused spec raises :class:`~deepmox.errors.RefusedError`
with a message that says why, and nothing is written.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec

from . import wake
from .actors.registry import Registry
from .bindings.d1 import D1, Result, Statement, open_d1
from .config import MAX_PAYLOAD_BYTES, Config
from .errors import RefusedError
from .jobs import Event, Job, dumps, new_id
from .store import JobStore, NewJob

MAX_PRIORITY = 1_000_000
#: writes a submission's statements, told the new jobs' ids (see ``Client``)
SubmitBatch = Callable[[Sequence[Statement], Sequence[str]], Awaitable[list[Result]]]
MAX_ATTEMPTS_LIMIT = 1_000
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: ``jobs --limit`` and ``GET /v1/jobs?limit=`` (0 means all)
MAX_LIST_LIMIT = 999_999_999
_IDEMPOTENCY_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")


def valid_idempotency_key(key: str) -> bool:
    """1 to 255 printable ASCII characters: what an HTTP header carries
    unchanged, so a key means the same through the API and straight to D1."""
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A submission as clients send it (CLI flags, ``POST /v1/jobs``)."""

    kind: str
    payload: Any = msgspec.field(default_factory=dict)
    priority: Annotated[int, msgspec.Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS_LIMIT)] | None = None


def default_node() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Client:
    def __init__(self, cfg: Config, d1: D1, registry: Registry, *,
                 wall: Callable[[], float] = time.time, node: str | None = None,
                 on_submit: Callable[[], None] | None = None,
                 submit_batch: SubmitBatch | None = None) -> None:
        """``on_submit``: called after each submission or retry, in place of
        the local wake-up datagrams (a daemon wakes its own supervisor).
        ``submit_batch``: writes submissions (their statements, and the new
        jobs' ids) in place of ``d1.batch`` and starts their claim itself (a
        daemon's supervisor, whose next pull cycle carries them);
        ``on_submit`` is then left to retries."""
        self.cfg = cfg
        self.on_submit = on_submit
        self.submit_batch = submit_batch
        #: a daemon's own wake-up socket, which its own submissions need not use
        self.own_wake_socket: Path | None = None
        self.d1 = d1
        self.registry = registry
        self.wall = wall
        self.store = JobStore(d1, node=node or cfg.supervisor.node or default_node(), wall=wall)

    def prepare(self, spec: JobSpec, idempotency_key: str | None = None) -> NewJob:
        kind = self.registry.get(spec.kind)
        if kind is None:
            raise RefusedError(
                f"unknown job kind {spec.kind!r} (known: {', '.join(self.registry.names())})")
        encoded = dumps(spec.payload)
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise RefusedError(
                f"payload is {len(encoded):,} bytes; the limit is {MAX_PAYLOAD_BYTES:,}")
        try:
            kind.decode(spec.payload)
        except msgspec.ValidationError as exc:
            raise RefusedError(f"payload for kind {spec.kind!r} does not decode: {exc}") from None
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            raise RefusedError("an idempotency key must be 1 to 255 printable ASCII characters")
        now = self.wall()
        return NewJob(
            id=new_id(now),
            kind=spec.kind,
            payload=encoded,
            priority=spec.priority,
            run_at=now,
            max_attempts=spec.max_attempts or self.cfg.max_attempts_for(spec.kind),
            idempotency_key=idempotency_key,
        )

    async def submit(self, spec: JobSpec, idempotency_key: str | None = None
                     ) -> tuple[Job, bool]:
        """Submit one job; returns it and whether it is new (False: the
        idempotency key named an earlier job, which is returned)."""
        (job, created), = await self.submit_many([(spec, idempotency_key)])
        return job, created

    async def submit_many(self, specs: Sequence[tuple[JobSpec, str | None]]
                          ) -> list[tuple[Job, bool]]:
        """Submit several jobs in one request; all are validated first."""
        prepared = [self.prepare(spec, key) for spec, key in specs]
        if self.submit_batch is None:
            out = await self.store.submit(prepared)
            self._wake()
            return out
        through, ids = self.submit_batch, [j.id for j in prepared]

        async def batch(statements: Sequence[Statement]) -> list[Result]:
            return await through(statements, ids)

        out = await self.store.submit(prepared, batch=batch)
        self._wake(local=False)
        return out

    def _wake(self, *, local: bool = True) -> None:
        if local and self.on_submit is not None:
            self.on_submit()
        if self.cfg.d1.backend == "sqlite":
            wake.notify(self.cfg.d1.path, skip=self.own_wake_socket)

    async def get(self, job_id: str) -> Job:
        return await self.store.get(job_id)

    async def list_jobs(self, *, state: str | None = None, kind: str | None = None,
                        limit: int = 100) -> list[Job]:
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise RefusedError(f"the limit must be 0 (all) to {MAX_LIST_LIMIT}, not {limit}")
        return await self.store.list_jobs(state=state, kind=kind, limit=limit)

    async def events(self, job_id: str) -> list[Event]:
        return await self.store.events(job_id)

    async def cancel(self, job_id: str) -> Job:
        return await self.store.cancel(job_id)

    async def retry(self, job_id: str) -> Job:
        job = await self.store.retry(job_id)
        self._wake()
        return job

    async def counts(self) -> dict[str, int]:
        return await self.store.counts()


@asynccontextmanager
async def open_client(cfg: Config, registry: Registry | None = None) -> AsyncIterator[Client]:
    """A client on the configured D1 backend; closes it on exit. Does not migrate."""
    d1 = open_d1(cfg.d1)
    try:
        yield Client(cfg, d1, registry or Registry.load(cfg.supervisor.kind_modules))
    finally:
        await d1.aclose()
