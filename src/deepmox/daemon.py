"""The daemon: bindings up, migrations applied, the supervisor running.

``serve`` is what ``deepmox run`` runs, and what tests and the demo start in
their own nurseries (``await nursery.start(serve, cfg)`` returns once the
daemon claims work). SIGTERM or SIGINT drains it; it then returns and the
process exits 0.

Under systemd (``Type=notify``, see ``systemd/deepmox.service``) it reports
through ``$NOTIFY_SOCKET``: ``READY=1`` once migrations are applied, the
bindings are open and the supervisor runs; ``STATUS=`` with its counts;
``WATCHDOG=1`` only while the pull loop cycles (a stuck loop stops the pings
and systemd restarts the service); ``STOPPING=1`` when the drain starts.
"""

from __future__ import annotations

import gc
import itertools
import logging
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._sdnotify import Notifier
from .actors.registry import Registry
from .actors.scratch import ScratchRoot
from .api.ai_metrics import ai_metrics
from .api.feed import FeedHub, ticker
from .api.metrics import DaemonCollector
from .api.server import serve_api
from .api.surface import FleetView, daemon_routes, health_of, progress_messages
from .bindings.ai import AI
from .bindings.d1 import D1, open_d1
from .bindings.d1.migrate import Migration, migrate
from .bindings.r2 import FilesystemR2, open_r2
from .client import Client, default_node
from .config import Config
from .errors import RateLimitedError, TransientError
from .supervisor import Supervisor, SupervisorStatistics
from .wake import WakeListener

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("deepmox.daemon")

#: The SQLite writer thread gives up the GIL inside every sqlite3_step and must
#: win it back from the event loop; Python's default 5 ms switch interval would
#: make it wait that long each time. 1 ms keeps the two overlapping.
SWITCH_INTERVAL_S = 0.001
#: how often STATUS= is refreshed (only sent when its text changed)
STATUS_EVERY_S = 2.0
#: watchdog pings are considered this many times per watchdog interval
WATCHDOG_TICKS = 4
#: a start that finds D1 unavailable or throttling tries again after this
#: long, doubling (with jitter) up to START_RETRY_MAX_S
START_RETRY_MIN_S = 0.5
START_RETRY_MAX_S = 30.0


class Daemon:
    """What a running daemon exposes to whoever started it."""

    def __init__(self, cfg: Config, d1: D1, supervisor: Supervisor, client: Client,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.d1 = d1
        self.supervisor = supervisor
        self.client = client
        #: the live feed's fan-out
        # the feed yields while the local database thread works (a REST
        # cycle in flight only waits on the network)
        self.feed = FeedHub(cfg.server.feed_backlog, busy=(
            supervisor.in_cycle if d1.backend == "sqlite" else lambda: False))
        #: "host:port" the HTTP API listens on, None without one
        self.api_address: str | None = None
        self.notifier = notifier or Notifier({})
        self._stopping_sent = False

    def stop(self) -> None:
        """Start the drain (what SIGTERM and SIGINT do); tell systemd first."""
        self.notify_stopping()
        self.supervisor.stop()

    def notify_stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.stopping()


async def serve(cfg: Config, *, wall: Callable[[], float] = time.time,
                handle_signals: bool = True, node: str | None = None,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    node = node or cfg.supervisor.node or default_node()
    notifier = Notifier()
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    registry = Registry.load(cfg.supervisor.kind_modules)
    r2 = open_r2(cfg.r2)
    d1 = open_d1(cfg.d1)
    ai = AI(cfg)
    scratch: ScratchRoot | None = None
    try:
        applied = await _migrate_when_reachable(d1, wall)
        for m in applied:
            log.info("applied migration %s", m.name, extra={"event": "migrated"})
        ai.log_usability()
        scratch = await trio.to_thread.run_sync(ScratchRoot.open, cfg.video.scratch_dir, node)
        supervisor = Supervisor(cfg, d1, registry, node=node, wall=wall, r2=r2, ai=ai,
                                scratch_base=str(scratch.path))
        client = Client(cfg, d1, registry, wall=wall, node=node, on_submit=supervisor.wake,
                        submit_batch=supervisor.submit_batch)
        daemon = Daemon(cfg, d1, supervisor, client, notifier)
        listener = WakeListener(cfg.d1.path, node) if cfg.d1.backend == "sqlite" else None
        client.own_wake_socket = listener.path if listener is not None else None
        supervisor.attach_feed(daemon.feed)
        view = FleetView(supervisor)
        try:
            await _run(cfg, daemon, view, listener, notifier, registry, handle_signals,
                       task_status)
        finally:
            if listener is not None:
                listener.close()
        log.info("daemon %s stopped", node, extra={"event": "stopped"})
    finally:
        notifier.close()
        with trio.CancelScope(shield=True):
            if scratch is not None:
                await trio.to_thread.run_sync(scratch.close)
            await d1.aclose()
            await r2.aclose()
            await ai.aclose()


async def _migrate_when_reachable(d1: D1, wall: Callable[[], float]) -> list[Migration]:
    """Apply the migrations, waiting out a D1 that is unavailable or throttling
    (a passing fault must not stop a start); a permanent error (a refused
    token, a bad statement) ends the start at once. Each try is safe to repeat:
    a migration whose answer was lost is found applied by the next try."""
    wait = START_RETRY_MIN_S
    while True:
        try:
            return await migrate(d1, wall())
        except (TransientError, RateLimitedError) as exc:
            delay = wait * random.uniform(0.5, 1.5)
            if isinstance(exc, RateLimitedError):
                delay = max(delay, exc.retry_after)
            log.warning("D1 is not ready (%s): %s; the start tries again in %.1f s",
                        exc.error_class, exc.message, delay,
                        extra={"event": "start_retry", "error_class": exc.error_class})
            await trio.sleep(delay)
            wait = min(wait * 2, START_RETRY_MAX_S)


async def _run(cfg: Config, daemon: Daemon, view: FleetView, listener: WakeListener | None,
               notifier: Notifier, registry: Registry, handle_signals: bool,
               task_status: trio.TaskStatus[Daemon]) -> None:
    supervisor, client, d1 = daemon.supervisor, daemon.client, daemon.d1
    r2 = supervisor.bindings.r2
    node = supervisor.node
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        if listener is not None and await listener.open():
            nursery.start_soon(listener.recv_forever, supervisor.wake)
        if handle_signals:
            # started, not start_soon: once READY=1 is out, SIGTERM must drain
            await nursery.start(_on_signals, daemon)
        nursery.start_soon(view.run, daemon.feed)
        nursery.start_soon(daemon.feed.run)
        nursery.start_soon(ticker, daemon.feed,
                           lambda: progress_messages(supervisor), _stats(view))
        if cfg.server.listen:
            ai = supervisor.bindings.require_ai()
            collector = DaemonCollector(
                supervisor, d1, r2, lambda: view.counts,
                extra=lambda: itertools.chain(_feed_metrics(daemon.feed), ai_metrics(ai)))
            stuck_after = max(10.0, 5 * cfg.supervisor.poll_max_s, cfg.d1.timeout_s)
            daemon.api_address = await nursery.start(partial(
                serve_api, cfg, client, health=health_of(supervisor, stuck_after),
                routes=daemon_routes(supervisor, daemon.feed, view, collector)))
        # Everything imported and built so far lives as long as the daemon:
        # moved out of the collector's sight, so that its collections (a
        # full one takes tens of milliseconds) only look at what jobs create.
        gc.collect()
        gc.freeze()
        # READY=1: migrations applied, bindings open, the supervisor
        # claiming and the HTTP port listening.
        notifier.ready()
        log.info("daemon %s running: d1=%s, %d kinds", node, cfg.d1.backend,
                 len(registry.names()), extra={"event": "ready"})
        nursery.start_soon(_report_status, daemon)
        if isinstance(r2, FilesystemR2):
            nursery.start_soon(_sweep_store, r2)
        interval = notifier.watchdog_interval_s()
        if interval is not None and notifier.enabled:
            nursery.start_soon(_watchdog, supervisor, notifier, interval)
        task_status.started(daemon)
        await supervisor.wait_stopped()
        nursery.cancel_scope.cancel()


async def _sweep_store(r2: FilesystemR2) -> None:
    """Remove what writers killed mid-write left in the store, in the background."""
    try:
        removed = await r2.sweep_leftovers()
    except OSError as exc:  # an unreadable folder: the store still works
        log.warning("could not sweep the object store: %s", exc,
                    extra={"event": "store_sweep_failed"})
        return
    if removed:
        log.info("removed %d temporary files that killed writers left in the object store",
                 removed, extra={"event": "store_swept"})


def _stats(view: FleetView) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def stats() -> dict[str, Any]:
        return view.stats()

    return stats


def _feed_metrics(hub: FeedHub) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("deepmox_feed_clients", "Feed clients connected",
                            value=len(hub.clients))
    yield CounterMetricFamily("deepmox_feed_clients_dropped", "Feed clients dropped for "
                              "falling behind", value=hub.dropped_total)


async def _on_signals(daemon: Daemon, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: draining", signal.Signals(signum).name,
                     extra={"event": "signal"})
            daemon.stop()


def status_text(st: SupervisorStatistics) -> str:
    """The one line systemd shows for the daemon (``systemctl status``)."""
    counts = (f"{st.running} running, {st.completed} completed, {st.failed} failed, "
              f"{st.retried} retried")
    return f"draining: {counts}" if st.draining else counts


async def _report_status(daemon: Daemon) -> None:
    """STATUS= when the counts changed, checked every ``STATUS_EVERY_S``; and
    STOPPING=1 if a drain was started without :meth:`Daemon.stop`."""
    sent = ""
    while True:
        st = daemon.supervisor.statistics()
        if st.draining:
            daemon.notify_stopping()
        text = status_text(st)
        if text != sent:
            daemon.notifier.status(text)
            sent = text
        await trio.sleep(STATUS_EVERY_S)


def loop_alive(st: SupervisorStatistics, now: float, interval: float,
               failed_seen_at: float | None) -> bool:
    """Whether the pull loop has shown life within ``interval`` seconds: a
    cycle that reached D1 (``last_cycle_at``) or one that failed trying
    (observed at ``failed_seen_at``): an unreachable D1 is not a stuck loop."""
    marks = [t for t in (st.last_cycle_at, failed_seen_at) if t is not None]
    return bool(marks) and now - max(marks) <= interval


async def _watchdog(supervisor: Supervisor, notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 every ``interval / WATCHDOG_TICKS`` while the pull loop is
    alive (:func:`loop_alive`). An idle loop still cycles every ``poll_max_s``,
    so WatchdogSec must be several times that (and, on the REST backend, above
    the idle floor and ``[d1] timeout_s``)."""
    started = trio.current_time()
    failed = supervisor.statistics().failed_cycles
    failed_seen_at: float | None = None
    silent = False
    while True:
        st = supervisor.statistics()
        now = trio.current_time()
        if st.failed_cycles != failed:
            failed, failed_seen_at = st.failed_cycles, now
        if loop_alive(st, now, interval, failed_seen_at):
            notifier.watchdog()
            if silent:
                silent = False
                log.info("the pull loop cycles again: watchdog pings resumed",
                         extra={"event": "watchdog_resumed"})
        elif not silent and now - started > interval:
            silent = True
            last = max(t for t in (st.last_cycle_at, failed_seen_at, started) if t is not None)
            log.error("the pull loop has shown no life for %.1f s: watchdog pings stopped, "
                      "systemd will restart the daemon", now - last,
                      extra={"event": "watchdog_stopped"})
        await trio.sleep(interval / WATCHDOG_TICKS)
