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
R2_MAX_THREADS = 10
R2_MULTIPART_BYTES = 8 * 1024 * 1024

MAX_INPUT_BYTES = 2 * 1024**3
MAX_DURATION_S = 4 * 3600.0
MAX_WIDTH = 3840
MAX_HEIGHT = 2160
SCRATCH_BYTES = 4 * 1024**3
MEMORY_BYTES = 2 * 1024**3
CPU_S = 600

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
SERVER_LISTEN = "127.0.0.1:8787"
#: feed messages a websocket client may fall behind by before it is dropped
FEED_BACKLOG = 50_000


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

    backend: Literal["filesystem", "s3"] = "filesystem"
    #: filesystem: the folder; the object with key K is the file <path>/K
    path: str = R2_PATH
    #: s3: the endpoint (R2: https://<account>.r2.cloudflarestorage.com), bucket, region
    endpoint_url: str = ""
    bucket: str = ""
    region: str = "auto"
    #: s3: boto3 calls run in worker threads, at most this many at once
    max_threads: int = R2_MAX_THREADS
    #: s3: files larger than this are uploaded in parts of this size (>= 5 MiB)
    multipart_threshold_bytes: int = R2_MULTIPART_BYTES
    #: s3: environment variables (or credential files) holding the keys; the
    #: standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are used when these are unset
    access_key_env: str = "R2_ACCESS_KEY_ID"
    secret_key_env: str = "R2_SECRET_ACCESS_KEY"


class LimitsConfig(_Section, frozen=True):
    """``[limits]``: what one job's media may cost."""

    #: the largest input accepted, in bytes
    max_input_bytes: int = MAX_INPUT_BYTES
    max_duration_s: float = MAX_DURATION_S
    max_width: int = MAX_WIDTH
    max_height: int = MAX_HEIGHT
    #: local scratch space per actor, in bytes
    scratch_bytes: int = SCRATCH_BYTES
    #: address-space limit (RLIMIT_AS) for each ffmpeg/ffprobe process, in bytes
    memory_bytes: int = MEMORY_BYTES
    #: CPU-time limit (RLIMIT_CPU) for each ffmpeg/ffprobe process, in seconds
    cpu_s: int = CPU_S


class RenditionConfig(_Section, frozen=True):
    name: str
    height: int
    video_bitrate_k: int = 1000
    audio_bitrate_k: int = 128


class VideoConfig(_Section, frozen=True):
    """``[video]``: the video pipeline."""

    #: file:// sources are accepted only under these folders
    allowed_dirs: list[str] = msgspec.field(default_factory=list)
    #: allow http(s) sources on loopback, private, link-local and metadata addresses
    allow_private_networks: bool = False
    #: hosts ("name" or "name:port") exempt from that rule, e.g. an internal media server
    allow_hosts: list[str] = msgspec.field(default_factory=list)
    renditions: list[RenditionConfig] = msgspec.field(
        default_factory=lambda: [RenditionConfig(name="480p", height=480)])
    #: thumbnails per video, besides the poster
    thumbnails: int = 3
    #: where actors keep their scratch folders (default: the system's temp folder)
    scratch_dir: str = ""


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


class ServerConfig(_Section, frozen=True):
    """``[server]``: the daemon's one HTTP port (API, feed, status page, metrics)."""

    #: "host:port"; "" runs the daemon without a port
    listen: str = SERVER_LISTEN
    #: the environment variable (or credential file) holding the token that
    #: opens every route; the read token opens reads, the feed and metrics only
    token_env: str = "DEEPMOX_TOKEN"
    read_token_env: str = "DEEPMOX_READ_TOKEN"
    #: request bodies larger than this are refused (413)
    max_body_bytes: int = MAX_PAYLOAD_BYTES
    #: messages a feed client may fall behind by before it is closed (1013)
    feed_backlog: int = FEED_BACKLOG


class Config(_Section, frozen=True):
    d1: D1Config = msgspec.field(default_factory=D1Config)
    r2: R2Config = msgspec.field(default_factory=R2Config)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    video: VideoConfig = msgspec.field(default_factory=VideoConfig)
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
        "server.feed_backlog": cfg.server.feed_backlog,
        "d1.requests_per_5min": cfg.d1.requests_per_5min,
        "d1.timeout_s": cfg.d1.timeout_s,
        "r2.max_threads": cfg.r2.max_threads,
        "limits.max_input_bytes": cfg.limits.max_input_bytes,
        "limits.max_duration_s": cfg.limits.max_duration_s,
        "limits.max_width": cfg.limits.max_width,
        "limits.max_height": cfg.limits.max_height,
        "limits.scratch_bytes": cfg.limits.scratch_bytes,
        "limits.memory_bytes": cfg.limits.memory_bytes,
        "limits.cpu_s": cfg.limits.cpu_s,
    }
    if cfg.r2.multipart_threshold_bytes < 5 * 1024 * 1024:
        raise ConfigError("must be at least 5 MiB (5242880) - at "
                          "`$.r2.multipart_threshold_bytes`")
    if cfg.r2.backend == "s3" and not cfg.r2.bucket:
        raise ConfigError('backend = "s3" needs a value - at `$.r2.bucket`')
    if cfg.video.thumbnails < 0:
        raise ConfigError("Expected a number >= 0 - at `$.video.thumbnails`")
    for i, r in enumerate(cfg.video.renditions):
        if not (16 <= r.height <= 4320) or r.video_bitrate_k <= 0 or r.audio_bitrate_k <= 0:
            raise ConfigError(f"height must be 16..4320 and bitrates > 0 - at "
                              f"`$.video.renditions[{i}]`")
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


def database_identity(cfg: D1Config) -> str:
    """A short fingerprint of the database ``cfg`` names: a CLI sends it with a
    submission so that a daemon serving another database refuses it."""
    import hashlib

    if cfg.backend == "sqlite":
        where = "sqlite:" + os.path.realpath(cfg.path)
    else:
        where = f"d1:{cfg.account_id}/{cfg.database_id}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


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
