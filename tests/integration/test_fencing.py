"""A stale actor cannot write its result once its lease was reaped.

Rules: real ``deepmox run`` processes, each in its own process group with its
own node name, on a real SQLite file; results are read straight from it. No
wall-clock sleeps: progress is observed with ``wait_until`` only, exits are
awaited. A stale daemon is frozen with SIGSTOP right after its claim (so its
clock runs on while it cannot act) and thawed with SIGCONT once another daemon
has reaped its job; whatever it then writes must be refused by the lease
token, both after the other daemon completed the job and while it still runs
it.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import event_types, lease_overlaps, query, wait_until
from tests.integration.conftest import Cluster, Daemon

pytestmark = pytest.mark.slow

LEASE = {"budget_s": 3.0, "lease_grace_s": 0.5}
#: the stale daemons cycle only every 1.5 s unless woken, so that frozen right
#: after a claim they hold no SQLite lock that would stall the others
STALE = {**LEASE, "poll_min_s": 1.5, "poll_max_s": 1.5}
EARLY = {"seconds": 1.0, "steps": 1}  # node-b completes it before its old owner thaws
LATE = {"seconds": 2.5, "steps": 1}  # its old owner thaws while node-b runs it


async def test_reaped_actors_cannot_write_their_results(cluster: Cluster) -> None:
    db = cluster.db

    async def claim_and_freeze(node: str, payload: dict[str, float]) -> tuple[Daemon, str]:
        daemon = await cluster.start_daemon(node, supervisor=STALE)
        job_id, = await cluster.submit("sleep", [payload])
        await wait_until(lambda: "claimed" in event_types(db, job_id), 10,
                         what=f"{node} to claim {job_id}", explain=cluster.describe)
        daemon.proc.signal(signal.SIGSTOP)
        assert query(db, "SELECT lease_owner FROM jobs WHERE id = ?", job_id) == [(node,)]
        return daemon, job_id

    a1, early = await claim_and_freeze("node-a1", EARLY)
    a2, late = await claim_and_freeze("node-a2", LATE)
    stale_tokens = dict(query(db, "SELECT id, lease_token FROM jobs"))

    b = await cluster.start_daemon("node-b", supervisor={**LEASE, "poll_max_s": 0.2})

    def held_by_b(job_id: str) -> bool:
        return query(db, "SELECT state, lease_owner FROM jobs WHERE id = ?",
                     job_id) == [("in_progress", "node-b")]

    def lost(job_id: str) -> bool:
        return "lease_lost" in event_types(db, job_id)

    # node-a2 thaws while node-b holds its job: its write must not land
    await wait_until(lambda: held_by_b(late), 15, what="node-b to re-claim the late job",
                     explain=cluster.describe)
    a2.proc.signal(signal.SIGCONT)
    await wait_until(lambda: lost(late), 10, what="node-a2's late write to be refused",
                     explain=cluster.describe)
    # (had node-b finished meanwhile, the machine would be too slow for this test)
    assert held_by_b(late), query(db, "SELECT type, node, error_class FROM job_events "
                                      "WHERE job_id = ? ORDER BY id", late)

    # node-a1 thaws after node-b completed its job
    await wait_until(lambda: "completed" in event_types(db, early), 15,
                     what="node-b to complete the early job", explain=cluster.describe)
    a1.proc.signal(signal.SIGCONT)
    await wait_until(lambda: lost(early), 10, what="node-a1's late write to be refused",
                     explain=cluster.describe)

    await cluster.wait_all("completed", 2, timeout=15)
    for daemon in (a1, a2, b):
        daemon.proc.signal(signal.SIGTERM)
    for daemon in (a1, a2, b):
        assert await daemon.proc.wait(10) == 0, daemon.proc.describe()

    for job_id, stale in ((early, "node-a1"), (late, "node-a2")):
        events = query(db, "SELECT type, node, detail FROM job_events WHERE job_id = ? "
                           "ORDER BY id", job_id)
        types = [e[0] for e in events]
        # one outcome, node-b's; the stale node's write shows as lease_lost only
        assert [(e[0], e[1]) for e in events if e[0] in ("completed", "failed")] == [
            ("completed", "node-b")], events
        assert {e[1] for e in events if e[0] == "lease_lost"} == {stale}, events
        reaped, = (e for e in events if e[0] == "reaped")
        detail = json.loads(reaped[2])
        assert (reaped[1], detail["owner"], detail["lease"]) == (
            "node-b", stale, stale_tokens[job_id])
        assert lease_overlaps((job_id, t) for t in types) == []
        (state, attempt, result, owner), = query(
            db, "SELECT state, attempt, result, lease_owner FROM jobs WHERE id = ?", job_id)
        assert (state, attempt, owner) == ("completed", 2, "node-b")
        payload = EARLY if job_id == early else LATE
        assert json.loads(result) == {"slept_s": payload["seconds"]}
    assert event_types(db, early).index("completed") < event_types(db, early).index("lease_lost")
    assert event_types(db, late).index("lease_lost") < event_types(db, late).index("completed")
    for daemon in (a1, a2):
        assert daemon.proc.logged("lease_lost"), daemon.proc.describe()
