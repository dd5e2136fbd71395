"""Fixtures for unit tests on the virtual clock.

A supervisor here runs on a SQLite file whose statements execute on the event
loop's own thread (``in_thread=False``), so the autojump clock cannot jump
while a statement runs, and the wall clock it writes into D1 is the virtual
clock plus a fixed base: every time in these tests is exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from deepmox.actors.registry import Registry
from deepmox.bindings.d1 import SqliteD1
from deepmox.bindings.d1.migrate import migrate
from deepmox.client import Client, JobSpec
from deepmox.config import Config, decode
from deepmox.jobs import Event, Job
from deepmox.supervisor import Supervisor

BASE = 1_800_000_000.0


def wall() -> float:
    return BASE + trio.current_time()


class Harness:
    def __init__(self, path: str, cfg: Config, registry: Registry) -> None:
        self.path = path
        self.cfg = cfg
        self.registry = registry
        self.d1 = SqliteD1(path, in_thread=False)
        self.client = Client(cfg, self.d1, registry, wall=wall, node="test")

    async def submit(self, kind: str, payload: dict[str, Any] | None = None,
                     key: str | None = None, **extra: Any) -> Job:
        spec = msgspec.convert({"kind": kind, "payload": payload or {}, **extra}, JobSpec)
        job, _ = await self.client.submit(spec, key)
        return job

    async def job(self, job_id: str) -> Job:
        return await self.client.get(job_id)

    async def events(self, job_id: str) -> list[Event]:
        return await self.client.events(job_id)

    async def types(self, job_id: str) -> list[str]:
        return [e.type for e in await self.events(job_id)]

    @asynccontextmanager
    async def supervisor(self, node: str = "a", cfg: Config | None = None
                         ) -> AsyncIterator[Supervisor]:
        """A running supervisor with its own connection; drained on exit."""
        d1 = SqliteD1(self.path, in_thread=False)
        sup = Supervisor(cfg or self.cfg, d1, self.registry, node=node, wall=wall)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                yield sup
                sup.stop()
        finally:
            await d1.aclose()

    async def wait_event(self, sup: Supervisor, job_id: str, event: str) -> Event:
        """Wait, cycle by cycle, until the job's timeline shows ``event``."""
        while True:
            for e in await self.events(job_id):
                if e.type == event:
                    return e
            await sup.wait_cycle()

    async def wait_state(self, sup: Supervisor, job_id: str, *states: str) -> Job:
        """Wait, cycle by cycle, until the job reaches one of ``states``."""
        while True:
            job = await self.job(job_id)
            if job.state in states:
                return job
            await sup.wait_cycle()


@pytest.fixture
def make_harness(tmp_path: Path) -> Callable[..., Any]:
    made: list[Harness] = []

    @asynccontextmanager
    async def make(toml: str = "", registry: Registry | None = None
                   ) -> AsyncIterator[Harness]:
        cfg = decode(toml)
        h = Harness(str(tmp_path / f"h{len(made)}.db"), cfg, registry or Registry.load())
        made.append(h)
        await migrate(h.d1, wall())
        try:
            yield h
        finally:
            await h.d1.aclose()

    return make
