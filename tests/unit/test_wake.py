"""Local wake-up datagrams (``deepmox.wake``) over real Unix sockets.

Rules: sockets live in pytest's tmp_path; nothing waits on the wall clock
(datagrams to a bound socket are queued at once, read without blocking).
"""

from __future__ import annotations

import socket
from pathlib import Path

from deepmox import wake


def test_notify_wakes_every_listener_but_the_skipped_one_and_clears_stale_sockets(
        tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    folder = wake.wake_dir(db)
    folder.mkdir()
    listeners = {}
    for name in ("a", "b", "own"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(folder / f"{name}.sock"))
        s.setblocking(False)
        listeners[name] = s
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(folder / "dead.sock"))
    stale.close()  # a killed daemon's socket file: refuses datagrams
    try:
        told = wake.notify(db, skip=folder / "own.sock")
        assert told == 2
        for name in ("a", "b"):
            assert listeners[name].recv(64) == b""
        try:
            listeners["own"].recv(64)
        except BlockingIOError:
            pass
        else:
            raise AssertionError("the skipped socket was woken")
        assert not (folder / "dead.sock").exists()
    finally:
        for s in listeners.values():
            s.close()


def test_notify_without_a_folder_tells_nobody(tmp_path: Path) -> None:
    assert wake.notify(str(tmp_path / "none.db")) == 0
