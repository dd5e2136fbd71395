"""Latency over HTTP: noop jobs submitted 20 ms apart with ``POST /v1/jobs`` to
an idle daemon, from just before the request is written to completion.
Target: p50 at most 2 ms, p99 at most 5 ms.

Each repetition starts a fresh daemon and makes four passes of ``--jobs``
jobs, one client connection (keep-alive) each (and, for scale on a shared
machine, measures a bare ``GET /healthz`` round trip and one fdatasync):

1. ``http.client`` (the standard library): the POST's answer (the submission
   is durable), and the daemon's own finish stamp (``finished_at``, written
   by the actor as it finishes; read from the database afterwards);
2. the same with httpx2 as the client, to show what a heavier client adds;
3. the client seeing ``completed`` pushed by the live feed (one websocket
   opened beforehand): the completion is durable by then;
4. the client seeing ``completed`` by polling ``GET /v1/jobs/{id}`` every
   0.5 ms (which loads the daemon it measures).

Figures are the medians over the repetitions of each pass's percentiles.

    .venv/bin/python bench/http_latency.py [--jobs 200] [--interval-ms 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import trio
from trio_websocket import open_websocket_url

from _harness import (
    Daemon,
    free_port,
    percentile,
    prepare,
    record,
    sqlite_config,
    workdir,
    write_config,
)

BODY = b'{"kind": "noop"}'
HEADERS = {"content-type": "application/json"}
Post = Callable[[], dict[str, Any]]


def stdlib_post(port: int) -> tuple[Post, Callable[[str], dict[str, Any]]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post() -> dict[str, Any]:
        conn.request("POST", "/v1/jobs", body=BODY, headers=HEADERS)
        return dict(json.loads(conn.getresponse().read()))

    def get(job_id: str) -> dict[str, Any]:
        conn.request("GET", f"/v1/jobs/{job_id}")
        return dict(json.loads(conn.getresponse().read()))

    return post, get


def httpx2_post(port: int) -> Post:
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    return lambda: dict(client.post("/v1/jobs", content=BODY, headers=HEADERS).json())


class FeedWatcher:
    """A websocket on ``/v1/feed`` in a thread of its own: when each job's
    ``completed`` event arrived (``time.time()``)."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/feed"
        self.completed: dict[str, float] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise TimeoutError("the feed did not answer")

    async def _main(self) -> None:
        async with open_websocket_url(self.url) as ws:
            await ws.get_message()  # the snapshot
            self.ready.set()
            while not self.stop:
                with trio.move_on_after(0.5):
                    frame = await ws.get_message()
                    now = time.time()
                    for line in frame.splitlines():
                        m = json.loads(line)
                        if m.get("type") == "event" and m.get("event") == "completed":
                            with self.cond:
                                self.completed[m["job_id"]] = now
                                self.cond.notify_all()

    def wait(self, job_id: str, timeout: float = 10) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: job_id in self.completed, timeout):
                raise TimeoutError(f"no completed event for {job_id}")
            return self.completed[job_id]

    def close(self) -> None:
        self.stop = True
        self.thread.join()


def paced(jobs: int, interval_s: float, one: Callable[[], None]) -> None:
    next_at = time.perf_counter()
    for _ in range(jobs):
        one()
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.perf_counter()))


def one_rep(jobs: int, interval_s: float, synchronous: str) -> dict[str, list[float]]:
    d = workdir("httplat")
    port = free_port()
    db = d / "deepmox.db"
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(
        db, listen=f"127.0.0.1:{port}").replace(
        "[server]", f'synchronous = "{synchronous}"\n[server]'))
    prepare(cfg_path)
    daemon = Daemon(cfg_path)
    daemon.start()
    out: dict[str, list[float]] = {k: [] for k in (
        "answer", "stamp", "answer_httpx2", "stamp_httpx2", "feed", "poll", "healthz",
        "fsync")}
    try:
        wait_healthy(port)
        out["healthz"] = floor_healthz(port, jobs, interval_s)
        out["fsync"] = floor_fsync(d / "fsync.probe", jobs, interval_s)
        # a fresh connection for each pass: the server closes idle ones after 5 s
        post, get = stdlib_post(port)
        post()
        time.sleep(1.0)  # idle
        for client, answer_key, stamp_key in ((post, "answer", "stamp"),
                                              (httpx2_post(port), "answer_httpx2",
                                               "stamp_httpx2")):
            client()  # connected
            sent: list[tuple[str, float]] = []

            def submit(client: Post = client, key: str = answer_key,
                       sent: list[tuple[str, float]] = sent) -> None:
                t0 = time.time()
                job = client()
                out[key].append((time.time() - t0) * 1000)
                sent.append((job["id"], t0))

            paced(jobs, interval_s, submit)
            time.sleep(0.2)
            out[stamp_key] = finish_stamps(db, sent)
        watcher = FeedWatcher(port)
        post, get = stdlib_post(port)
        post()
        time.sleep(0.5)

        def follow() -> None:
            t0 = time.time()
            job = post()
            out["feed"].append((watcher.wait(job["id"]) - t0) * 1000)

        paced(jobs, interval_s, follow)
        watcher.close()
        post, get = stdlib_post(port)
        post()
        time.sleep(0.5)

        def poll() -> None:
            t0 = time.time()
            job = post()
            while get(job["id"])["state"] != "completed":
                time.sleep(0.0005)
            out["poll"].append((time.time() - t0) * 1000)

        paced(jobs, interval_s, poll)
    finally:
        daemon.stop()
        shutil.rmtree(d)
    return out


def floor_healthz(port: int, n: int, interval_s: float) -> list[float]:
    """The same client's round trip to a route that does nothing: what the
    HTTP layer alone costs on this machine right now."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        out.append((time.perf_counter() - t0) * 1000)

    paced(n, interval_s, one)
    conn.close()
    return out


def floor_fsync(path: Path, n: int, interval_s: float) -> list[float]:
    """A 4 KiB write and fdatasync on the database's file system: what one
    durable commit costs at least on this machine right now."""
    out: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)

    def one() -> None:
        os.pwrite(fd, b"x" * 4096, 0)
        t0 = time.perf_counter()
        os.fdatasync(fd)
        out.append((time.perf_counter() - t0) * 1000)

    try:
        paced(n, interval_s, one)
    finally:
        os.close(fd)
    return out


def wait_healthy(port: int) -> None:
    deadline = time.time() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError("the daemon did not come up")
        time.sleep(0.05)


def finish_stamps(db: Path, sent: list[tuple[str, float]]) -> list[float]:
    conn = sqlite3.connect(db)
    try:
        out = []
        for job_id, t0 in sent:
            (finished,) = conn.execute("SELECT finished_at FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()
            out.append((finished - t0) * 1000)
        return out
    finally:
        conn.close()


ROWS = [
    ("stamp", "POST → the daemon's finish stamp (`finished_at`), http.client"),
    ("answer", "POST → its answer (the submission is durable), http.client"),
    ("feed", "POST → `completed` seen by the client, pushed by the feed (durable)"),
    ("poll", "POST → `completed` seen by the client, `GET` every 0.5 ms"),
    ("stamp_httpx2", "POST → the daemon's finish stamp, httpx2 as the client"),
    ("answer_httpx2", "POST → its answer, httpx2 as the client"),
    ("healthz", "for scale: `GET /healthz` round trip, http.client (the HTTP layer alone)"),
    ("fsync", "for scale: one 4 KiB write + fdatasync beside the database"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--interval-ms", type=float, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = ap.parse_args()
    reps = [one_rep(args.jobs, args.interval_ms / 1000, args.synchronous)
            for _ in range(args.reps)]
    table = ["| measured | p50 ms | p95 ms | p99 ms | max ms | p50 of each run |",
             "|---|---:|---:|---:|---:|---|"]
    for key, name in ROWS:
        per = [[percentile(r[key], q) for q in (0.5, 0.95, 0.99)] + [max(r[key])]
               for r in reps]
        p50, p95, p99, top = (statistics.median(p[i] for p in per) for i in range(4))
        runs = ", ".join(f"{p[0]:.2f}" for p in per)
        table.append(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {top:.2f} | {runs} |")
        print(f"{name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms, max {top:.2f} ms "
              f"(medians of {args.reps} runs; p50 of each: {runs})")
    record(f"Latency over HTTP: submit to completion on an idle daemon "
           f"(synchronous = {args.synchronous})", "\n".join([
               f"`.venv/bin/python bench/http_latency.py --synchronous {args.synchronous} "
               f"--reps {args.reps}` ({args.jobs} noop jobs a pass, one every "
               f"{args.interval_ms:g} ms, `POST /v1/jobs` on one keep-alive connection, idle "
               f"daemon; target p50 ≤ 2 ms, p99 ≤ 5 ms; medians over {args.reps} runs, each "
               "with a fresh daemon)\n",
               *table,
               "\nEnd points: the finish stamp is the daemon's own clock as the actor "
               "finishes (before its completion is committed); the answer to the POST comes "
               f"once the submission is committed (synchronous = {args.synchronous.upper()}"
               f"{': fsynced' if args.synchronous == 'full' else ': not fsynced'}); "
               "\"seen by the client\" comes once the completion is committed and "
               "reached the client. A submission through the API rides the next pull cycle "
               "of an idle lane, so one transaction commits and claims it; a second commits "
               "its completion.",
           ]))


if __name__ == "__main__":
    main()
