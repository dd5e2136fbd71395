"""The ``deepmox`` command line against a live daemon: ``submit`` through the
HTTP API (and ``--direct``), ``submit --wait`` exit codes, ``watch --json``
across a daemon restart.

Rules: the daemon is ``deepmox run`` in its own process group (the ``cluster``
fixture), on a real SQLite file, with ``[server] listen = "127.0.0.1:0"``: the
port the kernel chose is read from its ``api_listening`` log record, so there
is no race for a free port; a restarted daemon asks for that same port. The
CLI runs as a child process with its own configuration file (the same
SQLite file, ``listen`` naming the daemon's port, no ``node``), and with
``DEEPMOX_CONFIG`` and tokens removed from its environment. Results are read
from the SQLite file. Nothing sleeps on the wall clock: process exits and
``watch`` output lines are awaited under bounded timeouts; the only polling
is :func:`tests.helpers.wait_until` (the daemon's log records, job counts).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from deepmox import config
from tests.helpers import query, toml, wait_until
from tests.integration.conftest import START_TIMEOUT_S, Cluster, Daemon

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "deepmox"
#: a CLI command's run, startup included, on a busy 2-core machine
CLI_TIMEOUT_S = 20.0


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (config.CONFIG_ENV, "CLOUDFLARE_API_TOKEN", "DEEPMOX_TOKEN",
                        "DEEPMOX_READ_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def start(cluster: Cluster, node: str, listen: str = "127.0.0.1:0") -> tuple[Daemon, str]:
    """``deepmox run`` as ``node`` on ``listen``; the daemon and its bound "host:port"."""
    daemon = await cluster.start_daemon(node, supervisor={"poll_max_s": 0.1},
                                        sections={"server": {"listen": listen}})

    def bound() -> str | None:
        for record in daemon.proc.logged("api_listening"):
            found = re.search(r"listening on (\S+)", record["msg"])
            if found:
                return found.group(1)
        return None

    address = await wait_until(bound, START_TIMEOUT_S, what=f"{node}'s HTTP port",
                               explain=daemon.proc.describe)
    return daemon, address


def cli_config(cluster: Cluster, address: str) -> Path:
    """The CLI's configuration: the daemons' SQLite file, ``listen`` = their port."""
    path = cluster.tmp_path / "cli.toml"
    path.write_text(toml({"d1": cluster.d1_section(), "server": {"listen": address}}))
    return path


@dataclass
class Result:
    pid: int
    returncode: int
    stdout: str
    stderr: str


async def spawn(cfg: Path, *args: str) -> trio.Process:
    """``deepmox --config cfg ARGS`` in its own process group, output on pipes."""
    return await trio.lowlevel.open_process(
        [str(BIN), "--config", str(cfg), *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=cfg.parent,
        start_new_session=True)


async def end(process: trio.Process) -> None:
    """Kill ``process``'s group if the leader still runs; reap it."""
    with trio.CancelScope(shield=True):
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


async def run_cli(cfg: Path, *args: str) -> Result:
    """Run ``deepmox --config cfg ARGS`` to its end, within ``CLI_TIMEOUT_S``."""
    process = await spawn(cfg, *args)
    output: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}

    async def collect(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
        assert stream is not None
        async for chunk in stream:
            into += chunk

    try:
        with trio.fail_after(CLI_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, process.stdout, output["out"])
                nursery.start_soon(collect, process.stderr, output["err"])
            returncode = await process.wait()
    finally:
        await end(process)
    return Result(process.pid, returncode, output["out"].decode(errors="replace"),
                  output["err"].decode(errors="replace"))


class Feed:
    """The JSON lines ``watch --json`` writes, each awaited under a timeout."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self.stream = process.stdout
        self.buffer = b""
        self.seen: list[dict[str, Any]] = []

    async def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise AssertionError(f"watch closed its stdout (returncode "
                                     f"{self.process.poll()}){self.tail()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def until(self, done: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str) -> list[dict[str, Any]]:
        """Messages up to the first one for which ``done(message)`` is true."""
        out: list[dict[str, Any]] = []
        try:
            with trio.fail_after(timeout):
                while True:
                    message = json.loads(await self._line())
                    assert isinstance(message, dict), message
                    assert "type" in message, f"not a feed message on watch's stdout: {message}"
                    self.seen.append(message)
                    out.append(message)
                    if done(message):
                        return out
        except trio.TooSlowError:
            raise AssertionError(f"watch printed no {what} within {timeout:g} s"
                                 f"{self.tail()}") from None

    def tail(self) -> str:
        return "; its last lines:\n" + "\n".join(map(str, self.seen[-10:]))


def events_of(messages: list[dict[str, Any]], job_id: str) -> list[str]:
    return [m["event"] for m in messages if m["type"] == "event" and m["job_id"] == job_id]


def submitted_node(cluster: Cluster, job_id: str) -> str:
    rows = query(cluster.db, "SELECT node FROM job_events WHERE job_id = ? AND type = ?",
                 job_id, "submitted")
    assert len(rows) == 1, rows
    node: str = rows[0][0]
    return node


def job_state(cluster: Cluster, job_id: str) -> tuple[str, str | None]:
    ((state, error_class),) = query(cluster.db, "SELECT state, error_class FROM jobs "
                                    "WHERE id = ?", job_id)
    return state, error_class


# -- the tests --------------------------------------------------------------------

async def test_submit_goes_through_the_daemon_unless_direct(cluster: Cluster) -> None:
    daemon, address = await start(cluster, "a")
    cfg = cli_config(cluster, address)
    via_api = await run_cli(cfg, "submit", "noop")
    assert via_api.returncode == 0, via_api
    # the daemon wrote the submission: its event carries the daemon's node
    assert submitted_node(cluster, via_api.stdout.split()[0]) == daemon.node
    direct = await run_cli(cfg, "submit", "noop", "--direct")
    assert direct.returncode == 0, direct
    # the CLI wrote it to D1 itself, as node host:pid
    assert submitted_node(cluster, direct.stdout.split()[0]) == \
        f"{socket.gethostname()}:{direct.pid}"
    await cluster.wait_all("completed", 2, 10)


async def test_submit_wait_exits_with_the_jobs_outcome(cluster: Cluster) -> None:
    _, address = await start(cluster, "a")
    cfg = cli_config(cluster, address)
    ok = await run_cli(cfg, "submit", "sleep", "--payload", '{"seconds": 1, "steps": 2}',
                       "--wait")
    assert ok.returncode == 0, ok
    assert job_state(cluster, ok.stdout.split()[0]) == ("completed", None)
    bad = await run_cli(cfg, "submit", "fail", "--payload", '{"error_class": "permanent"}',
                        "--wait")
    assert bad.returncode == 1, bad
    assert job_state(cluster, bad.stdout.split()[0]) == ("failed", "permanent")
    assert "permanent" in bad.stderr, bad


async def test_watch_json_follows_the_feed_across_a_restart(cluster: Cluster) -> None:
    daemon, address = await start(cluster, "a")
    cfg = cli_config(cluster, address)
    watch = await spawn(cfg, "watch", "--json")
    try:
        feed = Feed(watch)
        first = await feed.until(lambda m: True, CLI_TIMEOUT_S, "first line")
        assert first[0]["type"] == "snapshot", first

        (before,) = await cluster.submit("noop", [{}])
        seen = await feed.until(
            lambda m: m["type"] == "event" and m["job_id"] == before
            and m["event"] == "completed", 10, f"completed event of {before}")
        assert events_of(seen, before) == ["submitted", "claimed", "completed"]

        # kill -9, then the same node again on the same port (its a.toml and
        # a.out are rewritten)
        await daemon.proc.kill()
        _, again = await start(cluster, "a", listen=address)
        assert again == address
        # watch reconnects on its own: a new snapshot on the same stdout
        await feed.until(lambda m: m["type"] == "snapshot", 20, "snapshot after the restart")
        assert watch.poll() is None

        (after,) = await cluster.submit("noop", [{}])
        seen = await feed.until(
            lambda m: m["type"] == "event" and m["job_id"] == after
            and m["event"] == "completed", 10, f"completed event of {after}")
        assert events_of(seen, after) == ["submitted", "claimed", "completed"]
        assert all(m["node"] == "a" for m in seen if m["type"] == "event"
                   and m["event"] != "submitted")

        watch.terminate()
        with trio.fail_after(10):
            await watch.wait()
    finally:
        await end(watch)
