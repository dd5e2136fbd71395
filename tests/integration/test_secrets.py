"""Secret values never leave the process: a daemon runs with made-up secrets in
its environment (the D1 REST token, the API's write and read tokens, R2 keys)
while jobs succeed and fail, D1 answers errors and clients send wrong tokens;
then every log line, every stored event and job, and every HTTP response is
searched for the values.

Rules: one real daemon process against the D1 REST fake (a process too); the
secrets are made up for this test; waiting is bounded polling only.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import pytest

from tests.helpers import query, wait_until
from tests.integration.conftest import TOKEN, Cluster

pytestmark = pytest.mark.slow

API_TOKEN = "api-write-made-up-0f9e8d7c6b5a"
READ_TOKEN = "api-read-made-up-1a2b3c4d5e6f"
R2_KEY = "r2-access-made-up-7777"
R2_SECRET = "r2-secret-made-up-8888"
SECRETS = [TOKEN, API_TOKEN, READ_TOKEN, R2_KEY, R2_SECRET]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("cluster", ["http"], indirect=True)
async def test_no_secret_in_logs_events_or_responses(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    daemon = await cluster.start_daemon(
        "node-a", supervisor={"poll_max_s": 0.2, "backoff_base_s": 0.05},
        sections={"server": {"listen": f"127.0.0.1:{port}"}},
        env={"DEEPMOX_TOKEN": API_TOKEN, "DEEPMOX_READ_TOKEN": READ_TOKEN,
             "R2_ACCESS_KEY_ID": R2_KEY, "R2_SECRET_ACCESS_KEY": R2_SECRET})
    bodies: list[str] = []
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        write = {"authorization": f"Bearer {API_TOKEN}"}
        for payload in ({"kind": "noop"}, {"kind": "fail",
                                             "payload": {"error_class": "permanent"}},
                        {"kind": "fail", "payload": {"error_class": "transient", "times": 1}},
                        {"kind": "nope"}, {"kind": "sleep", "payload": {"seconds": "x"}}):
            r = await http.post("/v1/jobs", json=payload, headers=write)
            bodies.append(r.text)
        for headers in ({}, {"authorization": f"Bearer {API_TOKEN}x"},
                        {"authorization": f"Bearer {READ_TOKEN}"},
                        {"authorization": f"Basic {API_TOKEN}"}):
            bodies.append((await http.post("/v1/jobs", json={"kind": "noop"},
                                           headers=headers)).text)
            bodies.append((await http.get(f"/v1/jobs?token={API_TOKEN}", headers=headers)).text)
        await wait_until(lambda: cluster.counts().get("pending", 0) == 0
                         and cluster.counts().get("in_progress", 0) == 0, 30,
                         what="every job to finish", explain=cluster.describe)
        # D1 fails a few pull cycles (its errors get logged), then recovers.
        # A fault goes to whichever request reaches the fake first, so nothing
        # but the daemon's pull loop may talk to D1 until every fault has hit
        # a cycle: the wait reads the log, and the API is asked only after.
        faults = ("network_lost", "http429", "drop")
        for fault in faults:
            r = await http.post(f"{cluster.origin}/__control/faults",
                                json={"fault": fault, "count": 1})
            assert r.status_code < 300, r.text
        await wait_until(lambda: len(daemon.proc.logged("cycle_failed")) >= len(faults), 30,
                         what="a failed pull cycle per fault", explain=cluster.describe)
        for path in ("/v1/jobs", "/metrics", "/healthz"):
            response = await http.get(path, headers=write)
            assert response.status_code == 200, (path, response.text)
            bodies.append(response.text)
    logs = "\n".join(daemon.proc.lines())
    stored = "\n".join(str(row) for row in query(cluster.db, "SELECT * FROM job_events"))
    stored += "\n".join(str(row) for row in query(cluster.db, "SELECT * FROM jobs"))
    assert "failed" in stored, "the run must have produced failures to look at"
    assert "cycle_failed" in logs, "D1 errors must have been logged"
    assert not daemon.proc.logged("api_error"), "no request may be a server fault"
    assert "Traceback" not in logs
    for secret in SECRETS:
        assert secret not in logs
        assert secret not in stored
        for body in bodies:
            assert secret not in body
