"""The retry storm: ``ai.describe`` jobs across daemons against a Messages API
that fails, then throttles.

The Messages API test fake (``tests/fakes/messages_server.py``) runs in this
process and allows ``--limit`` requests per sliding window of ``--window-s``
(200 per 60 s by default). It answers 503 to everything for ``--outage-s``
from the first request of the jobs, then 429 with ``retry-after`` to everything over
its limit. ``--daemons`` daemons (2) share one SQLite file, with the anthropic
provider pointed at the fake and no request limit of deepmox's own
(``requests_per_minute = 0``): only the gate's reading of the answers keeps
them in line.

Figures: requests sent per job (target at most 1.5), the most requests (any
answer) in any window (target at most the limit plus 10%), and every job
completed once the API recovers. ``--no-rate-headers`` runs against an API
that does not send ``anthropic-ratelimit-*`` headers, so that the 429s alone
must hold the daemons back. ``--quick`` is the short mode CI runs: the same
storm with time compressed six times (a window of 10 s, a 3 s outage);
``--json`` prints the figures as one JSON line.

    .venv/bin/python bench/ai_storm.py [--jobs 200] [--limit 200] [--window-s 60]
        [--outage-s 20] [--daemons 2] [--no-rate-headers] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import trio

from _harness import ROOT, Daemon, prepare, record, sqlite_config, workdir, write_config
from _reliability import record_reliability
from deepmox.client import JobSpec, open_client
from deepmox.config import Config

sys.path.insert(0, str(ROOT))
from tests.fakes.messages_server import MessagesFake, ok, serve_messages

KEY = "sk-made-up-for-the-storm-bench"
ANSWER = json.dumps({"title": "Bread and ovens", "summary": "A talk about bread and ovens.",
                     "tags": ["bread", "ovens"],
                     "chapters": [{"start_s": 0, "title": "Bread"},
                                  {"start_s": 300, "title": "Ovens"}]})


def daemon_config(db: Path, node: str) -> str:
    return sqlite_config(db, extra=(
        f'[supervisor]\nnode = "{node}"\npoll_max_s = 0.2\n'
        '[ai]\nproviders = ["anthropic"]\n'
        "[ai.anthropic]\nrequests_per_minute = 0\n"))


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=10) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def attempts(db: Path) -> dict[int, int]:
    with sqlite3.connect(db, timeout=10) as conn:
        return dict(conn.execute(
            "SELECT attempt, count(*) FROM jobs GROUP BY attempt").fetchall())


def storm(args: argparse.Namespace) -> dict[str, Any]:
    d = workdir("aistorm")
    db = d / "deepmox.db"
    configs = [write_config(d / f"node-{i}.toml", daemon_config(db, f"node-{i}"))
               for i in range(args.daemons)]
    cfg = prepare(configs[0])
    try:
        return trio.run(run, args, db, configs, cfg)
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def run(args: argparse.Namespace, db: Path, configs: list[Path],
              cfg: Config) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        fake: MessagesFake = await serve_messages(
            nursery, limit_per_minute=args.limit, window_s=args.window_s,
            rate_headers=not args.no_rate_headers,
            default=ok(ANSWER, input_tokens=400, output_tokens=80))
        env = {"ANTHROPIC_BASE_URL": fake.base_url, "ANTHROPIC_API_KEY": KEY}
        daemons = [Daemon(c, env=env) for c in configs]
        for daemon in daemons:
            daemon.start()
        deadline = time.monotonic() + 60
        while not all('"event":"ready"' in (daemon.log.read_text() if daemon.log.exists()
                                             else "") for daemon in daemons):
            if time.monotonic() > deadline:
                raise SystemExit("the daemons did not get ready")
            await trio.sleep(0.05)
        payloads = [{"transcript": f"Talk number {i} about bread and ovens.",
                     "duration_s": 600} for i in range(args.jobs)]
        fake.outage(args.outage_s, from_next_request=True)
        started = trio.current_time()
        async with open_client(cfg) as client:
            await client.submit_many([(JobSpec(kind="ai.describe", payload=p), None)
                                      for p in payloads])
        deadline = time.monotonic() + args.timeout_s
        while True:
            c = counts(db)
            if c.get("pending", 0) + c.get("in_progress", 0) == 0:
                break
            if time.monotonic() > deadline:
                break
            await trio.sleep(0.1)
        took = trio.current_time() - started
        for daemon in daemons:
            daemon.stop()
        statuses = collections.Counter(status for _, status in fake.log)
        figures = {
            "jobs": args.jobs, "daemons": args.daemons, "limit": args.limit,
            "window_s": args.window_s, "outage_s": args.outage_s,
            "rate_headers": not args.no_rate_headers,
            "requests": len(fake.log), "requests_per_job": round(len(fake.log) / args.jobs, 3),
            "most_in_window": fake.most_in_window(),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "states": c, "attempts": {str(k): v for k, v in sorted(attempts(db).items())},
            "seconds": round(took, 1),
            "first_request_s": round(fake.log[0][0] - started, 3) if fake.log else None,
        }
        await fake.shutdown()
        nursery.cancel_scope.cancel()
    figures["ok"] = (figures["requests_per_job"] <= 1.5
                     and figures["most_in_window"] <= args.limit * 1.1
                     and c.get("completed", 0) == args.jobs)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--outage-s", type=float, default=20.0)
    ap.add_argument("--daemons", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--no-rate-headers", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.window_s, args.outage_s, args.timeout_s = 10.0, 3.0, 150.0
    runs = [args]
    if not args.quick and not args.no_rate_headers:
        runs.append(argparse.Namespace(**{**vars(args), "no_rate_headers": True}))
    results = [storm(a) for a in runs]
    for f in results:
        if args.json:
            print(json.dumps(f))
        else:
            print(f"{f['jobs']} jobs, {f['daemons']} daemons, limit {f['limit']} per "
                  f"{f['window_s']:g} s, outage {f['outage_s']:g} s, rate headers "
                  f"{'on' if f['rate_headers'] else 'off'}: {f['requests']} requests "
                  f"({f['requests_per_job']} per job), at most {f['most_in_window']} in a "
                  f"window, answers {f['statuses']}, states {f['states']}, {f['seconds']} s")
    if not args.quick and not args.no_record:
        rows = "\n".join(
            f"| {'yes' if f['rate_headers'] else 'no'} | {f['jobs']} | {f['requests']} | "
            f"{f['requests_per_job']:.2f} | {f['most_in_window']} "
            f"({f['most_in_window'] / f['limit']:.0%} of the limit) | "
            f"{f['statuses'].get('503', 0)} | {f['statuses'].get('429', 0)} | "
            f"{f['states'].get('completed', 0)} | {f['seconds']:g} |" for f in results)
        a = results[0]
        text = f"""
`.venv/bin/python bench/ai_storm.py` ({a['jobs']} `ai.describe` jobs submitted at once to
{a['daemons']} daemons on one SQLite file; the Messages API fake allows {a['limit']} requests
per sliding {a['window_s']:g} s, answers 503 to everything for the first {a['outage_s']:g} s,
then 429 with retry-after over its limit; deepmox has no request limit of its own
configured, `max_concurrent` 4 per daemon (the default); targets: at most 1.5 requests
per job, at most the limit + 10% in any window, every job completed)

| rate headers | jobs | requests | per job | most in any {a['window_s']:g} s | 503s | 429s \
| completed | seconds |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

Requests count every answer the fake gave (200, 503 and 429). With the
`anthropic-ratelimit-requests-*` headers the gate spends at most half of what
the API says is left and waits for its reset when nothing is; without them a
429's `retry-after` holds every daemon back through the shared throttle.
"""
        record("AI retry storm", text)
        record_reliability("ai-storm", text)
    sys.exit(0 if all(f["ok"] for f in results) else 1)


if __name__ == "__main__":
    main()
