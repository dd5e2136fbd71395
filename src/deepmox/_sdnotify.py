"""A tiny sd_notify client: tells systemd how the daemon is doing.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a Unix
datagram socket, a file path or an abstract name written ``@name``. Each
message is one datagram of ``KEY=value`` lines (``READY=1``, ``STATUS=...``,
``STOPPING=1``, ``WATCHDOG=1``). Without the variable every helper is a no-op,
so the daemon behaves the same under a terminal, a test or a container.

The socket is a plain non-blocking one: a send never waits, so it never
blocks trio's loop, and the helpers can be called from synchronous code (a
signal handler's task, ``Daemon.stop``). A send that fails (systemd's queue
full, the socket gone) is dropped: it is logged once per notifier, then
counted silently; the daemon never fails because of its supervisor's socket.

``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set: the watchdog is ours only
if it names our pid) gives the watchdog interval; see :meth:`Notifier.watchdog_interval_s`.

The module-level helpers (:func:`ready`, :func:`status`, ...) use one notifier
built from the environment on first use; the daemon builds its own
:class:`Notifier` so tests can point it at a socket of their own.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("deepmox.sdnotify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
#: a STATUS= text is cut to this many bytes (systemd shows one line anyway)
MAX_STATUS_BYTES = 1024


def _address(value: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None if it names none
    this client can reach (systemd 254+ also knows ``vsock:``; not here)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; every method is a no-op
    without it. Never raises, never blocks."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env_socket = env.get(NOTIFY_SOCKET, "")
        self._address = _address(self._env_socket) if self._env_socket else None
        self._watchdog_usec = env.get(WATCHDOG_USEC, "")
        self._watchdog_pid = env.get(WATCHDOG_PID, "")
        self._sock: socket.socket | None = None
        self._warned = False
        #: datagrams that could not be sent
        self.dropped = 0
        if self._env_socket and self._address is None:
            self._warn(f"{NOTIFY_SOCKET}={self._env_socket!r} is not a path or @name: "
                       "notifications are off")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """The watchdog interval in seconds (``$WATCHDOG_USEC``), or None when
        systemd expects no pings from this process: the variable unset, zero or
        not a number, or ``$WATCHDOG_PID`` naming another process."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 else None

    # -- messages ---------------------------------------------------------------

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        line = " ".join(text.split())  # one line: a newline would start a new field
        data = line.encode()[:MAX_STATUS_BYTES].decode(errors="ignore")
        return self.send(f"STATUS={data}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; True if it went out. False without
        ``$NOTIFY_SOCKET``, or when the send failed (logged once)."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            self.dropped += 1
            self._warn(f"cannot notify systemd at {self._env_socket}: {exc} "
                       f"(further failures are not logged)")
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message, extra={"event": "sdnotify_failed"})


_default: Notifier | None = None


def notifier() -> Notifier:
    """The process-wide notifier, built from the environment on first use."""
    global _default
    if _default is None:
        _default = Notifier()
    return _default


def ready() -> bool:
    return notifier().ready()


def status(text: str) -> bool:
    return notifier().status(text)


def stopping() -> bool:
    return notifier().stopping()


def watchdog() -> bool:
    return notifier().watchdog()


def watchdog_interval_s() -> float | None:
    return notifier().watchdog_interval_s()
