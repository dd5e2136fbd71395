"""The configuration: one TOML file decoded into frozen msgspec Structs.

Where the file comes from, in order: ``--config PATH``, ``$DEEPMOX_CONFIG``,
``./deepmox.toml`` if it exists, else the embedded defaults (a SQLite file at
``var/deepmox.db`` and objects under ``var/r2``). Unknown keys and wrong types
are refused with a :class:`~deepmox.errors.ConfigError` naming the key's path.

Secrets never live in the file: they come from the environment or from
systemd's ``$CREDENTIALS_DIRECTORY`` (see :func:`secret`).

Defaults are named constants carrying their unit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from .errors import ConfigError

CONFIG_ENV = "DEEPMOX_CONFIG"
DEFAULT_CONFIG_FILE = "deepmox.toml"

D1_PATH = "var/deepmox.db"
D1_API_BASE = "https://api.cloudflare.com/client/v4"
D1_REQUESTS_PER_5MIN = 1200
D1_BUSY_TIMEOUT_S = 10.0
D1_HTTP_TIMEOUT_S = 30.0
R2_PATH = "var/r2"

BUDGET_S = 30.0
LEASE_GRACE_S = 15.0
MAX_ACTORS = 200
POLL_MIN_S = 0.002
POLL_MAX_S = 1.0
DRAIN_S = 30.0
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
MAX_DEFERRAL_S = 3600.0
MAX_PAYLOAD_BYTES = 256 * 1024


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class D1Config(_Section, frozen=True):
    """``[d1]``: the SQL system of record."""

    backend: Literal["sqlite", "http"] = "sqlite"
    #: sqlite: the database file (relative paths are relative to the working directory)
    path: str = D1_PATH
    #: sqlite: "full" fsyncs every commit; "normal" may lose the last commits on power loss
    synchronous: Literal["full", "normal"] = "full"
    busy_timeout_s: float = D1_BUSY_TIMEOUT_S
    #: http: the Cloudflare API base URL
    api_base: str = D1_API_BASE
    account_id: str = ""
    database_id: str = ""
    #: http: this daemon's share of the account's REST request budget
    requests_per_5min: int = D1_REQUESTS_PER_5MIN
    timeout_s: float = D1_HTTP_TIMEOUT_S
    #: http: the environment variable (or credential file) holding the API token
    token_env: str = "CLOUDFLARE_API_TOKEN"


class R2Config(_Section, frozen=True):
    """``[r2]``: the object store."""

    backend: Literal["filesystem"] = "filesystem"
    path: str = R2_PATH


class SupervisorConfig(_Section, frozen=True):
    """``[supervisor]``: the pull cycle and the actors."""

    #: a name for this daemon in leases and events; default host:pid
    node: str = ""
    budget_s: float = BUDGET_S
    lease_grace_s: float = LEASE_GRACE_S
    max_actors: int = MAX_ACTORS
    poll_min_s: float = POLL_MIN_S
    poll_max_s: float = POLL_MAX_S
    drain_s: float = DRAIN_S
    max_attempts: int = MAX_ATTEMPTS
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_deferral_s: float = MAX_DEFERRAL_S
    #: modules imported at start to register extra job kinds (besides entry points)
    kind_modules: list[str] = msgspec.field(default_factory=list)


class KindConfig(_Section, frozen=True):
    """``[kinds.<name>]``: overrides for one job kind."""

    budget_s: float | None = None
    max_actors: int | None = None
    max_attempts: int | None = None


class Config(_Section, frozen=True):
    d1: D1Config = msgspec.field(default_factory=D1Config)
    r2: R2Config = msgspec.field(default_factory=R2Config)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    kinds: dict[str, KindConfig] = msgspec.field(default_factory=dict)

    def budget_for(self, kind: str) -> float:
        k = self.kinds.get(kind)
        return k.budget_s if k and k.budget_s is not None else self.supervisor.budget_s

    def max_attempts_for(self, kind: str) -> int:
        k = self.kinds.get(kind)
        return k.max_attempts if k and k.max_attempts is not None else self.supervisor.max_attempts


def _check(cfg: Config) -> Config:
    """Checks that types alone cannot express; each names its key."""
    s = cfg.supervisor
    positive = {
        "supervisor.budget_s": s.budget_s,
        "supervisor.poll_min_s": s.poll_min_s,
        "supervisor.poll_max_s": s.poll_max_s,
        "supervisor.backoff_base_s": s.backoff_base_s,
        "supervisor.backoff_max_s": s.backoff_max_s,
        "supervisor.max_actors": s.max_actors,
        "supervisor.max_attempts": s.max_attempts,
        "d1.requests_per_5min": cfg.d1.requests_per_5min,
        "d1.timeout_s": cfg.d1.timeout_s,
    }
    for name, kind in cfg.kinds.items():
        for key in ("budget_s", "max_actors", "max_attempts"):
            value = getattr(kind, key)
            if value is not None:
                positive[f"kinds.{name}.{key}"] = value
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"Expected a number > 0 - at `$.{key}`")
    for key, value in {
        "supervisor.lease_grace_s": s.lease_grace_s,
        "supervisor.drain_s": s.drain_s,
        "supervisor.max_deferral_s": s.max_deferral_s,
    }.items():
        if value < 0:
            raise ConfigError(f"Expected a number >= 0 - at `$.{key}`")
    if s.poll_min_s > s.poll_max_s:
        raise ConfigError("poll_min_s must not exceed poll_max_s - at `$.supervisor.poll_min_s`")
    if cfg.d1.backend == "http":
        for key in ("account_id", "database_id"):
            if not getattr(cfg.d1, key):
                raise ConfigError(f'backend = "http" needs a value - at `$.d1.{key}`')
    return cfg


def decode(text: str | bytes, *, source: str = "<config>") -> Config:
    """Decode TOML text into a :class:`Config`, or raise :class:`ConfigError`."""
    try:
        cfg = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _check(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the configuration as described in the module docstring."""
    chosen = path or os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        if not Path(DEFAULT_CONFIG_FILE).exists():
            return Config()
        chosen = DEFAULT_CONFIG_FILE
    p = Path(chosen)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration: {exc.strerror}") from None
    return decode(data, source=str(p))


def secret(name: str) -> str | None:
    """A secret by name: ``$name`` in the environment, else the file of that name
    in systemd's ``$CREDENTIALS_DIRECTORY``. Never logged, never stored."""
    value = os.environ.get(name)
    if value:
        return value
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        try:
            return (Path(creds) / name).read_text().strip() or None
        except OSError:
            return None
    return None
