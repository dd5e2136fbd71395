"""Scratch roots: a daemon killed with SIGKILL leaves its actors' scratch
folders behind; the next daemon on the same folder removes them, and never
those of a daemon that still runs.

Rules: the "killed daemon" is a real child process holding a real ``flock``;
it is killed with SIGKILL and reaped before the sweep, so the kernel has
dropped its lock. Nothing sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from deepmox.actors.scratch import LOCK_NAME, ROOT_PREFIX, Scratch, ScratchRoot, sweep

CHILD = """
import sys
from deepmox.actors.scratch import Scratch, ScratchRoot
root = ScratchRoot.open(sys.argv[1], "node/a")
scratch = Scratch(str(root.path), 1 << 20, "video.transcode-JOB")
(scratch.path / "chunk.mp4").write_bytes(b"x" * 1000)
print(root.path, flush=True)
sys.stdin.read()
"""


def start_owner(folder: Path) -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, "the child made no scratch root"
    return child, Path(line)


def test_a_killed_daemons_scratch_is_removed_by_the_next_one(tmp_path: Path) -> None:
    child, theirs = start_owner(tmp_path)
    with child:
        assert theirs.name.startswith(f"{ROOT_PREFIX}node-a-{child.pid}-")
        assert [p.name for p in theirs.rglob("*.mp4")] == ["chunk.mp4"]
        # alive: its lock is held, nothing is removed
        mine = ScratchRoot.open(str(tmp_path), "node-b")
        assert theirs.exists()
        assert sweep(tmp_path) == 0
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert theirs.exists(), "SIGKILL removes nothing: the folder stays until swept"
        again = ScratchRoot.open(str(tmp_path), "node-c")
        assert not theirs.exists()
        assert mine.path.exists(), "live roots are kept"
        assert again.path.exists()
        mine.close()
        again.close()
        assert sorted(tmp_path.iterdir()) == []


def test_a_root_without_a_lock_file_is_left_alone_while_young(tmp_path: Path) -> None:
    young = tmp_path / f"{ROOT_PREFIX}x-1-abc"
    young.mkdir()
    old = tmp_path / f"{ROOT_PREFIX}x-2-abc"
    old.mkdir()
    os.utime(old, (0, 0))
    other = tmp_path / "someone-elses"
    other.mkdir()
    assert sweep(tmp_path) == 1
    assert young.exists()
    assert not old.exists()
    assert other.exists()


def test_actor_scratch_lives_inside_the_root(tmp_path: Path) -> None:
    root = ScratchRoot.open(str(tmp_path), "n")
    scratch = Scratch(str(root.path), 10, "noop-1")
    assert scratch.path.parent == root.path
    assert (root.path / LOCK_NAME).exists()
    root.close()
    assert not root.path.exists()
