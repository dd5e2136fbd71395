"""The daemon's own routes beside the jobs API: ``/metrics``, the live feed
``/v1/feed`` and the status page ``/``, plus the cached view of the fleet
(jobs per state, oldest pending job) that the feed and the metrics share.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..bindings.d1.queries import Q
from ..errors import JobError
from ..jobs import JobState, job_from_row
from .app import Request, Response, Route
from .auth import Access
from .feed import FeedHub, asgi_feed
from .metrics import DaemonCollector, collect_now, render

if TYPE_CHECKING:
    from ..supervisor import Supervisor

#: how often the fleet view is refreshed while anybody looks (sqlite, REST)
REFRESH_S = 2.0
REFRESH_REST_S = 10.0
#: recent jobs in a feed snapshot, besides those in progress
SNAPSHOT_RECENT = 50
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class FleetView:
    """Jobs per state and the oldest pending job, refreshed in the background
    while the feed has listeners or metrics were scraped lately."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.counts: dict[str, int] = {s.value: 0 for s in JobState}
        self.oldest_pending: float | None = None
        self.wanted_until = 0.0
        self.refreshed = trio.Event()

    def want(self) -> None:
        self.wanted_until = trio.current_time() + 60

    async def refresh(self) -> None:
        d1 = self.supervisor.d1
        counts, oldest = await d1.batch(_FLEET)
        fresh = {s.value: 0 for s in JobState}
        fresh.update({row[0]: int(row[1]) for row in counts.rows})
        self.counts = fresh
        value = oldest.scalar()
        self.oldest_pending = float(value) if value is not None else None
        self.refreshed.set()
        self.refreshed = trio.Event()

    async def run(self, hub: FeedHub) -> None:
        every = REFRESH_REST_S if self.supervisor.d1.backend == "http" else REFRESH_S
        while True:
            if hub.active or trio.current_time() < self.wanted_until:
                try:
                    await self.refresh()
                except JobError:
                    pass  # shown again at the next refresh
            await trio.sleep(every)

    def stats(self) -> dict[str, Any]:
        sup = self.supervisor
        s = sup.statistics()
        now = sup.wall()
        return {
            "node": s.node, "running": s.running, "draining": s.draining,
            "claimed": s.claimed, "completed": s.completed, "failed": s.failed,
            "jobs": dict(self.counts),
            "oldest_pending_age_s": (max(0.0, now - self.oldest_pending)
                                     if self.oldest_pending is not None else None),
            "throttles": {k: v for k, v in sup.throttles().items() if v > now},
        }


def _statements() -> list[Any]:
    from ..bindings.d1 import Statement

    return [Statement(Q["count_by_state"]), Statement(Q["oldest_pending"])]


_FLEET = _statements()
_encode = msgspec.json.Encoder().encode


def progress_messages(supervisor: Supervisor) -> list[dict[str, Any]]:
    """Live progress of this daemon's running actors."""
    out = []
    for actor in list(supervisor.actors.values()):
        out.append({"type": "progress", "job_id": actor.job_id, "kind": actor.kind,
                    "progress": round(actor.live_progress(), 4), "step": actor.step,
                    "attempt": actor.attempt})
    return out


def daemon_routes(supervisor: Supervisor, hub: FeedHub, view: FleetView,
                  collector: DaemonCollector) -> list[Route]:
    page = (resources.files("deepmox.api") / "static" / "index.html").read_bytes()

    async def metrics(request: Request) -> Response:
        view.want()
        # collected here, on the loop; only the text is rendered in a thread
        body = await trio.to_thread.run_sync(render, collect_now(collector))
        return Response(200, body, ((b"content-type", METRICS_TYPE),))

    async def status_page(request: Request) -> Response:
        return Response(200, page, ((b"content-type", b"text/html; charset=utf-8"),
                                    (b"cache-control", b"no-cache")))

    async def snapshot(job: str | None) -> dict[str, Any]:
        d1 = supervisor.d1
        if job is None:
            rows = (await d1.execute(Q["feed_snapshot_jobs"], SNAPSHOT_RECENT)).dicts()
        else:
            rows = (await d1.execute(Q["get_job"], job)).dicts()
        jobs = [msgspec.to_builtins(job_from_row(r)) for r in rows]
        return {"jobs": jobs, "stats": view.stats()}

    async def last_event_id() -> int:
        return int((await supervisor.d1.execute(Q["last_event_id"])).scalar() or 0)

    async def feed(request: Request) -> None:
        view.want()
        await asgi_feed(request.scope, request.receive, request.send, hub=hub,
                        snapshot=snapshot, last_event_id=last_event_id)

    return [
        Route("GET", "/metrics", metrics, Access.READ),
        Route("WEBSOCKET", "/v1/feed", feed, Access.READ),
        Route("GET", "/", status_page, Access.PUBLIC),
    ]


def health_of(supervisor: Supervisor, stuck_after_s: float) -> Callable[[], Any]:
    """/healthz: ok while the pull loop ticks; not while draining or stuck."""
    from .app import Health

    started = trio.current_time()

    def health() -> Health:
        s = supervisor.statistics()
        if s.draining:
            return Health(ok=False, reason="draining")
        last = s.last_cycle_at if s.last_cycle_at is not None else started
        quiet = trio.current_time() - last
        if quiet > stuck_after_s:
            return Health(ok=False, reason=f"the pull loop has not completed a cycle for "
                                           f"{quiet:.0f} s")
        return Health(ok=True)

    return health


__all__ = ["FleetView", "daemon_routes", "health_of", "progress_messages"]
