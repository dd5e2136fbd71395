"""The live feed under load: 5,000 noop jobs drained while 200 websocket
clients follow the feed, against the same drain with no client. Target:
throughput with clients at least 80% of the run without; every client that
was not dropped received every event of those jobs, in order.

The daemon runs as its own process; the clients share this one (trio,
trio-websocket), on the same 2 cores.

    .venv/bin/python bench/feed_clients.py [--jobs 5000] [--clients 200]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time

import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from _harness import Daemon, free_port, prepare, record, sqlite_config, workdir, write_config
from deepmox import config
from deepmox.client import JobSpec, open_client


class Ev(msgspec.Struct):
    type: str
    id: int = 0
    job_id: str = ""
    event: str = ""


_decode = msgspec.json.Decoder(Ev).decode


class Follower:
    def __init__(self) -> None:
        self.events = 0
        self.in_order = True
        self.last = 0
        self.dropped = False
        self.completed = 0


async def follow(url: str, me: Follower, ready: trio.Semaphore,
                 stop: trio.Event) -> None:
    try:
        async with open_websocket_url(url, message_queue_size=64, receive_buffer_size=1 << 20,
                                      max_message_size=16 << 20) as ws:
            await ws.get_message()  # the snapshot
            ready.release()
            while not stop.is_set():
                frame = await ws.get_message()
                for line in frame.splitlines():
                    m = _decode(line)
                    if m.type != "event":
                        continue
                    if m.id <= me.last:
                        me.in_order = False
                    me.last = m.id
                    me.events += 1
                    if m.event == "completed":
                        me.completed += 1
    except ConnectionClosed as exc:
        me.dropped = exc.reason.code == 1013


def run(jobs: int, clients: int) -> tuple[float, list[Follower]]:
    d = workdir("feed")
    db = d / "deepmox.db"
    port = free_port()
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(db, listen=f"127.0.0.1:{port}"))
    cfg = prepare(cfg_path)
    daemon = Daemon(cfg_path)
    daemon.start()
    followers = [Follower() for _ in range(clients)]
    took = 0.0
    try:
        async def main() -> None:
            nonlocal took
            url = f"ws://127.0.0.1:{port}/v1/feed"
            with trio.fail_after(30):
                while True:
                    try:
                        async with open_websocket_url(url):
                            break
                    except (OSError, HandshakeError):
                        await trio.sleep(0.05)
            stop = trio.Event()
            ready = trio.Semaphore(0)
            async with trio.open_nursery() as nursery:
                for me in followers:
                    nursery.start_soon(follow, url, me, ready, stop)
                for _ in followers:
                    await ready.acquire()
                conn = sqlite3.connect(db)
                async with open_client(config.load(cfg_path)) as client:
                    t0 = time.perf_counter()
                    for i in range(0, jobs, 1000):
                        await client.submit_many(
                            [(JobSpec(kind="noop"), None)] * min(1000, jobs - i))
                    while conn.execute("SELECT count(*) FROM jobs WHERE state = 'completed'"
                                       ).fetchone()[0] < jobs:
                        await trio.sleep(0.005)
                    took = time.perf_counter() - t0
                with trio.move_on_after(120):
                    while any(not f.dropped and f.completed < jobs for f in followers):
                        await trio.sleep(0.05)
                stop.set()
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        daemon.stop()
        shutil.rmtree(d)
    del cfg
    return jobs / took, followers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=200)
    args = ap.parse_args()
    alone, _ = run(args.jobs, 0)
    loaded, followers = run(args.jobs, args.clients)
    kept = [f for f in followers if not f.dropped]
    complete = [f for f in kept if f.events >= 3 * args.jobs and f.in_order]
    print(f"{args.jobs} jobs: {alone:,.0f} jobs/s alone, {loaded:,.0f} jobs/s with "
          f"{args.clients} feed clients ({loaded / alone:.0%}); dropped "
          f"{len(followers) - len(kept)}; complete and in order {len(complete)}/{len(kept)}")
    record("Feed: 200 clients while jobs drain", "\n".join([
        f"`.venv/bin/python bench/feed_clients.py --jobs {args.jobs} --clients {args.clients}` "
        "(one daemon process; the clients in the bench process, on the same 2 cores; "
        "targets: ≥ 80% of the throughput without clients, every client not dropped "
        "receives every event in order)\n",
        "| jobs/s without clients | jobs/s with clients | ratio | clients dropped | "
        "complete and in order |", "|---:|---:|---:|---:|---:|",
        f"| {alone:,.0f} | {loaded:,.0f} | {loaded / alone:.0%} | "
        f"{len(followers) - len(kept)} | {len(complete)}/{len(kept)} |",
        "\nA frame carries every message that piled up for its client (one JSON object per "
        "line), so the fan-out costs one send per client per burst.",
    ]))


if __name__ == "__main__":
    main()
