"""Talking to a running daemon over its HTTP port, from the CLI.

``deepmox submit`` goes through the daemon's API when one answers on the
configured ``[server] listen`` (so the submission wakes it at once and shows
in its feed), and straight to D1 otherwise.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .client import JobSpec
from .config import Config, database_identity, secret
from .errors import ConflictError, DeepmoxError, NotFoundError, RefusedError
from .jobs import Job

CONNECT_TIMEOUT_S = 0.5


def local_address(listen: str) -> str:
    """Where a client on this host reaches ``listen`` (a wildcard becomes loopback)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


def token(cfg: Config) -> str | None:
    return secret(cfg.server.token_env) or secret(cfg.server.read_token_env)


def _error(status: int, body: bytes) -> DeepmoxError:
    try:
        message = msgspec.json.decode(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, not our shape
        message = body[:200].decode("utf-8", "replace")
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if 400 <= status < 500:
        return RefusedError(message)
    return DeepmoxError(f"the daemon answered HTTP {status}: {message}")


async def submit(cfg: Config, spec: JobSpec, idempotency_key: str | None
                 ) -> tuple[Job, bool] | None:
    """Submit through the daemon's API; None when no daemon answers."""
    if not cfg.server.listen:
        return None
    import httpx2

    headers: dict[str, Any] = {"content-type": "application/json",
                               "x-deepmox-database": database_identity(cfg.d1)}
    write_token = secret(cfg.server.token_env)
    if write_token:
        headers["authorization"] = f"Bearer {write_token}"
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    url = f"http://{local_address(cfg.server.listen)}/v1/jobs"
    try:
        async with httpx2.AsyncClient(
                timeout=httpx2.Timeout(30.0, connect=CONNECT_TIMEOUT_S)) as http:
            response = await http.post(url, content=msgspec.json.encode(spec),
                                       headers=headers)
    except httpx2.ConnectError:
        return None
    except httpx2.HTTPError as exc:
        raise DeepmoxError(f"the daemon at {url} did not answer: {exc}") from None
    if response.status_code in (200, 201):
        try:
            job = msgspec.json.decode(response.content, type=Job)
        except ValueError:
            raise DeepmoxError(f"{url} answered HTTP {response.status_code} with something "
                               "that is not a job: is a deepmox daemon listening there?") \
                from None
        return job, response.status_code == 201
    if response.status_code == 409 and b"other_database" in response.content:
        return None  # a daemon of another database: write to ours directly
    if response.status_code in (401, 403) and not write_token:
        return None  # a daemon that wants a token we do not have: D1 directly
    raise _error(response.status_code, response.content)
