"""The filesystem store's temporary files: names that tell who writes them,
and the sweep of those whose writer is gone.

A put writes its bytes to a temporary file in the object's own folder and
renames it into place. A process killed mid-write (SIGKILL, the OOM killer)
leaves that file behind, inside the key space's folders, for ever -- so each
name carries its writer (``\\x7fdeepmox-<host>.<pid>-<random>.tmp``; DEL is a
character no key may hold, so it is never mistaken for an object), and a
daemon that starts on the store walks it in the background (:func:`sweep_tree`)
and removes the temporary files whose writer is a dead process on this host,
and any older than :data:`STALE_TEMP_S` (a writer on another host, sharing
the folder, cannot be asked).
"""

from __future__ import annotations

import os
import secrets
import socket
import time

PREFIX = "\x7fdeepmox-"
SUFFIX = ".tmp"
#: a temporary file untouched this long is removed whoever wrote it
STALE_TEMP_S = 24 * 3600.0
_HOST = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())[:64]


def temp_name(folder: str) -> str:
    """A fresh temporary path in ``folder`` naming this process as its writer."""
    return f"{folder}/{PREFIX}{_HOST}.{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"


def _writer_gone(name: str, now: float, mtime: float) -> bool:
    if now - mtime > STALE_TEMP_S:
        return True
    writer = name[len(PREFIX):].rsplit("-", 1)[0]
    host, _, pid_text = writer.rpartition(".")
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def sweep_tree(*roots: str) -> int:
    """Remove dead writers' temporary files anywhere under ``roots``; return
    how many. Slow on a large store: run it in a worker thread."""
    removed = 0
    for root in roots:
        for folder, _dirs, _files in os.walk(root):
            removed += sweep(folder)
    return removed


def sweep(folder: str) -> int:
    """The same, in ``folder`` only."""
    removed = 0
    now = time.time()
    try:
        entries = [e for e in os.scandir(folder)
                   if e.name.startswith(PREFIX) and e.name.endswith(SUFFIX)]
    except OSError:
        return 0
    for entry in entries:
        try:
            if _writer_gone(entry.name, now, entry.stat(follow_symlinks=False).st_mtime):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed
