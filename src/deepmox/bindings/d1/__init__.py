"""The D1 binding: a SQL system of record, local (``sqlite``) or Cloudflare's (``http``)."""

from __future__ import annotations

from ...config import D1Config, secret
from ...errors import ConfigError
from .interface import D1, MAX_PARAMS, D1Statistics, Result, Statement
from .sqlite import SqliteD1

__all__ = [
    "D1", "MAX_PARAMS", "D1Statistics", "Result", "SqliteD1", "Statement", "open_d1",
]


def open_d1(cfg: D1Config) -> D1:
    """The backend ``cfg`` names. The http backend's token comes from
    ``cfg.token_env`` in the environment or the systemd credentials."""
    if cfg.backend == "sqlite":
        return SqliteD1(cfg.path, synchronous=cfg.synchronous, busy_timeout_s=cfg.busy_timeout_s)
    from .http import HttpD1  # httpx2 is imported only by daemons that need it

    token = secret(cfg.token_env)
    if not token:
        raise ConfigError(
            f'[d1] backend = "http" needs an API token in ${cfg.token_env} '
            "or in $CREDENTIALS_DIRECTORY"
        )
    return HttpD1(
        api_base=cfg.api_base,
        account_id=cfg.account_id,
        database_id=cfg.database_id,
        token=token,
        requests_per_5min=cfg.requests_per_5min,
        timeout_s=cfg.timeout_s,
    )
