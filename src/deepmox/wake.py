"""Local wake-ups: a submission on this host starts a claim at once.

Each daemon on a SQLite file listens on a Unix datagram socket in the folder
``<db file>.wake/``; a client that submitted a job sends one empty datagram to
every socket there. It is only a hint -- a lost datagram costs one poll
interval, never a job -- so every error on the way is swallowed. Sockets left
by a killed daemon refuse the datagram and are removed by the next sender.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import trio

_MAX_SUN_PATH = 107


def wake_dir(db_path: str) -> Path:
    return Path(db_path + ".wake")


def notify(db_path: str, *, skip: Path | None = None) -> int:
    """Wake every daemon listening beside ``db_path`` (but the one at ``skip``,
    a daemon's own socket); return how many were told. Cheap enough for every
    submission: one directory read, and no socket at all when nobody else
    listens."""
    skipped = skip.name if skip is not None else None  # a socket in this folder
    try:
        with os.scandir(db_path + ".wake") as it:
            entries = [e.path for e in it if e.name != skipped]
    except OSError:
        return 0
    if not entries:
        return 0
    told = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for entry in entries:
            try:
                s.sendto(b"", entry)
                told += 1
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(entry)
            except OSError:
                pass
    return told


class WakeListener:
    """Binds ``<db>.wake/<name>.sock``; :meth:`serve` sets ``on_wake`` per datagram."""

    def __init__(self, db_path: str, name: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.path = wake_dir(db_path) / f"{safe}.sock"
        self.sock: trio.socket.SocketType | None = None

    async def open(self) -> bool:
        """Bind the socket; False (and no wake-ups) when the path is unusable."""
        if len(os.fsencode(self.path.absolute())) > _MAX_SUN_PATH:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            await sock.bind(str(self.path))
        except OSError:
            return False
        self.sock = sock
        return True

    async def recv_forever(self, on_wake: Callable[[], None]) -> None:
        """Call ``on_wake`` for every datagram, until cancelled."""
        assert self.sock is not None
        while True:
            await self.sock.recv(64)
            on_wake()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.sock = None
