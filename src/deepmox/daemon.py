"""The daemon: bindings up, migrations applied, the supervisor running.

``serve`` is what ``deepmox run`` runs, and what tests and the demo start in
their own nurseries (``await nursery.start(serve, cfg)`` returns once the
daemon claims work). SIGTERM or SIGINT drains it; it then returns and the
process exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable

import trio

from .actors.registry import Registry
from .bindings.d1 import D1, open_d1
from .bindings.d1.migrate import migrate
from .bindings.r2 import open_r2
from .client import Client, default_node
from .config import Config
from .supervisor import Supervisor
from .wake import WakeListener

log = logging.getLogger("deepmox.daemon")

#: The SQLite writer thread gives up the GIL inside every sqlite3_step and must
#: win it back from the event loop; Python's default 5 ms switch interval would
#: make it wait that long each time. 1 ms keeps the two overlapping.
SWITCH_INTERVAL_S = 0.001


class Daemon:
    """What a running daemon exposes to whoever started it."""

    def __init__(self, cfg: Config, d1: D1, supervisor: Supervisor, client: Client) -> None:
        self.cfg = cfg
        self.d1 = d1
        self.supervisor = supervisor
        self.client = client

    def stop(self) -> None:
        self.supervisor.stop()


async def serve(cfg: Config, *, wall: Callable[[], float] = time.time,
                handle_signals: bool = True, node: str | None = None,
                task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    node = node or cfg.supervisor.node or default_node()
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    registry = Registry.load(cfg.supervisor.kind_modules)
    r2 = open_r2(cfg.r2)
    d1 = open_d1(cfg.d1)
    try:
        applied = await migrate(d1, wall())
        for m in applied:
            log.info("applied migration %s", m.name, extra={"event": "migrated"})
        supervisor = Supervisor(cfg, d1, registry, node=node, wall=wall, r2=r2)
        client = Client(cfg, d1, registry, wall=wall, node=node)
        daemon = Daemon(cfg, d1, supervisor, client)
        listener = WakeListener(cfg.d1.path, node) if cfg.d1.backend == "sqlite" else None
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            if listener is not None and await listener.open():
                nursery.start_soon(listener.recv_forever, supervisor.wake)
            if handle_signals:
                nursery.start_soon(_on_signals, supervisor)
            log.info("daemon %s running: d1=%s, %d kinds", node, cfg.d1.backend,
                     len(registry.names()), extra={"event": "ready"})
            task_status.started(daemon)
            await supervisor.wait_stopped()
            nursery.cancel_scope.cancel()
        if listener is not None:
            listener.close()
        log.info("daemon %s stopped", node, extra={"event": "stopped"})
    finally:
        with trio.CancelScope(shield=True):
            await d1.aclose()
            await r2.aclose()


async def _on_signals(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: draining", signal.Signals(signum).name,
                     extra={"event": "signal"})
            supervisor.stop()
