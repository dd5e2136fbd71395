"""Several daemons on one system of record drain a batch together.

Rules: real ``deepmox run`` processes, each in its own process group with its
own node name, on a real SQLite file (or the D1 REST fake as a process); jobs
go in through the client API and results are read straight from the SQLite
file. No wall-clock sleeps: progress is observed with ``wait_until`` only.

Sharing is proven by capacity, not by timing: an idle daemon polls every
``poll_max_s``, and a batch of noops that one daemon drains within one such
interval need not reach the others (on a loaded machine it often does not).
So the batch starts with ``3 * CAP`` sleep jobs that each hold an actor slot
for ``SLEEP_S``: one daemon (``max_actors = CAP``) would need ``3 * SLEEP_S``
for them alone, many poll intervals, and the others claim their share long
before that.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from tests.helpers import lease_overlaps, query
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

JOBS = {"sqlite": 3000, "http": 600}
#: each daemon's actor slots
CAP = 50
#: how long each of the 3 * CAP sleep jobs holds its slot
SLEEP_S = 1.0


@pytest.mark.parametrize("cluster", ["sqlite", "http"], indirect=True)
async def test_three_daemons_drain_a_batch_once_each(cluster: Cluster) -> None:
    nodes = ["node-a", "node-b", "node-c"]
    sleeps = len(nodes) * CAP
    n = JOBS[cluster.backend] + sleeps
    # every daemon is up and claiming before anything is submitted
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(partial(
                cluster.start_daemon, node, supervisor={"max_actors": CAP, "poll_max_s": 0.2}))
    if cluster.backend == "http":
        await cluster.reset_fake_stats()
    t0 = trio.current_time()
    ids = await cluster.submit("sleep", [{"seconds": SLEEP_S}] * sleeps)
    ids += await cluster.submit("noop", [{"value": i} for i in range(n - sleeps)])
    assert len(set(ids)) == n
    await cluster.wait_all("completed", n, timeout=60)
    took = trio.current_time() - t0
    if cluster.backend == "http":
        requests = (await cluster.fake_stats())["requests"]
        print(f"http: {n} jobs in {took:.2f} s, {requests / n:.3f} requests per job")
    else:
        print(f"sqlite: {n} jobs in {took:.2f} s")

    assert cluster.counts() == {"completed": n}
    events = query(cluster.db, "SELECT job_id, type, node FROM job_events ORDER BY id")
    completed: dict[str, int] = {}
    for job_id, kind, _ in events:
        if kind == "completed":
            completed[job_id] = completed.get(job_id, 0) + 1
    assert set(completed) == set(ids)
    assert set(completed.values()) == {1}, "a job completed more than once"
    assert lease_overlaps((job_id, kind) for job_id, kind, _ in events) == []
    # healthy daemons: nothing reaped, no fenced write refused, one attempt each
    assert not [e for e in events if e[1] in ("reaped", "lease_lost", "released")]
    assert query(cluster.db, "SELECT count(*) FROM jobs WHERE attempt != 1 "
                             "OR lease_token IS NOT NULL") == [(0,)]
    # the sleeps need every daemon's slots (see the module docstring)
    by_node = {node for _, kind, node in events if kind == "completed"}
    assert by_node == set(nodes), f"the daemons did not share the work: {by_node}"
