"""``kill -9`` a daemon mid-run: another daemon reaps its leases and finishes
every job from the last checkpoint.

Rules: real ``deepmox run`` processes, each in its own process group with its
own node name, on a real SQLite file or on the D1 REST fake run as a process;
results are read straight from the SQLite file. No wall-clock sleeps: progress
is observed with ``wait_until`` only, exits are awaited. Budgets and lease
grace are small so that the reaper acts within seconds.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import lease_overlaps, query, wait_until
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

JOBS = 6
STEPS = 3
SECONDS = 1.5  # 0.5 s per step
SUPERVISOR = {"budget_s": 3.0, "lease_grace_s": 1.0, "poll_max_s": 0.2, "max_actors": 10}


@pytest.mark.parametrize("cluster", ["sqlite", "http"], indirect=True)
async def test_kill_9_mid_run_and_another_daemon_finishes_every_job(cluster: Cluster) -> None:
    db = cluster.db
    a = await cluster.start_daemon("node-a", supervisor=SUPERVISOR)
    ids = await cluster.submit("sleep", [{"seconds": SECONDS, "steps": STEPS}] * JOBS)

    def a_is_mid_run() -> bool:
        held: int = query(db, "SELECT count(*) FROM jobs WHERE state = 'in_progress' "
                         "AND lease_owner = 'node-a'")[0][0]
        checkpointed: int = query(db, "SELECT count(DISTINCT job_id) FROM job_events "
                                 "WHERE type = 'step_completed' AND node = 'node-a'")[0][0]
        return held == JOBS and checkpointed == JOBS

    await wait_until(a_is_mid_run, 15, what="node-a to hold every job past its first step",
                     explain=cluster.describe)
    assert await a.proc.kill() == -signal.SIGKILL
    held = {r[0] for r in query(db, "SELECT id FROM jobs WHERE state = 'in_progress' "
                                    "AND lease_owner = 'node-a'")}
    assert held == set(ids), "node-a finished jobs before it was killed: the test is too slow"

    await cluster.start_daemon("node-b", supervisor=SUPERVISOR)
    await cluster.wait_all("completed", JOBS, timeout=20)

    assert cluster.counts() == {"completed": JOBS}
    for job_id in ids:
        events = query(db, "SELECT type, node, error_class, detail, step FROM job_events "
                           "WHERE job_id = ? ORDER BY id", job_id)
        types = [e[0] for e in events]
        assert types.count("completed") == 1, types
        assert [e[1] for e in events if e[0] == "completed"] == ["node-b"]
        reaped = [e for e in events if e[0] == "reaped"]
        assert len(reaped) == 1, types
        _, reaper, error_class, detail, _ = reaped[0]
        assert (reaper, error_class) == ("node-b", "zombie")
        assert json.loads(detail)["owner"] == "node-a"
        # node-b went on from node-a's checkpoint: no step was done twice
        steps = [e[4] for e in events if e[0] == "step_completed"]
        assert len(steps) == len(set(steps)), f"a step was redone: {steps}"
        assert lease_overlaps((job_id, t) for t in types) == []
    rows = query(db, "SELECT attempt, error_class, lease_token, result FROM jobs")
    assert {(r[0], r[1], r[2]) for r in rows} == {(2, None, None)}
    assert [json.loads(r[3])["slept_s"] for r in rows] == [pytest.approx(SECONDS)] * JOBS
