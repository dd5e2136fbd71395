"""Throughput: N pre-queued ``noop`` jobs drained by one daemon process.

``throughput`` counts from just before the daemon is spawned until the
database shows no pending or running job (process start included, as the
peer harness counts); ``steady`` leaves the start out (from the first
completion seen). Target: at least 15,000 jobs/s on 2 cores.

    .venv/bin/python bench/throughput.py [--n 5000 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from _harness import (
    Daemon,
    fill,
    prepare,
    record,
    remaining,
    sqlite_config,
    workdir,
    write_config,
)

TARGET = 15_000


def one(n: int) -> dict[str, float]:
    d = workdir("tp")
    db = d / "deepmox.db"
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(db))
    cfg = prepare(cfg_path)
    fill_s = fill(cfg, n)
    left = remaining(db)
    daemon = Daemon(cfg_path)
    t0 = daemon.start()
    t1 = c1 = None
    while True:
        r = left()
        now = time.perf_counter()
        if t1 is None and r < n:
            t1, c1 = now, n - r
        if r == 0:
            t_end = now
            break
        time.sleep(0.005)
    daemon.stop()
    shutil.rmtree(d)
    assert t1 is not None
    assert c1 is not None
    return {
        "throughput": n / (t_end - t0),
        "steady": (n - c1) / (t_end - t1) if t_end > t1 else float("nan"),
        "startup_s": t1 - t0,
        "bulk_submit_per_s": n / fill_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n in args.n:
        runs = [one(n) for _ in range(args.reps)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((n, med))
        print(f"n={n}: throughput {med['throughput']:,.0f}/s, steady {med['steady']:,.0f}/s, "
              f"startup {med['startup_s']:.2f} s, bulk submit {med['bulk_submit_per_s']:,.0f}/s "
              f"(median of {args.reps})", flush=True)
    body = ["`.venv/bin/python bench/throughput.py` (median of "
            f"{args.reps} runs each; target {TARGET:,} jobs/s)\n",
            "| jobs | throughput/s (incl. start) | steady/s | startup s | bulk submit/s |",
            "|---:|---:|---:|---:|---:|"]
    for n, m in rows:
        body.append(f"| {n:,} | {m['throughput']:,.0f} | {m['steady']:,.0f} | "
                    f"{m['startup_s']:.2f} | {m['bulk_submit_per_s']:,.0f} |")
    body.append("\nOne daemon, default configuration (max_actors 200, SQLite synchronous=FULL, "
                "WAL); done = no job pending or in progress in the database.")
    record("Throughput: pre-queued noop jobs, one daemon", "\n".join(body))


if __name__ == "__main__":
    main()
