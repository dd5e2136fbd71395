"""The describe step's own overhead: ``ai.describe`` jobs, one at a time, on a
daemon whose anthropic provider talks to an instant Messages API fake (it
answers valid metadata at once, from this process).

The figure is the ``describe:anthropic`` step's own time as the actor
measured it (``times`` in the job's checkpoint): building the prompt, passing
the gate, the SDK's request and parse over loopback, validation and the
step's record -- everything but the model. Target: under 20 ms per job. For
scale, the same request made with a bare ``AsyncAnthropic`` in this process,
and the ``describe:heuristic`` step.

    .venv/bin/python bench/describe_overhead.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import anthropic
import trio

from _harness import (
    ROOT,
    Daemon,
    percentile,
    prepare,
    record,
    sqlite_config,
    workdir,
    write_config,
)
from deepmox.client import JobSpec, open_client
from deepmox.config import Config

sys.path.insert(0, str(ROOT))
from tests.fakes.messages_server import ok, serve_messages

ANSWER = json.dumps({"title": "Bread", "summary": "A talk about bread.", "tags": ["bread"],
                     "chapters": [{"start_s": 0, "title": "Bread"}]})
KEY = "sk-made-up-for-the-overhead-bench"
TEXT = "A talk about sourdough bread, starters and ovens. " * 40


def step_times(db: Path, step: str) -> list[float]:
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute("SELECT checkpoint FROM jobs WHERE state = 'completed'").fetchall()
    return [json.loads(r[0])["times"][step] * 1000 for r in rows
            if step in json.loads(r[0]).get("times", {})]


async def drive(cfg: Config, configs: list[Path], jobs: int) -> tuple[float, list[float]]:
    async with trio.open_nursery() as nursery:
        fake = await serve_messages(nursery, default=ok(ANSWER, input_tokens=500,
                                                         output_tokens=60))
        # the SDK alone, same request, same fake
        bare = []
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.base_url,
                                            max_retries=0) as client:
            for _ in range(jobs):
                t = time.perf_counter()
                await client.messages.create(
                    model="claude-sonnet-5-5", max_tokens=2048, system="s",
                    messages=[{"role": "user", "content": TEXT}])
                bare.append((time.perf_counter() - t) * 1000)
        daemon = Daemon(configs[0], env={"ANTHROPIC_BASE_URL": fake.base_url,
                                         "ANTHROPIC_API_KEY": KEY})
        daemon.start()
        deadline = time.monotonic() + 60
        while '"event":"ready"' not in (daemon.log.read_text() if daemon.log.exists() else ""):
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not get ready")
            await trio.sleep(0.05)
        t0 = time.perf_counter()
        async with open_client(cfg) as client:
            for _ in range(jobs):
                job, _ = await client.submit(JobSpec(kind="ai.describe",
                                                     payload={"transcript": TEXT}))
                while (await client.get(job.id)).state not in ("completed", "failed"):
                    await trio.sleep(0.01)
        took = time.perf_counter() - t0
        daemon.stop()
        await fake.shutdown()
        nursery.cancel_scope.cancel()
    return took, bare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    results = {}
    bare: list[float] = []
    for provider in ("anthropic", "heuristic"):
        d = workdir("describe")
        db = d / "deepmox.db"
        path = write_config(d / "deepmox.toml", sqlite_config(db, extra=(
            f'[ai]\nproviders = ["{provider}"]\n[ai.anthropic]\nrequests_per_minute = 0\n')))
        cfg = prepare(path)
        took, b = trio.run(drive, cfg, [path], args.jobs)
        bare = bare or b
        results[provider] = (took, step_times(db, f"describe:{provider}"))
    rows = []
    for provider, (took, times) in results.items():
        rows.append(f"| `describe:{provider}` step | {len(times)} | {percentile(times, 0.5):.2f} "
                    f"| {percentile(times, 0.95):.2f} | {percentile(times, 0.99):.2f} |")
        print(f"describe:{provider}: {len(times)} jobs in {took:.1f} s; step p50 "
              f"{percentile(times, 0.5):.2f} ms, p95 {percentile(times, 0.95):.2f} ms, "
              f"p99 {percentile(times, 0.99):.2f} ms")
    rows.append(f"| bare `AsyncAnthropic` request, same fake | {len(bare)} | "
                f"{percentile(bare, 0.5):.2f} | {percentile(bare, 0.95):.2f} | "
                f"{percentile(bare, 0.99):.2f} |")
    print(f"bare SDK request: p50 {percentile(bare, 0.5):.2f} ms, "
          f"p95 {percentile(bare, 0.95):.2f} ms")
    body = "\n".join(rows)
    record("AI describe step overhead", f"""
`.venv/bin/python bench/describe_overhead.py --jobs {args.jobs}` (`ai.describe` jobs one at a
time on one daemon; the anthropic provider against the Messages API fake answering valid
metadata at once, from the bench's process; a 2,000-character transcript; target: the step's
own time under 20 ms per job)

| measured | jobs | p50 ms | p95 ms | p99 ms |
|---|---:|---:|---:|---:|
{body}

The step's time is what the actor measured around the step (the checkpoint's `times`):
the prompt, the gate, the SDK's request and parse over loopback to the fake, validation.
The bare request is the same call made by the SDK alone from the bench's process, the
floor the step cannot go below.
""")


if __name__ == "__main__":
    main()
