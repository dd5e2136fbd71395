"""Terminal output for people (rich): job tables, detail, timelines."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .jobs import Event, Job

#: wide enough for a timeline when the output is not a terminal (make run, pipes)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

STATE_STYLE = {
    "pending": "yellow", "in_progress": "cyan", "completed": "green", "failed": "red",
    "cancelled": "magenta",
}


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    t = time.localtime(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(value * 1000) % 1000:03d}"


def _bar(progress: float, width: int = 10) -> str:
    filled = round(progress * width)
    return f"{'█' * filled}{'░' * (width - filled)} {progress:4.0%}"


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def job_table(jobs: Sequence[Job], title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("id", "kind", "state", "att", "progress", "step"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", overflow="fold")
    for j in jobs:
        error = f"{j.error_class}: {j.error_message}" if j.error_class else ""
        table.add_row(j.id, j.kind, _state(j.state), f"{j.attempt}/{j.max_attempts}",
                      _bar(j.progress), j.step or "", error)
    if title is None:
        console.print(table)
    return table


def job_detail(job: Job) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in job.__struct_fields__:
        value = getattr(job, name)
        if name == "state":
            value = _state(value)
        elif name.endswith("_at") or name == "lease_until":
            value = _ts(value)
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


def _clock(value: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"


def timeline(job_id: str, events: Sequence[Event]) -> None:
    table = Table(title=f"timeline of {job_id}", title_justify="left")
    for col in ("time", "event", "att", "state", "step", "class"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for e in events:
        detail = e.detail or ""
        if e.type == "claimed" and e.node:
            detail = f"by {e.node}"
        table.add_row(_clock(e.ts), e.type, str(e.attempt), _state(e.state), e.step or "",
                      e.error_class or "", detail)
    console.print(table)


def doctor_report(checks: Sequence[tuple[str, bool, str]]) -> None:
    for name, ok, detail in checks:
        mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
        console.print(f"{mark} {name}: {detail}")
