"""The filesystem store's temporary files: a writer killed mid-write leaves
one behind in the object's folder; a sweep removes it once its writer is
gone, and never one whose writer still runs.

Rules: the killed writer is a real child process in the middle of a real
``put`` (its source is a FIFO this test feeds, so the copy is stopped halfway
for as long as the test likes); it is killed with SIGKILL and reaped before
the sweep. Waiting for it is ``wait_until`` on the file system, bounded.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import trio

from deepmox.bindings.r2 import FilesystemR2
from deepmox.bindings.r2.interface import CHUNK_BYTES
from deepmox.bindings.r2.temps import PREFIX, temp_name
from tests.helpers import wait_until

WRITER = """
import sys, trio
from pathlib import Path
from deepmox.bindings.r2 import FilesystemR2
r2 = FilesystemR2(sys.argv[1])
trio.run(r2.put, "jobs/x/chunks/00001.mp4", Path(sys.argv[2]))
"""


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(PREFIX))


async def test_a_killed_writers_temporary_file_is_swept(tmp_path: Path) -> None:
    store = tmp_path / "store"
    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    folder = store / "jobs" / "x" / "chunks"
    child = await trio.lowlevel.open_process([sys.executable, "-c", WRITER, str(store),
                                              str(fifo)])
    fd = None
    try:
        fd = await wait_until(lambda: open_writer(fifo), 20,
                              what="the child to open its source")
        # one whole chunk and a bit: the child writes the chunk, then waits
        await trio.to_thread.run_sync(os.write, fd, b"x" * (CHUNK_BYTES + 1000))
        await wait_until(lambda: halfway(folder), 20,
                         what="the child to be halfway through its put")
    finally:
        child.kill()
        assert await child.wait() == -signal.SIGKILL
        if fd is not None:
            os.close(fd)
    (left,) = temps(folder)
    assert f".{child.pid}-" in left

    r2 = FilesystemR2(store)
    await r2.put("jobs/x/chunks/00000.mp4", b"done")
    assert [o.key for o in await r2.list("jobs/")] == ["jobs/x/chunks/00000.mp4"]
    kept = plant(folder)
    assert await r2.sweep_leftovers() == 2  # the killed writer's, and the stale one
    assert temps(folder) == kept
    assert await r2.get_bytes("jobs/x/chunks/00000.mp4") == b"done"
    await r2.aclose()


def open_writer(fifo: Path) -> int | None:
    """The FIFO's write end once the child has opened it for reading."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None
    os.set_blocking(fd, True)
    return fd


def halfway(folder: Path) -> bool:
    names = temps(folder) if folder.exists() else []
    return bool(names) and (folder / names[0]).stat().st_size > 0


def plant(folder: Path) -> list[str]:
    """Temporary files the sweep must keep (their names, sorted), and one it
    must remove."""
    mine = Path(temp_name(str(folder)))  # this process writes it: alive
    mine.write_bytes(b"in progress")
    elsewhere = folder / f"{PREFIX}otherhost.1-0123456789abcdef.tmp"
    elsewhere.write_bytes(b"another host's write")
    stale = folder / f"{PREFIX}otherhost.2-0123456789abcdef.tmp"  # older than a day
    stale.write_bytes(b"old")
    os.utime(stale, (0, 0))
    return sorted([mine.name, elsewhere.name])
