"""Idle daemon: resident memory and CPU use of a daemon with nothing to do.

Starts a daemon on an empty SQLite database, lets it settle for
``--settle`` seconds, then samples ``/proc`` for ``--seconds``. Targets: RSS at
most 60 MB, CPU under 1% of one core.

    .venv/bin/python bench/idle.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from _harness import Daemon, prepare, record, sqlite_config, workdir, write_config


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--settle", type=float, default=5)
    args = ap.parse_args()
    d = workdir("idle")
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(d / "deepmox.db"))
    prepare(cfg_path)
    daemon = Daemon(cfg_path)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    try:
        time.sleep(args.settle)
        c0, t0 = cpu_s(pid), time.perf_counter()
        peak = 0.0
        while time.perf_counter() - t0 < args.seconds:
            peak = max(peak, rss_mb(pid))
            time.sleep(1)
        cpu = (cpu_s(pid) - c0) / (time.perf_counter() - t0) * 100
    finally:
        daemon.stop()
        shutil.rmtree(d)
    print(f"idle daemon: RSS {peak:.1f} MB, CPU {cpu:.2f}% of one core over {args.seconds:g} s")
    record("Idle daemon", "\n".join([
        f"`.venv/bin/python bench/idle.py` (empty SQLite database, default settings, "
        f"sampled for {args.seconds:g} s after {args.settle:g} s; targets RSS ≤ 60 MB, "
        "CPU < 1%)\n",
        "| RSS MB (peak) | CPU % of one core |", "|---:|---:|",
        f"| {peak:.1f} | {cpu:.2f} |",
        "\nIdle, the pull cycle backs off to `poll_max_s` (1 s); local submissions wake it "
        "through the wake socket.",
    ]))


if __name__ == "__main__":
    main()
