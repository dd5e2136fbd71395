"""D1 REST requests per job at steady load, with the ``http`` backend against
the D1 REST test fake (tests/fakes/d1_server.py) on loopback.

A client submits ``--rate`` noop jobs per second in batches (one request per
batch) for ``--seconds``; one daemon with the default request budget
(1,200 per 5 minutes) drains them. The fake counts every request; the
client's own requests are subtracted. Target: at most 0.2 daemon requests
per job.

    .venv/bin/python bench/d1_requests.py [--rate 50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import httpx2
import trio

from _harness import ROOT, Daemon, record, workdir, write_config
from deepmox import config
from deepmox.bindings.d1 import open_d1
from deepmox.bindings.d1.migrate import migrate
from deepmox.client import JobSpec, open_client

TOKEN = "bench-token-not-a-secret"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    d = workdir("d1req")
    env = {**os.environ, "D1_FAKE_TOKEN": TOKEN, "CLOUDFLARE_API_TOKEN": TOKEN}
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fakes" / "d1_server.py"), "--db",
         str(d / "fake.db")], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert fake.stdout is not None
        api_base = fake.stdout.readline().split()[1]
        origin = api_base.removesuffix("/client/v4")
        cfg_path = write_config(d / "deepmox.toml", (
            f'[d1]\nbackend = "http"\napi_base = "{api_base}"\naccount_id = "acc"\n'
            'database_id = "db"\n[server]\nlisten = ""\n'))
        os.environ["CLOUDFLARE_API_TOKEN"] = TOKEN
        cfg = config.load(cfg_path)
        n_jobs = int(args.rate * args.seconds)

        async def run() -> tuple[int, float]:
            d1 = open_d1(cfg.d1)
            await migrate(d1, time.time())
            await d1.aclose()
            daemon = Daemon(cfg_path, env=env)
            daemon.start()
            client_requests = 0
            try:
                async with open_client(cfg) as client:
                    httpx = httpx2.AsyncClient()
                    base = (await httpx.get(f"{origin}/__control/stats")).json()["requests"]
                    start = trio.current_time()
                    sent = 0
                    while sent < n_jobs:
                        m = min(args.batch, n_jobs - sent)
                        await client.submit_many([(JobSpec(kind="noop"), None)] * m)
                        client_requests += 1
                        sent += m
                        await trio.sleep_until(start + sent / args.rate)
                    while (await client.counts())["completed"] < n_jobs:
                        client_requests += 1
                        await trio.sleep(0.5)
                    client_requests += 1
                    elapsed = trio.current_time() - start
                    total = (await httpx.get(f"{origin}/__control/stats")).json()["requests"]
                    await httpx.aclose()
            finally:
                daemon.stop()
            return total - base - client_requests, elapsed

        daemon_requests, elapsed = trio.run(run)
    finally:
        fake.terminate()
        fake.wait()
        shutil.rmtree(d)
    per_job = daemon_requests / n_jobs
    print(f"{n_jobs} jobs at {args.rate:g}/s over {elapsed:.1f} s: {daemon_requests} daemon "
          f"requests, {per_job:.3f} per job, {daemon_requests / elapsed:.2f} requests/s")
    record("D1 REST requests per job at steady load", "\n".join([
        "`.venv/bin/python bench/d1_requests.py` (http backend against the D1 REST test fake; "
        f"{n_jobs} noop jobs submitted at {args.rate:g}/s in batches of {args.batch}; "
        "default budget of 1,200 requests per 5 minutes; target ≤ 0.2 per job)\n",
        "| jobs | seconds | daemon requests | per job | requests/s |",
        "|---:|---:|---:|---:|---:|",
        f"| {n_jobs} | {elapsed:.1f} | {daemon_requests} | {per_job:.3f} | "
        f"{daemon_requests / elapsed:.2f} |",
        "\nEach pull cycle (acknowledgements, reap, claim, events, throttles) is one `/raw` "
        "batch request; the budget's refill rate (3.6 requests/s) sets the pace, so a busy "
        "daemon carries more jobs per request.",
    ]))


if __name__ == "__main__":
    main()
