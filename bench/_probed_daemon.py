"""``deepmox ... run`` with a wall-clock stamp at each stage a submission over
HTTP goes through, for ``bench/http_breakdown.py``: the stamps are written to
``$PROBE_OUT`` (one ``label time`` line each) when the daemon exits.

The stages are found by wrapping the methods that mark them (a diagnostic:
it adds a few microseconds to each, and needs no change to deepmox itself).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# in this order: deepmox.actors.actor cannot be the first of the package imported
app = importlib.import_module("deepmox.api.app")
lane = importlib.import_module("deepmox.supervisor.lane")
supervisor = importlib.import_module("deepmox.supervisor.supervisor")
sqlite = importlib.import_module("deepmox.bindings.d1.sqlite")
actor = importlib.import_module("deepmox.actors.actor")
main = importlib.import_module("deepmox.cli").main

STAMPS: list[tuple[str, float]] = []


def _stamped(cls: type, name: str, label: str) -> None:
    orig: Callable[..., Any] = getattr(cls, name)
    if inspect.iscoroutinefunction(orig):
        @functools.wraps(orig)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            STAMPS.append((label + ">", time.time()))
            try:
                return await orig(*args, **kwargs)
            finally:
                STAMPS.append((label + "<", time.time()))
        setattr(cls, name, wrapped_async)
        return

    @functools.wraps(orig)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        STAMPS.append((label + ">", time.time()))
        try:
            return orig(*args, **kwargs)
        finally:
            STAMPS.append((label + "<", time.time()))
    setattr(cls, name, wrapped)


_stamped(app.App, "_http", "http")            # the ASGI app is called
_stamped(app.Request, "body", "body")         # the request body is read
_stamped(lane.Lane, "ride", "ride")           # the submission rides a pull cycle
_stamped(sqlite.SqliteD1, "_batch_sync", "sql")  # the transaction, in the writer thread
_stamped(sqlite.SqliteD1, "_run_one", "stmt")    # each statement in it
_stamped(supervisor.Supervisor, "spawn", "spawn")  # the claimed job gets an actor
_stamped(actor.Actor, "run", "actor")         # the actor runs


def _dump() -> None:
    if "PROBE_OUT" not in os.environ:
        return
    with open(os.environ["PROBE_OUT"], "w") as f:
        f.writelines(f"{label} {t:.6f}\n" for label, t in STAMPS)


atexit.register(_dump)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
