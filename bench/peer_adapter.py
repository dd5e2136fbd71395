"""deepmox in the peer job-queue benchmark (../shared/bench-peers).

Run through the harness, measured in the same run as the peers:

    EXTRA_PEERS="deepmox-sqlite|$PWD/.venv|$PWD/bench/peer_adapter.py|" \\
      PEERS="deepmox-sqlite huey-sqlite" LARGE_N=0 bash ../shared/bench-peers/run_all.sh

or alone: ``PYTHONPATH=../shared/bench-peers .venv/bin/python bench/peer_adapter.py``.

With ``DEEPMOX_PEER_SUBMIT=http`` (the row ``deepmox-http``: register it as
``"deepmox-http|$PWD/.venv|$PWD/bench/peer_adapter.py|DEEPMOX_PEER_SUBMIT=http"``)
the latency phase submits with ``POST /v1/jobs`` (http.client, one keep-alive
connection) to the daemon's HTTP port instead of through the Python client;
the other phases are the same. ``DEEPMOX_PEER_SYNC=normal`` runs SQLite with
``synchronous = "normal"`` (no fsync per commit: what a Redis without
persistence gives the peers), for the row ``deepmox-http-normal``.
Same three phases as every peer: enqueue (one by one, and in bulk), throughput
of one worker process on N pre-queued noop jobs, and latency of 200 ``mark``
jobs to an idle worker (default settings).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "shared" / "bench-peers"))

import common as c  # noqa: E402
import trio  # noqa: E402

import deepmox  # noqa: E402
from _harness import ClientThread, prepare, sqlite_config, write_config  # noqa: E402
from deepmox.client import JobSpec, open_client  # noqa: E402

args = c.parse_args(default_conc=10)
os.makedirs(c.WORK, exist_ok=True)
DB = Path(c.WORK) / "deepmox.db"
for suffix in ("", "-wal", "-shm"):
    if (p := Path(str(DB) + suffix)).exists():
        p.unlink()
HTTP = os.environ.get("DEEPMOX_PEER_SUBMIT") == "http"
SYNC = os.environ.get("DEEPMOX_PEER_SYNC", "full")
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    PORT = int(_s.getsockname()[1])
CFG = write_config(Path(c.WORK) / "deepmox-peer.toml", sqlite_config(
    DB, f'[supervisor]\nmax_actors = {max(args.concurrency, 200)}\n'
        'kind_modules = ["deepmox_bench_kinds"]\n',
    listen=f"127.0.0.1:{PORT}" if HTTP else "").replace(
        "[server]", f'synchronous = "{SYNC}"\n[server]'))
cfg = prepare(CFG)
n = args.n


async def one_by_one() -> None:
    async with open_client(cfg) as client:
        for _ in range(n):
            await client.submit(JobSpec(kind="noop"))


async def bulk() -> None:
    async with open_client(cfg) as client:
        for i in range(0, n, 1000):
            await client.submit_many([(JobSpec(kind="noop"), None)] * min(1000, n - i))


enq = c.timed(lambda: trio.run(one_by_one))
conn = sqlite3.connect(DB, timeout=10)
conn.execute("DELETE FROM jobs")
conn.execute("DELETE FROM job_events")
conn.commit()
bulk_s = c.timed(lambda: trio.run(bulk))


def done_count() -> int:
    left = conn.execute(
        "SELECT (SELECT count(*) FROM jobs WHERE state = 'pending') + "
        "(SELECT count(*) FROM jobs WHERE state = 'in_progress')").fetchone()[0]
    return n - int(left)


env = {"PYTHONPATH": str(HERE)}


def worker() -> c.Worker:
    return c.Worker([os.path.join(c.VENV_BIN, "deepmox"), "--config", str(CFG),
                     "--log-format", "json", "run"], "deepmox", env=env)


res = c.throughput_phase(worker(), done_count, n, args)
ct = ClientThread(cfg)
conn_http: http.client.HTTPConnection | None = None


def submit(i: int, path: str) -> None:
    global conn_http
    if HTTP:
        body = json.dumps({"kind": "bench.mark", "payload": {"i": i, "path": path}}).encode()
        for _ in range(300):  # the warm-up job waits for the port to listen
            try:
                if conn_http is None:
                    conn_http = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
                conn_http.request("POST", "/v1/jobs", body=body,
                                  headers={"content-type": "application/json"})
                answer = conn_http.getresponse()
                answer.read()
                if answer.status != 201:
                    raise RuntimeError(f"POST /v1/jobs answered {answer.status}")
                return
            except ConnectionRefusedError:
                conn_http = None
                time.sleep(0.05)
        raise RuntimeError("the daemon's port never answered")

    async def go() -> None:
        assert ct.client is not None
        await ct.client.submit(JobSpec(kind="bench.mark", payload={"i": i, "path": path}))

    ct.call(go)


try:
    res.update(c.run_latency(submit, worker(), args, "deepmox"))
finally:
    ct.close()
    if conn_http is not None:
        conn_http.close()
res.update({
    "peer": ("deepmox-http" if HTTP else "deepmox-sqlite")
    + ("" if SYNC == "full" else f"-{SYNC}"),
    "version": f"deepmox {deepmox.__version__}; sqlite {sqlite3.sqlite_version}",
    "n": n, "concurrency": 200,
    "enqueue_per_s": c.rate(n, enq), "enqueue_bulk_per_s": c.rate(n, bulk_s),
    "notes": (
        "deepmox run, one process, trio; max_actors 200 (jobs run concurrently as tasks); "
        f"SQLite WAL synchronous={SYNC.upper()}; done = state 'completed' committed with a "
        "fenced lease token and a 'completed' event row; claims, acks and events batched per "
        "pull cycle; poll 2 ms busy .. 1 s idle, local submissions wake the daemon at once "
        "(wake socket); enqueue = Client.submit, bulk = submit_many(1000)"
        + ("; latency: POST /v1/jobs (http.client, keep-alive) to the daemon's HTTP port"
           if HTTP else "")),
})
c.emit(res)
