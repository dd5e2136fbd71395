"""``deepmox demo`` (what ``make run`` runs): a daemon on the embedded defaults
works through a small batch that shows every restart policy, live.

The batch: noop jobs; a ``sleep`` that needs several continuations (its kind
gets a 2 s budget for the demo); a ``fail`` that recovers after two transient
errors; one that is rate limited once; one that fails permanently.
"""

from __future__ import annotations

import msgspec
import trio
from rich.live import Live

from .client import JobSpec
from .config import Config, KindConfig
from .daemon import serve
from .jobs import TERMINAL_STATES, Job
from .render import console, job_table, timeline

DEMO_BATCH = [
    JobSpec(kind="noop", payload={"value": "hello"}),
    JobSpec(kind="noop"),
    JobSpec(kind="noop"),
    JobSpec(kind="sleep", payload={"seconds": 6, "steps": 6}),
    JobSpec(kind="fail", payload={"error_class": "transient", "times": 2}),
    JobSpec(kind="fail", payload={"error_class": "rate_limited", "times": 1,
                                  "retry_after": 2, "upstream": "demo-api"}),
    JobSpec(kind="fail", payload={"error_class": "permanent"}, max_attempts=3),
]


async def run_demo(cfg: Config) -> int:
    kinds = dict(cfg.kinds)
    kinds.setdefault("sleep", KindConfig(budget_s=2.0))
    sup = msgspec.structs.replace(cfg.supervisor, backoff_base_s=0.5, drain_s=2.0)
    cfg = msgspec.structs.replace(cfg, kinds=kinds, supervisor=sup)
    console.print(f"[bold]deepmox demo[/]: SQLite at {cfg.d1.path}; the sleep kind gets a "
                  f"{cfg.budget_for('sleep'):g} s budget, so its 6 s job needs continuations.")
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, cfg)
        submitted = await daemon.client.submit_many([(s, None) for s in DEMO_BATCH])
        ids = [job.id for job, _ in submitted]
        jobs: list[Job] = []
        with Live(job_table([], title="jobs"), console=console, refresh_per_second=8) as live:
            while True:
                jobs = [await daemon.client.get(i) for i in ids]
                live.update(job_table(jobs, title="jobs"))
                if all(j.state in TERMINAL_STATES for j in jobs):
                    break
                await trio.sleep(0.2)
        for job in jobs:
            timeline(f"{job.id} ({job.kind}: {job.state})", await daemon.client.events(job.id))
        stats = daemon.supervisor.statistics()
        console.print(
            f"[bold]done[/]: claimed {stats.claimed} times, {stats.completed} completed, "
            f"{stats.failed} failed, {stats.retried} retries, {stats.continued} continuations.")
        daemon.stop()
    return 0
