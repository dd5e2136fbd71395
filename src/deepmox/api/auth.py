"""Bearer tokens: a write token that opens every route, a read token that
opens reads only.

The tokens are read once, when the app is built (``[server] token_env`` and
``read_token_env`` name them; :func:`deepmox.config.secret` finds them in the
environment or systemd's credentials), so no request touches the environment.
When neither is set, every route is open -- which :mod:`.server` allows only
on a loopback address.

With either token set, every route but the public ones (``/healthz``) needs
``Authorization: Bearer <token>``: none (or another scheme) is a 401, a token
that is wrong or not enough (the read token on a write) a 403. A read token
set without a write token leaves the write routes closed to everybody: a
read-only port, not an open one. Websockets may also send ``?token=``
because browsers cannot set headers on them.

Tokens are compared with :func:`hmac.compare_digest`, and their values are
never part of a response, a log record or a ``repr``.
"""

from __future__ import annotations

import hmac
from enum import IntEnum
from typing import Any
from urllib.parse import parse_qsl

from ..config import ServerConfig, secret
from .errors import Headers, HttpError

_CHALLENGE: Headers = ((b"www-authenticate", b'Bearer realm="deepmox"'),)


class Access(IntEnum):
    """What a route needs: nothing, the read token (or the write token), the write token."""

    PUBLIC = 0
    READ = 1
    WRITE = 2


class Tokens:
    """The configured tokens, as bytes, compared in constant time."""

    __slots__ = ("_read", "_write", "read_token_env", "token_env")

    def __init__(self, write: str | None, read: str | None, *,
                 token_env: str = "DEEPMOX_TOKEN",
                 read_token_env: str = "DEEPMOX_READ_TOKEN") -> None:
        self._write = write.encode() if write else None
        self._read = read.encode() if read else None
        self.token_env = token_env
        self.read_token_env = read_token_env

    @classmethod
    def load(cls, server: ServerConfig) -> Tokens:
        return cls(secret(server.token_env), secret(server.read_token_env),
                   token_env=server.token_env, read_token_env=server.read_token_env)

    @property
    def enabled(self) -> bool:
        return self._write is not None or self._read is not None

    @property
    def has_write_token(self) -> bool:
        return self._write is not None

    def __repr__(self) -> str:
        return (f"<Tokens write={'set' if self._write else 'unset'} "
                f"read={'set' if self._read else 'unset'}>")

    def check(self, access: Access, scope: dict[str, Any]) -> None:
        """Return if the request may use a route that needs ``access``, else
        raise the 401 or 403 :class:`HttpError`."""
        if access is Access.PUBLIC or not self.enabled:
            return
        given = _bearer(scope)
        if given is None:
            raise HttpError(401, "unauthorized",
                            "this route needs an Authorization: Bearer <token> header",
                            _CHALLENGE)
        # both comparisons run whatever the first one says
        is_write = self._write is not None and hmac.compare_digest(given, self._write)
        is_read = self._read is not None and hmac.compare_digest(given, self._read)
        if is_write or (is_read and access is Access.READ):
            return
        if is_read:
            raise HttpError(403, "forbidden", "the read token opens only GET routes")
        raise HttpError(403, "forbidden", "the token is not valid for this server")


def _bearer(scope: dict[str, Any]) -> bytes | None:
    """The token the request carries, or None when it carries none (or not as
    a bearer token)."""
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                raise HttpError(400, "invalid_request", "more than one Authorization header")
            found = value
    if found is not None:
        scheme, _, rest = found.partition(b" ")
        token: bytes = rest.strip(b" \t")
        if scheme.lower() != b"bearer" or not token:
            return None
        return token
    if scope["type"] == "websocket":
        raw: bytes = scope.get("query_string", b"")
        try:
            query = parse_qsl(raw.decode("latin-1"),
                              max_num_fields=50, errors="strict")
        except ValueError:  # UnicodeDecodeError too
            return None
        for key, text in query:
            if key == "token" and text:
                return text.encode()
    return None


__all__ = ["Access", "Tokens"]
