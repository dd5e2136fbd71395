"""SIGTERM drains the daemon and hands unfinished jobs back at once.

Rules: a real ``deepmox run`` process in its own process group on a real
SQLite file; results are read straight from it. No wall-clock sleeps: progress
is observed with ``wait_until`` only, the exit is awaited with a bound. The
long jobs' steps outlast ``drain_s``, so the drain must cancel them and
release their jobs, not leave them in_progress until the lease runs out.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import trio

from tests.helpers import event_types, lease_overlaps, query, wait_until
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

DRAIN_S = 1.5
#: how much later than ``drain_s`` the daemon may exit
EXIT_SLACK_S = 4.0
LONG = {"seconds": 20.0, "steps": 2}  # 10 s steps: far past the drain
SHORT = {"seconds": 0.6, "steps": 1}  # ends inside the drain


async def test_sigterm_drains_then_releases_unfinished_jobs(cluster: Cluster) -> None:
    db = cluster.db
    # budget 30 s + grace 15 s: the leases would hold for 45 s
    supervisor = {"budget_s": 30.0, "lease_grace_s": 15.0, "drain_s": DRAIN_S,
                  "poll_max_s": 0.2}
    a = await cluster.start_daemon("node-a", supervisor=supervisor)
    long_ids = await cluster.submit("sleep", [LONG] * 3)
    short_id, = await cluster.submit("sleep", [SHORT])
    await wait_until(lambda: cluster.counts().get("in_progress") == 4, 10,
                     what="node-a to run all four jobs", explain=cluster.describe)

    sent_at, sent_wall = trio.current_time(), time.time()
    a.proc.signal(signal.SIGTERM)
    assert await a.proc.wait(DRAIN_S + EXIT_SLACK_S) == 0, a.proc.describe()
    took = trio.current_time() - sent_at
    assert a.proc.logged("stopped"), a.proc.describe()

    # the short job finished inside the drain
    assert event_types(db, short_id)[-1] == "completed"
    for job_id in long_ids:
        (state, attempt, token, until, run_at), = query(
            db, "SELECT state, attempt, lease_token, lease_until, run_at FROM jobs "
                "WHERE id = ?", job_id)
        assert (state, attempt, token, until) == ("pending", 0, None, None), job_id
        events = query(db, "SELECT type, ts, detail, node FROM job_events WHERE job_id = ? "
                           "ORDER BY id", job_id)
        types = [e[0] for e in events]
        assert types == ["submitted", "claimed", "released"], types
        claimed, released = events[1], events[2]
        assert released[3] == "node-a"
        # released after the drain time, not at once, and due again right away
        assert released[1] >= sent_wall + DRAIN_S - 0.1, (released[1] - sent_wall)
        assert run_at <= released[1]
        # ... and long before the lease would have run out
        assert released[1] < json.loads(claimed[2])["lease_until"] - 30
    print(f"exit {took:.2f} s after SIGTERM (drain_s {DRAIN_S})")

    # handed back: a second daemon claims them at once, with the attempt refunded
    b = await cluster.start_daemon("node-b", supervisor=supervisor)
    await wait_until(
        lambda: query(db, "SELECT count(*) FROM jobs WHERE state = 'in_progress' "
                          "AND lease_owner = 'node-b' AND attempt = 1")[0][0] == 3,
        10, what="node-b to claim the released jobs", explain=cluster.describe)
    b.proc.signal(signal.SIGTERM)
    assert await b.proc.wait(DRAIN_S + EXIT_SLACK_S) == 0, b.proc.describe()
    events = query(db, "SELECT job_id, type FROM job_events ORDER BY id")
    assert lease_overlaps(events) == []
