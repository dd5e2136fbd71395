"""Fixtures for process-level tests: real daemons on a real SQLite file, or on
the D1 REST fake running as its own process.

A :class:`Cluster` writes one configuration file per daemon (each with its own
``node`` name), starts ``deepmox --config X --log-format json run`` in its own
process group, and waits for the daemon's ``ready`` log record. Whatever a
test does, the ``processes`` fixture kills every process group it started.

Backends: the ``cluster`` fixture is SQLite unless a test parametrizes it
indirectly with ``"http"``; then the daemons and the test's client talk to
``tests/fakes/d1_server.py`` over HTTP, and :attr:`Cluster.db` is the fake's
file, read directly like the daemons' own file would be.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest

from deepmox import config
from deepmox.client import JobSpec, open_client
from tests.helpers import Proc, Processes, count_by_state, toml, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAKE = ROOT / "tests" / "fakes" / "d1_server.py"
#: made up: the fake accepts whatever it is given in $D1_FAKE_TOKEN
TOKEN = "integration-token-not-a-secret"
TOKEN_ENV = "CLOUDFLARE_API_TOKEN"

#: how long a daemon (or the fake) may take to start on a busy 2-core machine
START_TIMEOUT_S = 20.0
#: submissions per request: far below any statement or request size limit
SUBMIT_CHUNK = 500


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        await procs.kill_all()


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (config.CONFIG_ENV, TOKEN_ENV, "D1_FAKE_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Daemon:
    def __init__(self, node: str, config_path: Path, proc: Proc) -> None:
        self.node = node
        self.config_path = config_path
        self.proc = proc

    def __repr__(self) -> str:
        return f"<Daemon {self.node} pid={self.proc.pid}>"


class Cluster:
    """Daemons sharing one system of record, and a client to submit with."""

    def __init__(self, tmp_path: Path, processes: Processes, backend: str) -> None:
        self.tmp_path = tmp_path
        self.processes = processes
        self.backend = backend
        self.db = tmp_path / ("fake.db" if backend == "http" else "deepmox.db")
        self.api_base = ""
        self.daemons: list[Daemon] = []
        self.fake: Proc | None = None

    @property
    def origin(self) -> str:
        """Where the fake's ``/__control/...`` endpoints live."""
        return self.api_base.removesuffix("/client/v4")

    async def start_fake(self) -> None:
        self.fake = await self.processes.start(
            "d1-fake", [sys.executable, str(FAKE), "--db", str(self.db), "--port", "0"],
            env=_child_env(D1_FAKE_TOKEN=TOKEN), cwd=self.tmp_path)
        fake = self.fake

        def listening() -> str | None:
            for line in fake.lines():
                if line.startswith("LISTENING "):
                    return line.split(" ", 1)[1].strip()
            if not fake.alive:
                raise AssertionError(f"the D1 fake exited\n{fake.describe()}")
            return None

        self.api_base = await wait_until(listening, START_TIMEOUT_S, what="the D1 fake",
                                         explain=fake.describe)

    def d1_section(self) -> dict[str, object]:
        if self.backend == "http":
            return {"backend": "http", "api_base": self.api_base, "account_id": "acc",
                    "database_id": "db", "requests_per_5min": 100_000}
        return {"backend": "sqlite", "path": str(self.db)}

    def write_config(self, node: str, supervisor: dict[str, object] | None = None,
                     kinds: dict[str, dict[str, object]] | None = None,
                     d1: dict[str, object] | None = None,
                     sections: dict[str, dict[str, object]] | None = None) -> Path:
        sections_out: dict[str, dict[str, object]] = {
            "d1": {**self.d1_section(), **(d1 or {})},
            "r2": {"path": str(self.tmp_path / "r2")},
            "server": {"listen": ""},
            "supervisor": {"node": node, **(supervisor or {})},
        }
        for name, values in (kinds or {}).items():
            sections_out[f'kinds."{name}"'] = values
        sections_out.update(sections or {})
        path = self.tmp_path / f"{node}.toml"
        path.write_text(toml(sections_out))
        return path

    async def start_daemon(self, node: str, *, wait_ready: bool = True,
                           env: dict[str, str] | None = None, **options: Any) -> Daemon:
        """Start ``deepmox run`` as node ``node``; ``options`` go to :meth:`write_config`,
        ``env`` to its environment."""
        path = self.write_config(node, **options)
        env = _child_env(**({TOKEN_ENV: TOKEN} if self.backend == "http" else {}),
                         **(env or {}))
        proc = await self.processes.start(
            node, [str(BIN / "deepmox"), "--config", str(path), "--log-format", "json", "run"],
            env=env, cwd=self.tmp_path)
        daemon = Daemon(node, path, proc)
        self.daemons.append(daemon)
        if wait_ready:
            await self.wait_ready(daemon)
        return daemon

    async def wait_ready(self, daemon: Daemon) -> None:
        def ready() -> bool:
            if not daemon.proc.alive:
                raise AssertionError(f"{daemon.node} exited\n{daemon.proc.describe()}")
            return bool(daemon.proc.logged("ready"))

        await wait_until(ready, START_TIMEOUT_S, what=f"{daemon.node} to be ready",
                         explain=daemon.proc.describe)

    def client_config(self) -> config.Config:
        return config.decode(toml({"d1": self.d1_section(),
                                    "supervisor": {"node": "integration-test"}}))

    async def submit(self, kind: str, payloads: Sequence[dict[str, Any]],
                     **spec: Any) -> list[str]:
        """Submit one ``kind`` job per payload, ``SUBMIT_CHUNK`` per request; their
        ids. ``spec``: more fields of every job spec (``max_attempts``, ...)."""
        ids: list[str] = []
        async with open_client(self.client_config()) as client:
            for i in range(0, len(payloads), SUBMIT_CHUNK):
                chunk = payloads[i:i + SUBMIT_CHUNK]
                done = await client.submit_many(
                    [(msgspec.convert({"kind": kind, "payload": p, **spec}, JobSpec), None)
                     for p in chunk])
                ids.extend(job.id for job, _ in done)
        return ids

    def counts(self) -> dict[str, int]:
        return count_by_state(self.db)

    async def wait_all(self, state: str, n: int, timeout: float) -> None:
        """Wait until ``n`` jobs are in ``state``."""
        await wait_until(lambda: self.counts().get(state, 0) >= n, timeout,
                         what=f"{n} jobs {state}",
                         explain=lambda: f"counts {self.counts()}\n{self.processes.describe()}")

    async def fake_stats(self) -> dict[str, Any]:
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"{self.origin}/__control/stats")
            response.raise_for_status()
            stats: dict[str, Any] = response.json()
            return stats

    async def reset_fake_stats(self) -> None:
        async with httpx2.AsyncClient() as http:
            response = await http.post(f"{self.origin}/__control/reset_stats")
            response.raise_for_status()

    def describe(self) -> str:
        return f"counts {self.counts()}\n{self.processes.describe()}"


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path, processes: Processes,
                  monkeypatch: pytest.MonkeyPatch) -> Cluster:
    backend = getattr(request, "param", "sqlite")
    c = Cluster(tmp_path, processes, backend)
    if backend == "http":
        # the test's own client reads its token the way the daemons do
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        await c.start_fake()
    return c
