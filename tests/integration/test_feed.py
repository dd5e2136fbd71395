"""The live feed, /metrics and the status page on a real daemon port.

Rules: daemons run in-process (``daemon.serve``) on a real SQLite file with
``[server] listen = "127.0.0.1:0"``; clients are trio-websocket and httpx2
over loopback. Waiting is on messages and events with bounded timeouts,
never on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from deepmox import config
from deepmox.actors.registry import Registry
from deepmox.api.feed import FeedHub
from deepmox.bindings.d1.http import HttpD1
from deepmox.bindings.d1.migrate import migrate
from deepmox.bindings.d1.queries import Q
from deepmox.client import Client, JobSpec
from deepmox.daemon import Daemon, serve
from deepmox.supervisor import Supervisor
from deepmox.supervisor.timeline import FeedEvent
from tests.conftest import TOKEN
from tests.fakes.d1_server import D1Fake
from tests.helpers import ReadBackCounter

pytestmark = pytest.mark.slow


def make_config(tmp_path: Path, node: str, listen: str = "127.0.0.1:0",
                max_actors: int = 200, server: str = "") -> config.Config:
    return config.decode(
        f'[d1]\npath = "{tmp_path / "feed.db"}"\n[r2]\npath = "{tmp_path / "r2"}"\n'
        f'[server]\nlisten = "{listen}"\n{server}\n'
        f'[supervisor]\nnode = "{node}"\npoll_max_s = 0.1\nmax_actors = {max_actors}\n')


@asynccontextmanager
async def running(cfg: config.Config) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve(cfg, handle_signals=False, task_status=task_status))
        try:
            yield daemon
        finally:
            daemon.stop()


class Feed:
    """Messages from a feed socket, one at a time (a frame may carry several,
    one JSON object per line)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []
        self.frames = 0

    async def next(self) -> dict[str, Any]:
        while not self.pending:
            frame = await self.ws.get_message()
            self.frames += 1
            self.pending = [msgspec.json.decode(line) for line in frame.splitlines() if line]
        return self.pending.pop(0)


async def submit(daemon: Daemon, kind: str, n: int, payload: dict[str, Any] | None = None
                 ) -> list[str]:
    done = await daemon.client.submit_many(
        [(JobSpec(kind=kind, payload=payload or {}), None)] * n)
    return [job.id for job, _ in done]


async def test_snapshot_then_every_event_in_order(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, "a")) as daemon:
        earlier = await submit(daemon, "noop", 1)
        with trio.fail_after(10):
            while (await daemon.client.get(earlier[0])).state != "completed":
                await daemon.supervisor.wait_cycle()
        url = f"ws://{daemon.api_address}/v1/feed"
        async with open_websocket_url(url) as socket:
            ws = Feed(socket)
            snapshot = await ws.next()
            assert snapshot["type"] == "snapshot"
            assert earlier[0] in [j["id"] for j in snapshot["jobs"]]
            assert "running" in snapshot["stats"]
            ids = await submit(daemon, "noop", 20)
            seen: dict[str, list[str]] = {i: [] for i in ids}
            last_id = 0
            with trio.fail_after(20):
                while not all(v and v[-1] == "completed" for v in seen.values()):
                    m = await ws.next()
                    if m["type"] != "event":
                        continue
                    assert m["id"] > last_id, "events arrive in order"
                    last_id = m["id"]
                    if m["job_id"] in seen:
                        assert m["kind"] == "noop"
                        seen[m["job_id"]].append(m["event"])
            for events in seen.values():
                assert events == ["submitted", "claimed", "completed"]


async def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    # 20,000 jobs make 60,000 events (~15 MB): more than the stalled client's
    # backlog and the kernel's socket buffers together
    backlog = 10_000
    assert backlog * 3 < 60_000
    cfg = make_config(tmp_path, "a", server=f"feed_backlog = {backlog}")
    async with running(cfg) as daemon:
        url = f"ws://{daemon.api_address}/v1/feed"
        completed: set[str] = set()
        async with open_websocket_url(url) as reader, \
                open_websocket_url(url, message_queue_size=0) as stalled, \
                trio.open_nursery() as nursery:
            feed = Feed(reader)
            assert (await feed.next())["type"] == "snapshot"

            async def read() -> None:
                while True:
                    m = await feed.next()
                    if m["type"] == "event" and m["event"] == "completed":
                        completed.add(m["job_id"])

            nursery.start_soon(read)
            # batch by batch, so that a reader sharing this process's one
            # event loop with the daemon keeps up; the stalled client's queue
            # grows by 6,000 events a batch until it is dropped
            ids: set[str] = set()
            for _ in range(10):
                batch = set(await submit(daemon, "noop", 2000))
                ids |= batch
                with trio.fail_after(60):
                    while not batch <= completed:
                        await daemon.supervisor.wait_cycle()
            nursery.cancel_scope.cancel()
            assert daemon.feed.dropped_total == 1, "only the stalled client is dropped"
            code = None
            with trio.fail_after(10):
                try:
                    while True:
                        await stalled.get_message()
                except ConnectionClosed as exc:
                    code = exc.reason.code
            assert code == 1013
        assert (await daemon.client.counts())["completed"] == len(ids)


async def test_events_of_another_daemon_arrive(tmp_path: Path) -> None:
    # a runs one actor, b twenty: most jobs are b's, and a's feed shows them
    async with running(make_config(tmp_path, "a", max_actors=1)) as a:
        url = f"ws://{a.api_address}/v1/feed"
        async with open_websocket_url(url) as socket:
            ws = Feed(socket)
            await ws.next()  # the snapshot
            async with running(make_config(tmp_path, "b", listen="", max_actors=20)) as b:
                ids = set(await submit(b, "sleep", 20, {"seconds": 0.2}))
                nodes = set()
                with trio.fail_after(30):
                    while ids:
                        m = await ws.next()
                        if m.get("event") == "completed" and m["job_id"] in ids:
                            ids.discard(m["job_id"])
                            nodes.add(m["node"])
                assert "b" in nodes


def rest_config(tmp_path: Path, d1_fake: D1Fake, node: str, listen: str) -> config.Config:
    return config.decode(
        f'[d1]\nbackend = "http"\napi_base = "{d1_fake.api_base}"\n'
        f'account_id = "{d1_fake.account_id}"\ndatabase_id = "{d1_fake.database_id}"\n'
        'requests_per_5min = 100000\n'
        f'[r2]\npath = "{tmp_path / "r2"}"\n[server]\nlisten = "{listen}"\n'
        f'[supervisor]\nnode = "{node}"\npoll_max_s = 0.1\n')


async def test_the_fleet_feed_on_the_rest_backend(tmp_path: Path, d1_fake: D1Fake,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Two daemons on one D1 database (the REST fake): a's feed shows every
    # event of both, in id order, each once, as the database holds them --
    # a's own from its cycles' answers, b's and the submissions read back.
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    async with running(rest_config(tmp_path, d1_fake, "a", "127.0.0.1:0")) as a:
        url = f"ws://{a.api_address}/v1/feed"
        async with open_websocket_url(url) as socket:
            ws = Feed(socket)
            await ws.next()  # the snapshot
            async with running(rest_config(tmp_path, d1_fake, "b", "")) as b:
                ids = await submit(a, "noop", 5) + await submit(b, "sleep", 5,
                                                                 {"seconds": 0.05})
                got: list[dict[str, Any]] = []
                done: set[str] = set()
                with trio.fail_after(30):
                    while done != set(ids):
                        m = await ws.next()
                        if m["type"] != "event":
                            continue
                        got.append(m)
                        if m["event"] == "completed":
                            done.add(m["job_id"])
            assert [m["id"] for m in got] == sorted({m["id"] for m in got}), "in order, once"
            assert {m["node"] for m in got} == {"a", "b"}
            for job_id in ids:
                stored = [msgspec.to_builtins(e) for e in await a.client.events(job_id)]
                mine = [m for m in got if m["job_id"] == job_id]
                # `deepmox events` names the event's type `type`; the feed, `event`
                assert [{"type" if k == "event" else k: v for k, v in m.items()
                         if k not in ("type", "kind")} for m in mine] == stored


async def test_a_rest_daemon_reads_back_only_what_others_wrote(
        tmp_path: Path, d1_fake: D1Fake) -> None:
    # the REST binding's answers (changes, last_row_id of each statement)
    # give a cycle the ids of the events it wrote, as SQLite's do
    def http() -> HttpD1:
        return HttpD1(api_base=d1_fake.api_base, account_id=d1_fake.account_id,
                      database_id=d1_fake.database_id, token=TOKEN,
                      requests_per_5min=100_000)

    cfg = config.decode('[supervisor]\npoll_max_s = 0.1\n')
    registry = Registry.load()
    d1, client_d1 = ReadBackCounter(http()), http()
    try:
        await migrate(client_d1, time.time())
        client = Client(cfg, client_d1, registry, node="client")
        sup = Supervisor(cfg, d1, registry, node="a")  # type: ignore[arg-type]
        hub = FeedHub()
        sup.attach_feed(hub)
        listener = hub.connect()
        hub.cursor = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ids = [job.id for job, _ in await client.submit_many(
                [(JobSpec(kind="sleep", payload={"seconds": 0.05, "steps": 2}), None)] * 4)]
            with trio.fail_after(30):
                while (await client.counts())["completed"] < len(ids):
                    await sup.wait_cycle()
                for _ in range(3):
                    await sup.wait_cycle()
            sup.stop()
        hub.flush()
        got = [msgspec.json.decode(line) for text, _ in listener.frames
               for line in text.split("\n")]
        rows = (await client_d1.execute(Q["tail_events"], 0, 1000)).rows
    finally:
        await d1.aclose()
        await client_d1.aclose()
    assert got == [msgspec.to_builtins(FeedEvent(*row)) for row in rows]
    assert len(got) == 4 * 4, "submitted, claimed, the first step's checkpoint, completed"
    assert d1.rows == 4, "only the client's submissions were read back"


async def test_metrics_on_the_rest_backend(tmp_path: Path, d1_fake: D1Fake,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: /metrics collected its figures in a worker thread, where the
    # D1 REST budget's trio.current_time() raises "must be called from async
    # context": every scrape of a REST-backed daemon was a 500.
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    cfg = config.decode(
        f'[d1]\nbackend = "http"\napi_base = "{d1_fake.api_base}"\n'
        f'account_id = "{d1_fake.account_id}"\ndatabase_id = "{d1_fake.database_id}"\n'
        f'[r2]\npath = "{tmp_path / "r2"}"\n[server]\nlisten = "127.0.0.1:0"\n'
        '[supervisor]\nnode = "rest"\npoll_max_s = 0.1\n')
    async with running(cfg) as daemon:
        (job_id,) = await submit(daemon, "noop", 1)
        with trio.fail_after(10):
            while (await daemon.client.get(job_id)).state != "completed":
                await daemon.supervisor.wait_cycle()
        async with httpx2.AsyncClient(base_url=f"http://{daemon.api_address}") as http:
            for _ in range(3):
                metrics = await http.get("/metrics")
                assert metrics.status_code == 200, metrics.text
        assert "deepmox_d1_budget_remaining " in metrics.text
        assert 'deepmox_jobs_completed_total{kind="noop"} 1.0' in metrics.text


async def test_metrics_and_the_status_page(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, "a")) as daemon:
        (job_id,) = await submit(daemon, "noop", 1)
        with trio.fail_after(10):
            while (await daemon.client.get(job_id)).state != "completed":
                await daemon.supervisor.wait_cycle()
        async with httpx2.AsyncClient(base_url=f"http://{daemon.api_address}") as http:
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert 'deepmox_jobs_completed_total{kind="noop"} 1.0' in metrics.text
            page = await http.get("/")
            assert page.status_code == 200
            assert "/v1/feed" in page.text
            health = await http.get("/healthz")
            assert health.json() == {"ok": True}
