"""Shared helpers for the bench scripts: a fresh database, a daemon process,
a client on its own trio thread, and writing figures into BENCHMARKS.md.

Run everything from the repository root with the project's venv
(``make bench``). Figures are wall-clock measurements on a shared machine:
compare ratios measured in one run.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import trio

from deepmox import config
from deepmox.bindings.d1 import open_d1
from deepmox.bindings.d1.migrate import migrate
from deepmox.client import Client, JobSpec, open_client

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
T = TypeVar("T")


def workdir(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"deepmox-bench-{name}-"))
    return d


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sqlite_config(db: Path, extra: str = "", listen: str = "") -> str:
    return f'[d1]\npath = "{db}"\n[server]\nlisten = "{listen}"\n{extra}'


def prepare(cfg_path: Path) -> config.Config:
    cfg = config.load(cfg_path)

    async def run() -> None:
        d1 = open_d1(cfg.d1)
        await migrate(d1, time.time())
        await d1.aclose()

    trio.run(run)
    return cfg


def fill(cfg: config.Config, n: int, kind: str = "noop", payload: Any = None,
         chunk: int = 2000) -> float:
    """Submit ``n`` jobs in bulk; returns the seconds it took."""

    async def run() -> None:
        async with open_client(cfg) as client:
            for i in range(0, n, chunk):
                m = min(chunk, n - i)
                await client.submit_many([(JobSpec(kind=kind, payload=payload or {}), None)] * m)

    t = time.perf_counter()
    trio.run(run)
    return time.perf_counter() - t


class Daemon:
    """``deepmox --config X run`` in its own process group."""

    def __init__(self, cfg_path: Path, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.cfg_path = cfg_path
        self.env = {**os.environ, **(env or {})}
        self.log = log or cfg_path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        t = time.perf_counter()
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deepmox", "--config", str(self.cfg_path),
             "--log-format", "json", "run"],
            stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return t

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.returncode


def remaining(db: Path) -> Callable[[], int]:
    """Jobs not yet finished, by two indexed counts (cheap to poll)."""
    conn = sqlite3.connect(db, timeout=10)

    def count() -> int:
        return int(conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE state = 'pending') + "
            "(SELECT count(*) FROM jobs WHERE state = 'in_progress')").fetchone()[0])

    return count


def wait_until(pred: Callable[[], bool], timeout: float, poll: float = 0.01) -> float:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(poll)
    return time.perf_counter()


class ClientThread:
    """A :class:`deepmox.client.Client` on a trio loop in a background thread,
    callable from synchronous code (the latency benchmarks submit from here)."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.client: Client | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_client(self.cfg) as client:
            self.client = client
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


def free_port() -> int:
    """A loopback port free right now (for a server started just after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def machine_load() -> str:
    """How busy the shared machine was over the last minute: the load average
    and, where the kernel reports it, CPU and I/O pressure (the share of time
    some task waited for a CPU, or every task for I/O)."""
    parts = [f"load average {os.getloadavg()[0]:.1f}"]
    for name, kind in (("cpu", "some"), ("io", "full")):
        try:
            with open(f"/proc/pressure/{name}") as f:
                for line in f:
                    if line.startswith(kind):
                        avg60 = line.split()[2].split("=")[1]
                        parts.append(f"{name.upper()} pressure {float(avg60):.0f}% ({kind})")
        except OSError:
            pass
    return ", ".join(parts)


def record(section: str, body: str) -> None:
    """Replace (or add) ``## section`` in BENCHMARKS.md with ``body``."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else (
        "# deepmox benchmarks\n\nWritten by the scripts under `bench/` (`make bench`); "
        "each section says the command that produced it. Wall-clock figures from a shared "
        "2-core machine: compare the ratios measured in one run.\n")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (f"## {section}\n\n_{stamp}; {machine()}; over the last minute: "
             f"{machine_load()}_\n\n{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(block + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + block
    BENCHMARKS.write_text(text.rstrip() + "\n")
