"""Soak: one daemon at a steady mixed load for a long time; does anything grow?

One ``deepmox run`` on a SQLite file and the filesystem object store, with its
HTTP port. This script submits a steady mix through the HTTP API (noop jobs,
``sleep`` jobs that need continuations, ``fail`` jobs that recover after
transient errors, ``fail`` jobs that fail for good, and a short
``video.transcode`` now and then), scrapes ``/metrics``, opens and closes
a websocket feed client now and then and keeps another connected throughout
(a status page left open), while it samples the daemon's resident memory, open
file descriptors, threads and child processes every ``--sample-s`` seconds.

Targets: after the first ``--warmup-minutes`` (5), no growth beyond 10%
(the median of the last minute's samples against the median of the minute
after the warm-up); after the load stops and the queue drains, no child
process (ffmpeg) left and no scratch folder left; every job in the state its
kind implies; the daemon drains and exits 0 on SIGTERM; the client that
stayed connected got every event of its span, once, in order.

    .venv/bin/python bench/soak.py [--minutes 30] [--warmup-minutes 5] [--no-record]

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from _harness import Daemon, free_port, prepare, record, workdir, write_config
from _reliability import record_reliability
from deepmox.testing import media_samples

GROWTH_LIMIT = 0.10
#: per second of load: (kind, payload, expected final state, how many per tick)
MIX: list[tuple[str, dict[str, Any], str, float]] = [
    ("noop", {"value": 1}, "completed", 8),
    ("sleep", {"seconds": 3.0, "steps": 6}, "completed", 1),
    ("fail", {"error_class": "transient", "times": 2}, "completed", 1),
    ("fail", {"error_class": "permanent", "times": 1}, "failed", 0.2),
]
VIDEO_EVERY_S = 30.0
#: short, so that the sleep jobs run as continuations; video gets room to spare
#: (the soak is about leaks, not budgets)
BUDGET_S = 2.0
VIDEO_BUDGET_S = 10.0
FEED_EVERY_S = 30.0


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int
    children: int
    pending: int


@dataclass
class Load:
    submitted: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    feeds: int = 0
    scrapes: int = 0
    #: the feed client that stays connected: events, the first and the last
    #: event id, ids that did not grow, and how it ended
    watched: int = 0
    watch_first: int | None = None
    watch_last: int = 0
    watch_disorder: int = 0
    watch_closed: str = ""


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (ffmpeg runs in its own process
    group, but it is still the daemon's child)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def sample(pid: int, db: Path, t0: float) -> Sample:
    st = proc_status(pid)
    with sqlite3.connect(db, timeout=10) as conn:
        pending = conn.execute("SELECT count(*) FROM jobs WHERE state IN "
                               "('pending', 'in_progress')").fetchone()[0]
    return Sample(t=time.monotonic() - t0, rss_mb=int(st["VmRSS"].split()[0]) / 1024,
                  fds=len(os.listdir(f"/proc/{pid}/fd")), threads=int(st["Threads"]),
                  children=len(children(pid)), pending=int(pending))


async def submit_loop(base: str, clip: Path, load: Load, stop_at: float) -> None:
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        credit = {i: 0.0 for i in range(len(MIX))}
        next_video = trio.current_time()
        tick = trio.current_time()
        while trio.current_time() < stop_at:
            batch: list[tuple[str, dict[str, Any]]] = []
            for i, (kind, payload, _, per_tick) in enumerate(MIX):
                credit[i] += per_tick
                while credit[i] >= 1:
                    credit[i] -= 1
                    batch.append((kind, payload))
            if trio.current_time() >= next_video:
                next_video += VIDEO_EVERY_S
                batch.append(("video.transcode", {"source": clip.as_uri()}))
            for kind, payload in batch:
                r = await http.post("/v1/jobs", json={"kind": kind, "payload": payload,
                                                      "max_attempts": 10})
                if r.status_code == 201:
                    load.submitted[kind] = load.submitted.get(kind, 0) + 1
                else:
                    load.refused += 1
            tick += 1.0
            await trio.sleep_until(tick)  # wall-clock: the load's own pace


async def side_loop(base: str, load: Load, stop_at: float) -> None:
    """A Prometheus scrape every 5 s, a feed client that connects, reads its
    snapshot and a few messages, and leaves, every ``FEED_EVERY_S``."""
    ws = base.replace("http://", "ws://") + "/v1/feed"
    next_feed = trio.current_time() + 5
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        while trio.current_time() < stop_at:
            (await http.get("/metrics")).raise_for_status()
            load.scrapes += 1
            if trio.current_time() >= next_feed:
                next_feed += FEED_EVERY_S
                async with open_websocket_url(ws) as socket:
                    for _ in range(3):
                        await socket.get_message()
                load.feeds += 1
            await trio.sleep(5)  # wall-clock: the scrape interval


async def watcher(base: str, load: Load, stop_at: float) -> None:
    """A feed client connected for the whole run (a status page left open),
    reading every event; what it got is checked against the database."""
    ws = base.replace("http://", "ws://") + "/v1/feed"
    try:
        async with open_websocket_url(ws, max_message_size=1 << 24) as socket:
            while trio.current_time() < stop_at:
                with trio.move_on_at(stop_at):
                    frame = await socket.get_message()
                    for line in str(frame).splitlines():
                        message = json.loads(line)
                        if message.get("type") != "event":
                            continue
                        event_id = int(message["id"])
                        if load.watch_first is None:
                            load.watch_first = event_id
                        if event_id <= load.watch_last:
                            load.watch_disorder += 1
                        load.watch_last = max(load.watch_last, event_id)
                        load.watched += 1
            load.watch_closed = "stayed connected"
    except ConnectionClosed as exc:
        load.watch_closed = f"closed by the daemon: {exc.reason}"


def watched_complete(db: Path, load: Load) -> bool:
    """Whether the watching client got exactly the events the database holds
    from its first to its last, in order."""
    if load.watch_first is None:
        return False
    with sqlite3.connect(db, timeout=10) as conn:
        (stored,) = conn.execute("SELECT count(*) FROM job_events WHERE id BETWEEN ? AND ?",
                                 (load.watch_first, load.watch_last)).fetchone()
    return bool(stored == load.watched and load.watch_disorder == 0)


async def run_load(base: str, clip: Path, pid: int, db: Path, minutes: float, every_s: float,
                   samples: list[Sample], load: Load) -> None:
    t0 = time.monotonic()
    stop_at = trio.current_time() + minutes * 60
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit_loop, base, clip, load, stop_at)
        nursery.start_soon(side_loop, base, load, stop_at)
        nursery.start_soon(watcher, base, load, stop_at)
        while trio.current_time() < stop_at:
            s = await trio.to_thread.run_sync(sample, pid, db, t0)
            samples.append(s)
            print(f"{s.t / 60:6.1f} min  RSS {s.rss_mb:6.1f} MB  fds {s.fds:3}  threads "
                  f"{s.threads:3}  children {s.children}  unfinished {s.pending}", flush=True)
            await trio.sleep(every_s)  # wall-clock: the sampling interval


def window(samples: list[Sample], start_s: float, end_s: float) -> list[Sample]:
    return [s for s in samples if start_s <= s.t < end_s]


def growth(samples: list[Sample], attr: str, warmup_s: float, end_s: float) -> tuple[
        float, float, float, float]:
    """(baseline median, final median, growth of final over baseline, peak after warm-up)."""
    first = window(samples, warmup_s, warmup_s + 60) or samples[-1:]
    last = window(samples, end_s - 60, end_s + 1) or samples[-1:]
    base = statistics.median(getattr(s, attr) for s in first)
    final = statistics.median(getattr(s, attr) for s in last)
    peak = max(getattr(s, attr) for s in window(samples, warmup_s, end_s + 1) or samples)
    return base, final, (final - base) / base if base else 0.0, peak


def expected_states(db: Path) -> tuple[dict[str, int], list[str]]:
    wrong = []
    counts: dict[str, int] = {}
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute("SELECT id, kind, payload, state FROM jobs").fetchall()
    for job_id, kind, payload, state in rows:
        counts[state] = counts.get(state, 0) + 1
        want = "completed"
        if kind == "fail" and json.loads(payload).get("error_class") == "permanent":
            want = "failed"
        if state != want:
            wrong.append(f"{job_id} ({kind}) is {state}, expected {want}")
    return counts, wrong


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-minutes", type=float, default=5)
    ap.add_argument("--sample-s", type=float, default=10)
    ap.add_argument("--no-record", action="store_true", help="print only")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.warmup_minutes + 1 > args.minutes:
        ap.error("--minutes must exceed --warmup-minutes by at least one")
    d = workdir("soak")
    media, scratch, db = d / "media", d / "scratch", d / "deepmox.db"
    media.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(exist_ok=True)
    clip = trio.run(lambda: media_samples.make_clip(media / "clip.mp4", seconds=4.0))
    port = free_port()
    cfg_path = write_config(d / "deepmox.toml", "\n".join([
        "[d1]", f'path = "{db}"', "synchronous = \"normal\"",
        "[r2]", f'path = "{d / "r2"}"',
        "[server]", f'listen = "127.0.0.1:{port}"',
        "[video]", f'allowed_dirs = ["{media}"]', f'scratch_dir = "{scratch}"',
        "thumbnails = 1",
        "[supervisor]", 'node = "soak"', f"budget_s = {BUDGET_S}", "lease_grace_s = 2.0",
        "backoff_base_s = 0.2", "backoff_max_s = 2.0", "drain_s = 10.0",
        '[kinds."video.transcode"]', f"budget_s = {VIDEO_BUDGET_S}", ""]))
    prepare(cfg_path)
    daemon = Daemon(cfg_path, log=d / "daemon.log")
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    base = f"http://127.0.0.1:{port}"
    samples: list[Sample] = []
    load = Load()
    failures: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not come up")
            time.sleep(0.2)  # wall-clock: waiting for another process
        trio.run(run_load, base, clip, pid, db, args.minutes, args.sample_s, samples, load)
        drained_at = time.monotonic() + 120
        while sample(pid, db, 0).pending:
            if time.monotonic() > drained_at:
                failures.append("the queue did not drain within 120 s of the load's end")
                break
            time.sleep(0.5)  # wall-clock: waiting for another process
        kids = children(pid)
        end = sample(pid, db, 0)
        daemon_rc = daemon.stop(timeout=60)
        leftovers = sorted(p.name for p in scratch.iterdir())
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
    counts, wrong = expected_states(db)
    warmup_s, end_s = args.warmup_minutes * 60, args.minutes * 60
    table = []
    for attr, label in (("rss_mb", "RSS MB"), ("fds", "open fds"), ("threads", "threads")):
        b, f, g, peak = growth(samples, attr, warmup_s, end_s)
        ok = g <= GROWTH_LIMIT
        if not ok:
            failures.append(f"{label} grew {g:+.1%} after the warm-up ({b:g} -> {f:g})")
        table.append(f"| {label} | {b:.1f} | {f:.1f} | {g:+.1%} | {peak:.1f} | "
                     f"{'yes' if ok else '**no**'} |")
    if kids:
        failures.append(f"{len(kids)} child processes left after the drain: {kids}")
    if leftovers:
        failures.append(f"{len(leftovers)} scratch folders left: {leftovers[:5]}")
    if wrong:
        failures.append(f"{len(wrong)} jobs not in their expected state, e.g. {wrong[:3]}")
    if daemon_rc != 0:
        failures.append(f"the daemon exited {daemon_rc} on SIGTERM")
    complete = watched_complete(db, load)
    watch_line = (f"the feed client connected for the whole run got {load.watched:,} events "
                  f"({load.watch_closed or 'never connected'}): "
                  + ("every event the database holds over that span, once, in order"
                     if complete else f"**not** complete and in order "
                     f"({load.watch_disorder} out of order)"))
    if not complete:
        failures.append(watch_line)
    total = sum(load.submitted.values())
    after = window(samples, warmup_s, end_s + 1) or samples
    backlog = (statistics.median(x.pending for x in after), max(x.pending for x in after))
    print()
    print(f"soak: {args.minutes:g} min, {total} jobs submitted ({load.submitted}), "
          f"{load.refused} refused, {load.scrapes} scrapes, {load.feeds} feed clients; "
          f"final states {counts}")
    print("\n".join(table))
    print(f"backlog after warm-up: median {backlog[0]:g}, max {backlog[1]}")
    print(f"children after drain: {len(kids)}; scratch folders left: {len(leftovers)}; "
          f"daemon exit {daemon_rc}; RSS at the end {end.rss_mb:.1f} MB")
    print(watch_line)
    for f in failures:
        print("FAIL:", f)
    if not args.no_record:
        body = "\n".join([
            f"`.venv/bin/python bench/soak.py --minutes {args.minutes:g}` (one daemon, SQLite "
            "and the filesystem store, HTTP port on; per second through the HTTP API: "
            + ", ".join(f"{n:g} {k} `{json.dumps(p)}`" for k, p, _, n in MIX)
            + f"; a 4 s `video.transcode` every {VIDEO_EVERY_S:g} s; a `/metrics` scrape "
            f"every 5 s; a feed client every {FEED_EVERY_S:g} s and one connected throughout; "
            f"samples every "
            f"{args.sample_s:g} s; budget {BUDGET_S:g} s ({VIDEO_BUDGET_S:g} s for video); target: "
            "growth ≤ "
            f"{GROWTH_LIMIT:.0%} after the first {args.warmup_minutes:g} minutes, nothing "
            "left behind)\n",
            "| measured | median, minute after warm-up | median, last minute | growth | "
            "peak after warm-up | within target |",
            "|---|---:|---:|---:|---:|---|",
            *table,
            "",
            f"{total:,} jobs submitted, final states "
            + ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items()))
            + f" (each as its kind implies: {'yes' if not wrong else 'no'}); jobs pending or "
            f"running after the warm-up: median {backlog[0]:g}, at most {backlog[1]} (the "
            "daemon keeps up); child processes "
            f"after the drain: {len(kids)}; scratch folders left: {len(leftovers)}; the daemon "
            f"drained and exited {daemon_rc} on SIGTERM; {watch_line}."
            + ("" if not failures else "\n\nMissed: " + "; ".join(failures)),
        ])
        record("Soak: one daemon at a steady mixed load", body)
        record_reliability("soak", body)
    if not args.keep and not failures:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"work folder kept: {d}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
