"""``deepmox watch [ID]``: the live feed in a terminal.

A trio-websocket client of ``/v1/feed`` that draws a rich table -- progress
bars, step, attempt, ETA, the latest failures with their class, the
statistics line -- and reconnects when the daemon restarts. ``--json`` prints
the raw messages, one per line.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from .render import _bar, console

RECONNECT_MAX_S = 5.0
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Running:
    kind: str
    progress: float
    step: str | None
    attempt: int
    error_class: str | None
    seen: list[tuple[float, float]] = field(default_factory=list)  # (time, progress)

    def eta_s(self) -> float | None:
        if len(self.seen) < 2:
            return None
        (t0, p0), (t1, p1) = self.seen[0], self.seen[-1]
        if p1 <= p0 or t1 <= t0:
            return None
        return (1.0 - p1) * (t1 - t0) / (p1 - p0)


class View:
    def __init__(self) -> None:
        self.running: dict[str, Running] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=10)
        self.stats: dict[str, Any] = {}
        self.status = "connecting"
        self.final: dict[str, Any] | None = None

    def apply(self, m: dict[str, Any]) -> None:
        now = time.monotonic()
        kind = m.get("type")
        if kind == "snapshot":
            self.running.clear()
            for j in m.get("jobs", []):
                if j["state"] == "in_progress":
                    self.running[j["id"]] = Running(j["kind"], j["progress"], j["step"],
                                                    j["attempt"], j["error_class"])
            self.stats = m.get("stats") or {}
        elif kind == "event":
            job_id = m["job_id"]
            if m["state"] == "in_progress":
                r = self.running.get(job_id)
                if r is None:
                    r = self.running[job_id] = Running(m.get("kind") or "", m["progress"],
                                                       m["step"], m["attempt"], None)
                r.progress, r.step, r.attempt = m["progress"], m["step"], m["attempt"]
                r.seen.append((now, r.progress))
            else:
                self.running.pop(job_id, None)
                if m["state"] in TERMINAL or m.get("error_class"):
                    self.finished.appendleft(m)
                if m["state"] in TERMINAL:
                    self.final = m
        elif kind == "progress":
            r = self.running.get(m["job_id"])
            if r is not None:
                r.progress, r.step = m["progress"], m["step"]
                r.seen.append((now, r.progress))
                del r.seen[:-20]
        elif kind == "stats":
            self.stats = m

    def render(self) -> Group:
        table = Table(title="running", title_justify="left")
        for col in ("job", "kind", "progress", "step", "att", "ETA", "last error"):
            table.add_column(col, no_wrap=True)
        for job_id, r in list(self.running.items())[:40]:
            eta = r.eta_s()
            table.add_row(job_id, r.kind, _bar(r.progress), r.step or "", str(r.attempt),
                          f"{eta:.0f} s" if eta is not None else "", r.error_class or "")
        recent = Table(title="latest", title_justify="left")
        for col in ("time", "job", "kind", "state", "class", "detail"):
            recent.add_column(col, overflow="fold")
        for e in self.finished:
            recent.add_row(time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["job_id"],
                           e.get("kind") or "", e["state"], e.get("error_class") or "",
                           (e.get("detail") or "")[:80])
        s = self.stats
        jobs = ", ".join(f"{k} {v}" for k, v in (s.get("jobs") or {}).items())
        line = Text(f"[{self.status}] node {s.get('node', '?')}: {s.get('running', 0)} actors "
                    f"running; jobs: {jobs}")
        return Group(line, table, recent)


def feed_url(listen: str, token: str | None, job: str | None) -> str:
    query = {k: v for k, v in (("token", token), ("job", job)) if v}
    suffix = "?" + urllib.parse.urlencode(query) if query else ""
    return f"ws://{listen}/v1/feed{suffix}"


async def follow(url: str, on_message: Any, *, until_final: bool = False,
                 view: View | None = None) -> None:
    """Read the feed, reconnecting with a growing wait when it drops."""
    wait = 0.2
    while True:
        try:
            async with open_websocket_url(url) as ws:
                if view is not None:
                    view.status = "live"
                wait = 0.2
                while True:
                    frame = await ws.get_message()
                    # one or more messages, one JSON object per line
                    for line in frame.splitlines():
                        if line and on_message(msgspec.json.decode(line)) and until_final:
                            return
        except (OSError, HandshakeError, ConnectionClosed) as exc:
            if view is not None:
                view.status = f"reconnecting ({type(exc).__name__})"
            else:
                print(f"deepmox: feed at {url.split('?')[0]} unavailable "
                      f"({type(exc).__name__}); reconnecting", file=sys.stderr)
        await trio.sleep(wait)
        wait = min(wait * 2, RECONNECT_MAX_S)


def _final_state(m: dict[str, Any], job: str | None) -> str | None:
    """The terminal state ``m`` reports for ``job``, if it does."""
    if job is None:
        return None
    if m.get("type") == "event" and m.get("job_id") == job and m.get("state") in TERMINAL:
        return str(m["state"])
    if m.get("type") == "snapshot":
        for j in m.get("jobs", []):
            if j.get("id") == job and j.get("state") in TERMINAL:
                return str(j["state"])
    return None


async def watch(listen: str, token: str | None, job: str | None, as_json: bool) -> int:
    """Follow the feed; with ``job``, until that job ends (exit 0 only if it
    completed)."""
    url = feed_url(listen, token, job)
    final: list[str] = []
    if as_json:
        def show(m: dict[str, Any]) -> bool:
            sys.stdout.write(msgspec.json.encode(m).decode() + "\n")
            sys.stdout.flush()
            state = _final_state(m, job)
            if state:
                final.append(state)
            return bool(state)

        await follow(url, show, until_final=job is not None)
    else:
        view = View()
        with Live(view.render(), console=console, refresh_per_second=8) as live:
            def update(m: dict[str, Any]) -> bool:
                view.apply(m)
                live.update(view.render())
                state = _final_state(m, job)
                if state:
                    final.append(state)
                return bool(state)

            await follow(url, update, view=view, until_final=job is not None)
    return 0 if not final or final[0] == "completed" else 1
