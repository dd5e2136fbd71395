"""Where the time of a submission over HTTP goes, stage by stage: the same
load as ``bench/http_latency.py`` (noop jobs 20 ms apart, ``POST /v1/jobs``
with http.client on one keep-alive connection, an idle daemon), with the
daemon started through ``bench/_probed_daemon.py``, which stamps the wall
clock as each stage begins and ends. For scale, the same requests against a
bare hypercorn app (it reads the body and answers 201, nothing else): what
the HTTP layer costs before any of deepmox runs.

    .venv/bin/python bench/http_breakdown.py [--jobs 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

from _harness import free_port, prepare, record, sqlite_config, workdir, write_config
from http_latency import paced, stdlib_post, wait_healthy

HERE = Path(__file__).resolve().parent
INTERVAL_S = 0.02
#: (key, what ends there); each stage runs from the row above to its own
STAGES = [
    ("http>", "hypercorn has read and parsed the request: the app is called"),
    ("body<", "the app has the body"),
    ("ride>", "the spec is decoded and checked: the submission rides a pull cycle"),
    ("sql>", "the cycle is built and its transaction begins (writer thread)"),
    ("exec", "its statements ran (the submission's, then the claim's)"),
    ("sql<", "it committed (synchronous = FULL: the WAL fsynced)"),
    ("spawn>", "back on the event loop: the claimed job gets an actor"),
    ("actor>", "the actor starts"),
    ("finish", "the noop step ran: the finish stamp (`finished_at`)"),
    ("answer", "the client has the 201 answer"),
]
BARE = [
    ("bare_app", "hypercorn has read and parsed the request: the app is called"),
    ("bare_answer", "the client has the 201 answer"),
]


def stage_times(stamps: list[tuple[str, float]], t0: float, until: float,
                finished_at: float, answered: float) -> dict[str, float] | None:
    """Each stage's end, in ms after ``t0``, from the stamps in ``[t0, until)``."""
    seq = [(label, t) for label, t in stamps if t0 <= t < until]
    labels = [label for label, _ in seq]
    if "sql<" not in labels:
        return None
    commit = labels.index("sql<")
    out: dict[str, float] = {}
    for label, t in seq[:commit + 1]:
        out.setdefault(label, (t - t0) * 1000)
    out["exec"] = max((t - t0) * 1000 for label, t in seq[:commit] if label == "stmt<")
    for label, t in seq[commit:]:
        if label in ("spawn>", "actor>"):
            out.setdefault(label, (t - t0) * 1000)
    out["finish"] = (finished_at - t0) * 1000
    out["answer"] = (answered - t0) * 1000
    return out if all(key in out for key, _ in STAGES) else None


def one_rep(jobs: int) -> list[dict[str, float]]:
    d = workdir("httpbreak")
    port = free_port()
    db = d / "deepmox.db"
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(db, listen=f"127.0.0.1:{port}"))
    prepare(cfg_path)
    out_path = d / "stamps.txt"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_probed_daemon.py"), "--config", str(cfg_path),
         "--log-format", "json", "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={**os.environ, "PROBE_OUT": str(out_path)}, start_new_session=True)
    sent: list[tuple[str, float, float]] = []
    try:
        wait_healthy(port)
        post, _ = stdlib_post(port)
        post()
        time.sleep(1.0)  # idle

        def submit() -> None:
            t0 = time.time()
            job = post()
            sent.append((job["id"], t0, time.time()))

        paced(jobs, INTERVAL_S, submit)
        time.sleep(0.5)  # the last completion commits
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    conn = sqlite3.connect(db)
    finished = dict(conn.execute("SELECT id, finished_at FROM jobs"))
    conn.close()
    stamps = [(label, float(t)) for label, t in
              (line.split() for line in out_path.read_text().splitlines())]
    rows = [stage_times(stamps, t0, t0 + INTERVAL_S * 0.95, finished[job_id], answered)
            for job_id, t0, answered in sent]
    return [r for r in rows if r is not None]


# -- the bare hypercorn app, in a process of its own ------------------------------

async def _bare_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    print(f"{time.time():.6f}", file=sys.stderr, flush=True)  # the app is called
    await receive()
    body = b'{"id": "x"}'
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def serve_bare(port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    trio.run(serve, _bare_app, cfg)


def bare_rep(jobs: int) -> list[dict[str, float]]:
    port = free_port()
    d = workdir("httpbare")
    err = open(d / "called.txt", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)],
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    sent: list[tuple[float, float]] = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(1.0)

        def one() -> None:
            t0 = time.time()
            conn.request("POST", "/v1/jobs", body=b'{"kind": "noop"}',
                         headers={"content-type": "application/json"})
            conn.getresponse().read()
            sent.append((t0, time.time()))

        paced(jobs, INTERVAL_S, one)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        err.close()
    called = [float(line) for line in (d / "called.txt").read_text().split()
              if line[:1].isdigit()][1:]  # the first is the readiness probe
    rows = []
    for t0, answered in sent:
        at = [t for t in called if t0 <= t < t0 + INTERVAL_S * 0.95]
        if at:
            rows.append({"bare_app": (at[0] - t0) * 1000, "bare_answer": (answered - t0) * 1000})
    return rows


def p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server)
        return
    rows: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    for _ in range(args.reps):  # alternated, so both see the same machine
        rows += one_rep(args.jobs)
        bare += bare_rep(args.jobs)
    def med(key: str, prev: str | None = None) -> float:
        return statistics.median(r[key] - (r[prev] if prev else 0.0) for r in rows)

    floor = med("http>") + med("exec", "sql>") + med("sql<", "exec")
    table = ["| stage ends when | at (p50 ms after the client's write) | "
             "the stage alone, p50 ms | p95 ms |", "|---|---:|---:|---:|"]
    prev: str | None = None
    for key, name in STAGES:
        at = [r[key] for r in rows]
        own = [r[key] - (r[prev] if prev else 0.0) for r in rows]
        table.append(f"| {name} | {statistics.median(at):.2f} | {statistics.median(own):.2f} "
                     f"| {p(own, 0.95):.2f} |")
        print(f"{name}: at {statistics.median(at):.2f} ms, stage p50 "
              f"{statistics.median(own):.2f} ms")
        prev = key
    table.append("| *bare hypercorn app, for scale:* | | | |")
    prev = None
    for key, name in BARE:
        at = [r[key] for r in bare]
        own = [r[key] - (r[prev] if prev else 0.0) for r in bare]
        table.append(f"| {name} | {statistics.median(at):.2f} | {statistics.median(own):.2f} "
                     f"| {p(own, 0.95):.2f} |")
        print(f"bare: {name}: at {statistics.median(at):.2f} ms")
        prev = key
    record("Latency over HTTP: where the time goes", "\n".join([
        f"`.venv/bin/python bench/http_breakdown.py --reps {args.reps}` ({args.jobs} noop "
        f"jobs a run, one every {INTERVAL_S * 1000:g} ms, http.client on one keep-alive "
        f"connection, an idle daemon on the default synchronous = FULL, stamped at each stage "
        f"by `bench/_probed_daemon.py`; {len(rows)} submissions, and {len(bare)} requests to "
        "a bare hypercorn app that reads the body and answers 201, runs alternated)\n",
        *table,
        f"\nThe HTTP layer alone takes {med('http>'):.2f} ms to hand the request to deepmox "
        f"(the bare app: {statistics.median(r['bare_app'] for r in bare):.2f} ms), and SQLite "
        f"{med('exec', 'sql>') + med('sql<', 'exec'):.2f} ms to run the transaction's "
        f"statements and fsync it: {floor:.2f} ms together, against the 2 ms target for the "
        "whole way to the finish stamp. The rest (decoding, building the cycle, the hand-offs "
        "to the database thread and back, starting the actor, its step) is "
        f"{med('finish') - floor:.2f} ms of the {med('finish'):.2f} ms.",
    ]))


if __name__ == "__main__":
    main()
