"""Serving the API: hypercorn under trio, on a socket this module binds itself.

The daemon starts it in its nursery with ``await nursery.start(serve_api, cfg,
client, health=...)``, which returns the bound ``"host:port"`` once the port
listens; cancelling the nursery stops the server.

Binding the socket here, before hypercorn sees it (it gets the descriptor as
``fd://N``), means ``listen = "127.0.0.1:0"`` reports the port the kernel
chose without a race, an address in use is a :class:`~deepmox.errors.ConfigError`
naming ``$.server.listen`` rather than an error from inside hypercorn's task
tree, and the loopback rule is checked on the address actually resolved:
without a write token, only a loopback address may be served.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, cast

import trio

from ..client import Client
from ..config import Config, ServerConfig
from ..errors import ConfigError
from .app import App, Health, Route, create_app

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

log = logging.getLogger("deepmox.api")
#: hypercorn's own records ("Running on ...") are noise next to ours; its
#: warnings and errors still reach the daemon's log
_hypercorn_log = logging.getLogger("deepmox.api.hypercorn")

_AT = "- at `$.server.listen`"


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"``) as a host and a port; an empty host
    means every interface."""
    if listen.startswith("["):
        host, sep, rest = listen[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep and host)
    else:
        host, sep, port_text = listen.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not (ok and port_text.isascii() and port_text.isdigit() and int(port_text) < 65536):
        raise ConfigError(f'expected "host:port" (or "[v6 address]:port"), got {listen!r} {_AT}')
    return host or "0.0.0.0", int(port_text)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


async def open_listener(server: ServerConfig, *, has_write_token: bool
                        ) -> tuple[socket.socket, str]:
    """A bound (not yet listening) socket for ``server.listen``, and its
    ``"host:port"``. Refuses a non-loopback address without a write token."""
    host, port = parse_listen(server.listen)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc.strerror or exc} {_AT}") from None
    family, kind, proto, _, address = infos[0]
    if not has_write_token and not _is_loopback(str(address[0])):
        raise ConfigError(
            f"refusing to listen on {server.listen} without a token: set "
            f"${server.token_env} (or the credential file of that name in "
            f"$CREDENTIALS_DIRECTORY), or listen on a loopback address {_AT}")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        bound_host, bound_port = sock.getsockname()[:2]
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {server.listen}: {exc.strerror or exc} {_AT}") from None
    bound = f"[{bound_host}]:{bound_port}" if family == socket.AF_INET6 else \
        f"{bound_host}:{bound_port}"
    return sock, bound


async def serve_app(app: App, sock: socket.socket, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with hypercorn on ``sock`` (bound, and owned from now on)
    until cancelled; ``task_status.started()`` once it listens."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    # hypercorn wraps the descriptor in a socket of its own and closes it when done
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = _hypercorn_log
    config.include_server_header = False
    if _hypercorn_log.level == logging.NOTSET:
        _hypercorn_log.setLevel(logging.WARNING)
    async with trio.open_nursery() as nursery:
        # hypercorn reports once its sockets listen, before accepting the first connection
        await nursery.start(partial(serve, cast("ASGIFramework", app), config, mode="asgi"))
        task_status.started()


async def serve_api(cfg: Config, client: Client, *, health: Callable[[], Health],
                    routes: Sequence[Route] = (),
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP API on ``cfg.server.listen`` until cancelled.

    ``task_status.started(bound)`` reports the bound ``"host:port"`` once the
    port listens (the port the kernel chose for ``:0``). Raises
    :class:`ConfigError` before listening when ``listen`` is malformed, in use,
    or not loopback while no write token is set. ``routes`` are added to the
    jobs routes (``/metrics``, ``/v1/feed``, ...).
    """
    app = create_app(cfg, client, health=health, routes=routes)
    sock, bound = await open_listener(cfg.server, has_write_token=app.tokens.has_write_token)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_app, app, sock))
        log.info("HTTP API listening on %s (tokens: %s)", bound,
                 "required" if app.tokens.enabled else "none, loopback only",
                 extra={"event": "api_listening"})
        task_status.started(bound)


__all__ = ["open_listener", "parse_listen", "serve_api", "serve_app"]
