"""An actor's scratch folder: local disk for one actor run, under a quota.

Nothing may depend on it surviving the actor: the supervisor removes it when
the actor ends, however it ends, and the next run of the job starts from an
empty one (inputs come back from the object store).

A daemon killed with SIGKILL (or by the OOM killer, or a power cut) removes
nothing, so every daemon keeps its actors' folders inside one folder of its
own, a :class:`ScratchRoot` (``deepmox-run-<node>-<pid>-*`` in ``[video]
scratch_dir``), on which it holds an exclusive ``flock`` for as long as it
lives. The kernel drops that lock when the process dies, however it dies; a
daemon starting on the same folder removes every root whose lock it can take.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import PermanentError

log = logging.getLogger("deepmox.scratch")

ROOT_PREFIX = "deepmox-run-"
LOCK_NAME = ".lock"
#: a root without its lock file is left alone this long (it may be being made)
UNLOCKED_GRACE_S = 60.0


class ScratchQuotaError(PermanentError):
    """The job needs more local disk than ``[limits] scratch_bytes``."""


class Scratch:
    def __init__(self, base: str, quota_bytes: int, label: str) -> None:
        self.base = base or None
        self.quota_bytes = quota_bytes
        self.label = label
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The folder, created on first use."""
        if self._path is None:
            if self.base:
                os.makedirs(self.base, exist_ok=True)
            safe = "".join(c if c.isalnum() else "-" for c in self.label)[:40]
            self._path = Path(tempfile.mkdtemp(prefix=f"deepmox-{safe}-", dir=self.base))
        return self._path

    @property
    def created(self) -> bool:
        return self._path is not None

    def used_bytes(self) -> int:
        if self._path is None:
            return 0
        total = 0
        for root, _dirs, files in os.walk(self._path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        return total

    def ensure_room(self, more_bytes: int) -> None:
        """Raise :class:`ScratchQuotaError` unless ``more_bytes`` still fit."""
        used = self.used_bytes()
        if used + more_bytes > self.quota_bytes:
            raise ScratchQuotaError(
                f"this step needs {used + more_bytes:,} bytes of scratch space; the limit is "
                f"{self.quota_bytes:,} ([limits] scratch_bytes)")

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class ScratchRoot:
    """This daemon's folder for its actors' scratch folders, locked while it lives."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, base: str, node: str) -> ScratchRoot:
        """Remove the roots of dead daemons in ``base`` (default: the system's
        temp folder), then make and lock this daemon's own."""
        folder = base or tempfile.gettempdir()
        os.makedirs(folder, exist_ok=True)
        removed = sweep(folder)
        if removed:
            log.info("removed %d scratch folders of daemons that are gone", removed,
                     extra={"event": "scratch_swept"})
        safe = "".join(c if c.isalnum() else "-" for c in node)[:40]
        path = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{safe}-{os.getpid()}-", dir=folder))
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, fd)

    def close(self) -> None:
        """Remove the root and everything in it (the daemon is stopping)."""
        if self._lock_fd is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._lock_fd)
            self._lock_fd = None


def sweep(folder: str | os.PathLike[str]) -> int:
    """Remove the scratch roots in ``folder`` whose daemon is gone (its lock is
    free); return how many."""
    removed = 0
    try:
        entries = [e for e in os.scandir(folder)
                   if e.name.startswith(ROOT_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for entry in entries:
        try:
            fd = os.open(os.path.join(entry.path, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > UNLOCKED_GRACE_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its daemon lives
            os.close(fd)
            continue
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
