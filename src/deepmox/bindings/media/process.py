"""Running one child process the way the media binding needs it.

:func:`run` starts the child in a process group of its own (a new session), with
an address-space limit (``RLIMIT_AS``) and a CPU-time limit (``RLIMIT_CPU``) set
in the child before it execs, reads its stdout and stderr concurrently, and
waits for it. Whenever :func:`run` leaves early -- the caller's cancel scope
fired (the actor's budget), its own ``timeout_s`` ran out, or anything raised --
the *whole group* gets SIGKILL and the child is reaped under a shielded scope,
so nothing ffmpeg started outlives the step and no zombie is left behind.

Why not ``trio.run_process``: on cancel it signals only the child (SIGTERM,
then SIGKILL seconds later), so a grandchild -- a shell's background job,
a helper an encoder forks -- would survive; and it keeps all of stderr, where
the binding wants a bounded tail.

Budgets stay the caller's (STYLE habit 3): cancelling the surrounding scope
re-raises :class:`trio.Cancelled` as usual, and the supervisor calls that
``budget_exceeded``. ``timeout_s`` is only for a limit of the binding's own; it
raises :class:`~deepmox.errors.MediaBudgetError`.

What the child's exit *means* is not decided here: :func:`run` returns a
:class:`Completed` whatever the exit status, and the ffmpeg layer classifies it
(:mod:`.errors_map`).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import msgspec
import trio

from ...config import CPU_S, MAX_HEIGHT, MAX_WIDTH, MEMORY_BYTES, LimitsConfig
from ...errors import MediaBudgetError, MediaUnavailableError

#: how much of the end of stderr :class:`Completed` keeps for error messages
STDERR_TAIL_BYTES: Final = 4096
#: stdout beyond this is read and dropped (``Completed.stdout_truncated``)
STDOUT_MAX_BYTES: Final = 16 * 1024 * 1024
#: a stderr "line" longer than this is handed over in pieces
MAX_LINE_BYTES: Final = 64 * 1024
#: the CPU hard limit sits this far above the soft one: at the soft limit the
#: kernel sends SIGXCPU once a CPU-second, which ffmpeg turns into a clean exit;
#: SIGKILL at the hard limit is for a child that ignores it
CPU_GRACE_S: Final = 5
#: glibc reserves 64 MiB of address space per malloc arena, up to 8 per core:
#: under RLIMIT_AS a many-threaded encoder would spend its limit on reservations
CHILD_ENV: Final = {"MALLOC_ARENA_MAX": "2"}

_READ_BYTES: Final = 64 * 1024


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one child process may use; ``None`` means no limit.

    The defaults are ``[limits]``'s; :meth:`from_config` reads the daemon's.
    """

    #: address space (RLIMIT_AS), in bytes
    memory_bytes: int | None = MEMORY_BYTES
    #: CPU time (RLIMIT_CPU) over all the child's threads, in seconds
    cpu_s: int | None = CPU_S
    #: the largest frame a decoder may allocate, in pixels (ffmpeg's
    #: ``-max_pixels``, given to every input): a few bytes of header that
    #: declare 16000x16000 frames are refused before they cost gigabytes
    max_pixels: int | None = MAX_WIDTH * MAX_HEIGHT

    @classmethod
    def from_config(cls, cfg: LimitsConfig) -> Limits:
        return cls(memory_bytes=cfg.memory_bytes, cpu_s=cfg.cpu_s,
                   max_pixels=cfg.max_width * cfg.max_height)


DEFAULT_LIMITS: Final = Limits()
NO_LIMITS: Final = Limits(memory_bytes=None, cpu_s=None, max_pixels=None)


class Completed(msgspec.Struct, frozen=True, kw_only=True):
    """A child that ran to its end (by itself, or killed by a signal that was
    not ours)."""

    pid: int
    #: the exit status; ``-N`` when signal N ended it
    returncode: int
    stdout: bytes
    #: True when stdout went past ``stdout_max_bytes`` and the rest was dropped
    stdout_truncated: bool = False
    #: the last :data:`STDERR_TAIL_BYTES` of stderr, decoded leniently
    stderr_tail: str = ""

    @property
    def signal(self) -> int | None:
        """The signal that ended the child, if one did."""
        return -self.returncode if self.returncode < 0 else None


async def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
    timeout_s: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
    stdout_max_bytes: int = STDOUT_MAX_BYTES,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> Completed:
    """Run ``argv`` (no shell) to its end and return what it did.

    ``stdin`` is fed to the child and then closed; without it the child reads
    ``/dev/null``. ``env`` replaces the environment (default: deepmox's own).
    Each complete stderr line (without its newline) goes to
    ``on_stderr_line`` as it arrives. With ``nursery.start(run, argv)`` the
    child's pid -- also its process group id -- comes back once it is running.

    Raises :class:`~deepmox.errors.MediaUnavailableError` when the child cannot
    be started at all, :class:`~deepmox.errors.MediaBudgetError` when
    ``timeout_s`` ran out; a cancel from outside propagates unchanged. In every
    one of those cases the process group is dead and reaped when this returns.
    """
    args = [os.fspath(a) for a in argv]
    name = os.path.basename(args[0]) if args else "?"
    try:
        proc = await trio.lowlevel.open_process(
            args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**(os.environ if env is None else env), **CHILD_ENV},
            start_new_session=True,
            preexec_fn=_limiter(limits),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise MediaUnavailableError(f"cannot start {name}: {exc}") from exc

    pidfd = _open_pidfd(proc.pid)
    out = _Stdout(stdout_max_bytes)
    err = _Stderr(on_stderr_line)
    try:
        task_status.started(proc.pid)
        deadline = math.inf if timeout_s is None else trio.current_time() + timeout_s
        with trio.CancelScope(deadline=deadline) as timer:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None
                assert proc.stderr is not None
                nursery.start_soon(_drain, proc.stdout, out.feed)
                nursery.start_soon(_drain, proc.stderr, err.feed)
                if stdin is not None:
                    assert proc.stdin is not None
                    nursery.start_soon(_feed, proc.stdin, stdin)
                # once the child exits, what it left in its group dies too:
                # stragglers would hold our pipes open, and the readers with them
                if pidfd is not None:
                    # exited but not reaped: its pid (the group's id) cannot be
                    # reused while we kill the rest of the group
                    await trio.lowlevel.wait_readable(pidfd)
                    _kill_group(proc.pid)
                    await proc.wait()
                else:  # pragma: no cover - not Linux
                    await proc.wait()
                    _kill_group(proc.pid)
        if timer.cancelled_caught:
            raise MediaBudgetError(f"{name} ran past its time limit of {timeout_s:g} s")
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()
        if pidfd is not None:
            os.close(pidfd)
    err.flush()
    assert proc.returncode is not None
    return Completed(
        pid=proc.pid,
        returncode=proc.returncode,
        stdout=bytes(out.data),
        stdout_truncated=out.truncated,
        stderr_tail=err.tail(),
    )


def _limiter(limits: Limits) -> Callable[[], None] | None:
    """The ``preexec_fn`` that applies ``limits`` in the child, between fork and
    exec. (Python warns that a ``preexec_fn`` may deadlock in a threaded parent;
    this one only calls ``getrlimit``/``setrlimit``, which take no locks.)"""
    memory, cpu = limits.memory_bytes, limits.cpu_s
    if memory is None and cpu is None:
        return None

    def apply() -> None:
        if memory is not None:
            _set_limit(resource.RLIMIT_AS, memory, memory)
        if cpu is not None:
            _set_limit(resource.RLIMIT_CPU, cpu, cpu + CPU_GRACE_S)

    return apply


def _set_limit(which: int, soft: int, hard: int) -> None:
    """Lower a limit, never above the hard limit this process already has."""
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), to learn of its exit before reaping it."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:  # pragma: no cover - not Linux
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:  # pragma: no cover - an old kernel
        return None
    return fd


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _drain(stream: trio.abc.ReceiveStream,
                 sink: Callable[[bytes | bytearray], None]) -> None:
    while chunk := await stream.receive_some(_READ_BYTES):
        sink(chunk)


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    # a child that exits without reading all of its input is not an error here
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
        await stream.aclose()


class _Stdout:
    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.truncated = False

    def feed(self, chunk: bytes | bytearray) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk


class _Stderr:
    """Keeps the tail of stderr and hands complete lines to a callback."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self._tail = bytearray()
        self._partial = bytearray()

    def feed(self, chunk: bytes | bytearray) -> None:
        self._tail += chunk
        if len(self._tail) > 2 * STDERR_TAIL_BYTES:
            del self._tail[:-STDERR_TAIL_BYTES]
        if self.on_line is None:
            return
        self._partial += chunk
        *lines, rest = self._partial.split(b"\n")
        for line in lines:
            self._emit(line)
        self._partial = bytearray(rest)
        while len(self._partial) > MAX_LINE_BYTES:
            self._emit(self._partial[:MAX_LINE_BYTES])
            del self._partial[:MAX_LINE_BYTES]

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial.clear()

    def _emit(self, line: bytes | bytearray) -> None:
        assert self.on_line is not None
        self.on_line(bytes(line).rstrip(b"\r").decode("utf-8", "replace"))

    def tail(self) -> str:
        return bytes(self._tail[-STDERR_TAIL_BYTES:]).decode("utf-8", "replace")
