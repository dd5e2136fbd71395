"""sd_notify: what the daemon tells systemd, and when.

Rules:

* Notifications are received on a real ``AF_UNIX``/``SOCK_DGRAM`` socket that
  the test binds (a file path or an abstract ``@name``), pointed at by
  ``NOTIFY_SOCKET`` through ``monkeypatch`` (or the child's environment).
* Nothing sleeps on the wall clock to wait for something: every receive is
  bounded by ``trio.fail_after`` (a bound, not a wait), the daemon's intervals
  are made small instead. The watchdog's timing is checked on the autojump
  clock, where ``trio.sleep`` costs no real time.
* The in-process daemon runs ``daemon.serve`` with ``handle_signals=False``;
  ``Daemon.stop()`` stands for SIGTERM. The subprocess test sends a real
  SIGTERM to ``deepmox run`` in its own process group, awaits its exit with a
  bound, and kills the group whatever happens.
* Expected order: ``READY=1`` first, then ``STATUS=...`` and ``WATCHDOG=1``
  while it runs, ``STOPPING=1`` once the drain starts.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from deepmox import _sdnotify, daemon
from deepmox._sdnotify import Notifier
from deepmox.client import JobSpec
from deepmox.config import decode
from deepmox.supervisor import SupervisorStatistics
from tests.helpers import Processes, toml

BIN = Path(sys.executable).parent
#: bounds, not waits: how long a notification may take to arrive
RECV_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0
WATCHDOG_USEC = 200_000  # 0.2 s, four times poll_max_s below
POLL_MAX_S = 0.05


# -- helpers ------------------------------------------------------------------------

@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder whose paths fit in ``sun_path`` (108 bytes), whatever tmp_path is."""
    path = Path(tempfile.mkdtemp(prefix="dmx-sd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Listener:
    """The systemd side: a bound datagram socket, one message per datagram."""

    def __init__(self, sock: trio.socket.SocketType, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.seen: list[str] = []

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> str:
        with trio.fail_after(timeout):
            data = await self.sock.recv(4096)
        message = data.decode()
        self.seen.append(message)
        return message

    async def until(self, predicate: Any, timeout: float = RECV_TIMEOUT_S,
                    what: str = "") -> str:
        """Receive until a message satisfies ``predicate``; fail after ``timeout``."""
        try:
            with trio.fail_after(timeout):
                while True:
                    message = await self.recv(timeout)
                    if predicate(message):
                        return message
        except trio.TooSlowError:
            raise AssertionError(f"no {what or 'such message'} within {timeout:g} s; "
                                 f"received {self.seen}") from None


@contextlib.asynccontextmanager
async def listener(address: str | bytes) -> AsyncIterator[trio.socket.SocketType]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        await sock.bind(address)
        yield sock
    finally:
        sock.close()


def abstract_name() -> str:
    return f"@deepmox-test-{os.getpid()}-{secrets.token_hex(4)}"


def config_text(tmp_path: Path) -> str:
    return toml({
        "d1": {"path": str(tmp_path / "deepmox.db")},
        "r2": {"path": str(tmp_path / "r2")},
        "server": {"listen": ""},
        "supervisor": {"node": "sd-test", "poll_max_s": POLL_MAX_S, "drain_s": 2.0},
    })


# -- the client ---------------------------------------------------------------------

def test_without_notify_socket_every_helper_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert (n.ready(), n.status("x"), n.stopping(), n.watchdog()) == (False,) * 4
    assert n.watchdog_interval_s() is None
    assert n.dropped == 0


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "nope"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_honours_watchdog_pid(env: dict[str, str],
                                                 expected: float | None) -> None:
    assert Notifier(env).watchdog_interval_s() == expected


async def test_path_and_abstract_sockets_receive_each_message(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    name = abstract_name()
    for env_value, address in ((path, path), (name, b"\0" + name[1:].encode())):
        async with listener(address) as sock:
            n = Notifier({"NOTIFY_SOCKET": env_value})
            rx = Listener(sock, env_value)
            assert n.ready()
            assert n.status("3 running\nof 4")
            assert n.watchdog()
            assert n.stopping()
            assert [await rx.recv() for _ in range(4)] == [
                "READY=1", "STATUS=3 running of 4", "WATCHDOG=1", "STOPPING=1"]
            n.close()


def test_send_failures_are_swallowed_and_logged_once(
        short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="deepmox.sdnotify"):
        assert not n.ready()
        assert not n.watchdog()
    n.close()
    assert n.dropped == 2
    assert len([r for r in caplog.records if r.name == "deepmox.sdnotify"]) == 1


def test_an_unusable_notify_socket_turns_notifications_off(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepmox.sdnotify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert not n.ready()
    assert "not a path or @name" in caplog.text


def test_module_helpers_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(_sdnotify, "_default", None)
    assert not _sdnotify.ready()
    assert _sdnotify.watchdog_interval_s() is None


# -- the watchdog task, on the autojump clock ----------------------------------------

class FakeSupervisor:
    def __init__(self) -> None:
        self.last_cycle_at: float | None = None
        self.failed_cycles = 0

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            node="fake", running=0, running_by_kind={}, claimed=0, completed=0, failed=0,
            retried=0, continued=0, released=0, lease_lost=0, reaped=0, cycles=0,
            failed_cycles=self.failed_cycles, queued_acks=0, draining=False,
            last_cycle_at=self.last_cycle_at)


class Recording(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[float, str]] = []

    def send(self, *fields: str) -> bool:
        self.sent.append((trio.current_time(), "\n".join(fields)))
        return True


async def test_watchdog_pings_stop_when_the_pull_loop_stops(
        autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    interval = 1.0
    sup = FakeSupervisor()
    notifier = Recording()
    caplog.set_level(logging.INFO, logger="deepmox.daemon")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._watchdog, sup, notifier, interval)
        await trio.sleep(0.5)  # virtual time: no cycle yet, no ping
        assert notifier.sent == []
        for _ in range(20):  # the loop cycles every 0.25 s for 5 s
            sup.last_cycle_at = trio.current_time()
            await trio.sleep(0.25)
        stuck_at = trio.current_time()
        await trio.sleep(10.0)  # stuck for 10 s
        pings = [t for t, m in notifier.sent if m == "WATCHDOG=1"]
        assert len(pings) >= 5 / (interval / daemon.WATCHDOG_TICKS) - 1
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) <= interval / daemon.WATCHDOG_TICKS + 1e-9
        # the last ping falls within one interval of the last cycle: systemd
        # fires at most two intervals after the loop stopped
        assert stuck_at - 0.25 <= pings[-1] <= stuck_at - 0.25 + interval + 1e-9
        assert [r.msg for r in caplog.records].count(
            "the pull loop has shown no life for %.1f s: watchdog pings stopped, "
            "systemd will restart the daemon") == 1

        # cycles that fail (D1 unreachable) still show a live loop
        before = len(notifier.sent)
        for _ in range(8):
            sup.failed_cycles += 1
            await trio.sleep(0.5)
        assert len(notifier.sent) - before >= 8
        assert any(getattr(r, "event", None) == "watchdog_resumed" for r in caplog.records)
        nursery.cancel_scope.cancel()


def test_status_text_names_the_counts() -> None:
    st = FakeSupervisor().statistics()
    assert daemon.status_text(st) == "0 running, 0 completed, 0 failed, 0 retried"
    assert daemon.status_text(msgspec.structs.replace(st, draining=True, running=2)) == (
        "draining: 2 running, 0 completed, 0 failed, 0 retried")


# -- the daemon in-process ------------------------------------------------------------

async def test_serve_sends_ready_status_watchdog_then_stopping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = abstract_name()
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setattr(daemon, "STATUS_EVERY_S", POLL_MAX_S)
    cfg = decode(config_text(tmp_path))
    async with listener(b"\0" + name[1:].encode()) as sock, trio.open_nursery() as nursery:
        rx = Listener(sock, name)
        d: daemon.Daemon = await nursery.start(
            functools.partial(daemon.serve, cfg, handle_signals=False))
        assert await rx.recv(START_TIMEOUT_S) == "READY=1"
        await rx.until(lambda m: m.startswith("STATUS="), what="STATUS=")
        await rx.until(lambda m: m == "WATCHDOG=1", what="WATCHDOG=1")

        spec = msgspec.convert({"kind": "noop", "payload": {"value": 1}}, JobSpec)
        await d.client.submit(spec, None)
        await rx.until(lambda m: m == "STATUS=0 running, 1 completed, 0 failed, 0 retried",
                       what="a STATUS= counting the completed job")
        # pings keep coming while the loop cycles
        await rx.until(lambda m: m == "WATCHDOG=1", what="another WATCHDOG=1")

        d.stop()  # what SIGTERM does
        await rx.until(lambda m: m == "STOPPING=1", what="STOPPING=1")
        # serve returns once drained, which closes the nursery
    assert rx.seen[0] == "READY=1"
    assert rx.seen.count("READY=1") == 1
    assert rx.seen.count("STOPPING=1") == 1
    after = rx.seen[rx.seen.index("STOPPING=1"):]
    assert all("draining" in m for m in after if m.startswith("STATUS=")), after


async def test_serve_without_notify_socket_sends_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = decode(config_text(tmp_path))
    async with trio.open_nursery() as nursery:
        d: daemon.Daemon = await nursery.start(
            functools.partial(daemon.serve, cfg, handle_signals=False))
        assert not d.notifier.enabled
        await d.supervisor.wait_cycle()
        d.stop()
    assert d.notifier.dropped == 0


# -- the daemon as systemd runs it -----------------------------------------------------

@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        await procs.kill_all()


@pytest.mark.slow
async def test_deepmox_run_notifies_and_exits_0_on_sigterm(
        tmp_path: Path, short_dir: Path, processes: Processes) -> None:
    cfg_path = tmp_path / "deepmox.toml"
    cfg_path.write_text(config_text(tmp_path))
    path = str(short_dir / "notify")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEEPMOX_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")}
    env |= {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "PYTHONUNBUFFERED": "1"}
    async with listener(path) as sock:
        rx = Listener(sock, path)
        proc = await processes.start(
            "daemon", [str(BIN / "deepmox"), "--config", str(cfg_path), "--log-format",
                       "json", "run"], env=env, cwd=tmp_path)
        try:
            assert await rx.recv(START_TIMEOUT_S) == "READY=1"
            await rx.until(lambda m: m == "WATCHDOG=1", what="WATCHDOG=1")
        except (AssertionError, trio.TooSlowError):
            raise AssertionError(proc.describe()) from None
        proc.signal(signal.SIGTERM)
        await rx.until(lambda m: m == "STOPPING=1", what="STOPPING=1")
        assert await proc.wait(EXIT_TIMEOUT_S) == 0, proc.describe()
    assert rx.seen[0] == "READY=1"
    assert any(m.startswith("STATUS=") for m in rx.seen)
    assert proc.logged("signal"), proc.describe()
    assert proc.logged("stopped"), proc.describe()
