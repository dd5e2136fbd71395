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

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError

CONFIG_ENV = "DEEPMOX_CONFIG"
DEFAULT_CONFIG_FILE = "deepmox.toml"
#: a configuration file is read up to this size (``--config /dev/zero`` is refused)
MAX_CONFIG_BYTES = 1024 * 1024

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

AI_MAX_CONTEXT_CHARS = 20_000
#: a failing upstream is held for this long after its first failure, doubling
#: with each further one, up to the maximum
AI_HOLD_BASE_S = 1.0
AI_HOLD_MAX_S = 60.0
CLAUDE_CLI_PATH = "claude"
CLAUDE_CLI_MAX_CONCURRENT = 2
ANTHROPIC_MODEL = "claude-sonnet-5-5"
ANTHROPIC_MAX_TOKENS = 2048
ANTHROPIC_MAX_CONCURRENT = 4
#: Anthropic's tier-1 request limit: a fresh install never asks for more
ANTHROPIC_REQUESTS_PER_MINUTE = 50

#: the largest whole number any setting may hold: what a JSON number (D1's
#: REST API is JavaScript) carries exactly, and far above every real limit
MAX_INT = 2**53 - 1
#: the longest any duration setting (``*_s``) may be, in seconds: a year
MAX_SECONDS = 365 * 86400.0
#: upper bounds where a larger value would only exhaust the machine
MAX_ACTORS_LIMIT = 10_000
MAX_ATTEMPTS_LIMIT = 1_000
MAX_THUMBNAILS = 20
MAX_RENDITIONS = 8
#: what a rendition may be, in a job's payload and in ``[[video.renditions]]``
RENDITION_NAME = r"^[a-z0-9][a-z0-9_-]{0,19}$"
RENDITION_HEIGHT = (16, 4320)
RENDITION_VIDEO_KBPS = (50, 100_000)
RENDITION_AUDIO_KBPS = (16, 512)


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


ProviderName = Literal["claude-cli", "anthropic", "heuristic"]
AI_PROVIDERS: tuple[ProviderName, ...] = ("claude-cli", "anthropic", "heuristic")


class PriceConfig(_Section, frozen=True):
    """What one model costs, in US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


#: list prices (USD per million tokens) of current models; ``[ai.anthropic.prices]``
#: adds models or overrides these
DEFAULT_PRICES: dict[str, PriceConfig] = {
    "claude-sonnet-5-5": PriceConfig(input_per_mtok=2.0, output_per_mtok=10.0),
    "claude-sonnet-5": PriceConfig(input_per_mtok=2.0, output_per_mtok=10.0),
    "claude-opus-5-5": PriceConfig(input_per_mtok=4.0, output_per_mtok=20.0),
    "claude-opus-5": PriceConfig(input_per_mtok=5.0, output_per_mtok=25.0),
    "claude-haiku-5-5": PriceConfig(input_per_mtok=0.10, output_per_mtok=0.50),
    "claude-sonnet-4-5": PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0),
    "claude-haiku-4-5": PriceConfig(input_per_mtok=1.0, output_per_mtok=5.0),
}


class ClaudeCliConfig(_Section, frozen=True):
    """``[ai.claude-cli]``: the ``claude`` CLI in print mode."""

    #: the executable, a name looked up on PATH or a path
    path: str = CLAUDE_CLI_PATH
    #: passed as ``--model``; "" keeps the CLI's own default
    model: str = ""
    #: more arguments, after ``-p --output-format json``
    extra_args: list[str] = msgspec.field(default_factory=list)
    #: calls running at once on this daemon
    max_concurrent: int = CLAUDE_CLI_MAX_CONCURRENT
    #: calls started per minute on this daemon; 0: no limit of deepmox's own
    requests_per_minute: int = 0


class AnthropicConfig(_Section, frozen=True):
    """``[ai.anthropic]``: the Messages API through the anthropic SDK (its base
    URL from the SDK's own ``ANTHROPIC_BASE_URL``)."""

    model: str = ANTHROPIC_MODEL
    max_tokens: int = ANTHROPIC_MAX_TOKENS
    #: requests in flight at once on this daemon
    max_concurrent: int = ANTHROPIC_MAX_CONCURRENT
    #: requests started per minute on this daemon; 0: no limit of deepmox's own
    requests_per_minute: int = ANTHROPIC_REQUESTS_PER_MINUTE
    #: the environment variable (or credential file) holding the API key
    api_key_env: str = "ANTHROPIC_API_KEY"
    #: USD per million tokens by model, merged over :data:`DEFAULT_PRICES`
    prices: dict[str, PriceConfig] = msgspec.field(default_factory=dict)

    def price(self, model: str) -> PriceConfig | None:
        return self.prices.get(model) or DEFAULT_PRICES.get(model)


class AIConfig(_Section, frozen=True):
    """``[ai]``: inference for ``ai.describe`` and ``video.publish``."""

    #: tried in this order; a provider that is not usable here is skipped
    providers: list[ProviderName] = msgspec.field(default_factory=lambda: list(AI_PROVIDERS))
    #: the text given to a model is cut to this many characters
    max_context_chars: int = AI_MAX_CONTEXT_CHARS
    #: a failing upstream is held for everyone this long, doubling per failure
    hold_base_s: float = AI_HOLD_BASE_S
    hold_max_s: float = AI_HOLD_MAX_S
    claude_cli: ClaudeCliConfig = msgspec.field(default_factory=ClaudeCliConfig,
                                                name="claude-cli")
    anthropic: AnthropicConfig = msgspec.field(default_factory=AnthropicConfig)


class Config(_Section, frozen=True):
    d1: D1Config = msgspec.field(default_factory=D1Config)
    r2: R2Config = msgspec.field(default_factory=R2Config)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    video: VideoConfig = msgspec.field(default_factory=VideoConfig)
    ai: AIConfig = msgspec.field(default_factory=AIConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    kinds: dict[str, KindConfig] = msgspec.field(default_factory=dict)

    def budget_for(self, kind: str, default: float | None = None) -> float:
        """``[kinds.<kind>] budget_s``, else the kind's own ``default``, else
        ``[supervisor] budget_s``."""
        k = self.kinds.get(kind)
        if k and k.budget_s is not None:
            return k.budget_s
        return default if default is not None else self.supervisor.budget_s

    def max_attempts_for(self, kind: str) -> int:
        k = self.kinds.get(kind)
        return k.max_attempts if k and k.max_attempts is not None else self.supervisor.max_attempts


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def key_path(*keys: str | int) -> str:
    """``$.a.b[0]."c.d"``: the path of a key as ConfigErrors name it; a key
    that is not a bare TOML key is quoted, as the file must write it."""
    out = "$"
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
        elif _BARE_KEY.fullmatch(key):
            out += f".{key}"
        else:
            out += "." + msgspec.json.encode(key).decode()
    return out


def _leaves(value: Any, keys: tuple[str | int, ...] = ()
            ) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every scalar setting in ``value`` with its keys."""
    if isinstance(value, msgspec.Struct):  # by the names the file uses ("claude-cli")
        return [leaf for f in msgspec.structs.fields(value)
                for leaf in _leaves(getattr(value, f.name), (*keys, f.encode_name))]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*keys, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*keys, i))]
    return [(keys, value)]


def _check_leaves(cfg: Config) -> None:
    """What holds for every setting: numbers are finite, not negative, and
    within :data:`MAX_INT` (durations within :data:`MAX_SECONDS`); strings
    hold no control characters (a NUL in a path fails deep inside the OS)."""
    for keys, value in _leaves(cfg):
        at = f" - at `{key_path(*keys)}`"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str):
            if _CONTROL.search(value):
                raise ConfigError(f"must not hold control characters{at}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"Expected a finite number{at}")
        elif value < 0:
            raise ConfigError(f"Expected a number >= 0{at}")
        elif isinstance(value, int) and value > MAX_INT:
            raise ConfigError(f"Expected a number <= {MAX_INT}{at}")
        elif str(keys[-1]).endswith("_s") and value > MAX_SECONDS:
            raise ConfigError(f"Expected at most a year ({MAX_SECONDS:,.0f} s){at}")


def _check_renditions(renditions: list[RenditionConfig]) -> None:
    if not 1 <= len(renditions) <= MAX_RENDITIONS:
        raise ConfigError(f"Expected 1 to {MAX_RENDITIONS} renditions - at "
                          "`$.video.renditions`")
    names: set[str] = set()
    for i, r in enumerate(renditions):
        at = f" - at `{key_path('video', 'renditions', i)}`"
        if not re.fullmatch(RENDITION_NAME, r.name):
            raise ConfigError(f"name must be 1 to 20 of a-z, 0-9, '_', '-' (starting with a "
                              f"letter or digit), not {r.name!r}{at}")
        if r.name in names:
            raise ConfigError(f"rendition name {r.name!r} is repeated{at}")
        names.add(r.name)
        for key, value, (low, high) in (("height", r.height, RENDITION_HEIGHT),
                                        ("video_bitrate_k", r.video_bitrate_k,
                                         RENDITION_VIDEO_KBPS),
                                        ("audio_bitrate_k", r.audio_bitrate_k,
                                         RENDITION_AUDIO_KBPS)):
            if not low <= value <= high:
                raise ConfigError(f"Expected {low}..{high} - at "
                                  f"`{key_path('video', 'renditions', i, key)}`")


def _check(cfg: Config) -> Config:
    """Checks that types alone cannot express; each names its key."""
    _check_leaves(cfg)
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
        "server.max_body_bytes": cfg.server.max_body_bytes,
        "ai.max_context_chars": cfg.ai.max_context_chars,
        "ai.hold_base_s": cfg.ai.hold_base_s,
        "ai.hold_max_s": cfg.ai.hold_max_s,
        "ai.claude-cli.max_concurrent": cfg.ai.claude_cli.max_concurrent,
        "ai.anthropic.max_concurrent": cfg.ai.anthropic.max_concurrent,
        "ai.anthropic.max_tokens": cfg.ai.anthropic.max_tokens,
    }
    if cfg.r2.multipart_threshold_bytes < 5 * 1024 * 1024:
        raise ConfigError("must be at least 5 MiB (5242880) - at "
                          "`$.r2.multipart_threshold_bytes`")
    if cfg.r2.backend == "s3" and not cfg.r2.bucket:
        raise ConfigError('backend = "s3" needs a value - at `$.r2.bucket`')
    if cfg.video.thumbnails > MAX_THUMBNAILS:
        raise ConfigError(f"Expected a number <= {MAX_THUMBNAILS} - at `$.video.thumbnails`")
    _check_renditions(cfg.video.renditions)
    at_most = {"supervisor.max_actors": (s.max_actors, MAX_ACTORS_LIMIT),
               "supervisor.max_attempts": (s.max_attempts, MAX_ATTEMPTS_LIMIT)}
    for name, kind in cfg.kinds.items():
        where = key_path("kinds", name)[2:]
        for key in ("budget_s", "max_actors", "max_attempts"):
            value = getattr(kind, key)
            if value is not None:
                positive[f"{where}.{key}"] = value
        for key, limit in (("max_actors", MAX_ACTORS_LIMIT),
                           ("max_attempts", MAX_ATTEMPTS_LIMIT)):
            value = getattr(kind, key)
            if value is not None:
                at_most[f"{where}.{key}"] = (value, limit)
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"Expected a number > 0 - at `$.{key}`")
    for key, (value, limit) in at_most.items():
        if value > limit:
            raise ConfigError(f"Expected a number <= {limit} - at `$.{key}`")
    for key, value in {
        "supervisor.lease_grace_s": s.lease_grace_s,
        "supervisor.drain_s": s.drain_s,
        "supervisor.max_deferral_s": s.max_deferral_s,
        "ai.claude-cli.requests_per_minute": cfg.ai.claude_cli.requests_per_minute,
        "ai.anthropic.requests_per_minute": cfg.ai.anthropic.requests_per_minute,
    }.items():
        if value < 0:
            raise ConfigError(f"Expected a number >= 0 - at `$.{key}`")
    if not cfg.ai.providers:
        raise ConfigError("name at least one provider - at `$.ai.providers`")
    if len(set(cfg.ai.providers)) != len(cfg.ai.providers):
        raise ConfigError("a provider is named twice - at `$.ai.providers`")
    for model, price in cfg.ai.anthropic.prices.items():
        if price.input_per_mtok < 0 or price.output_per_mtok < 0:
            raise ConfigError(f"prices must be >= 0 - at `$.ai.anthropic.prices.{model}`")
    if s.poll_min_s > s.poll_max_s:
        raise ConfigError("poll_min_s must not exceed poll_max_s - at `$.supervisor.poll_min_s`")
    if cfg.d1.backend == "http":
        for key in ("account_id", "database_id"):
            if not getattr(cfg.d1, key):
                raise ConfigError(f'backend = "http" needs a value - at `$.d1.{key}`')
    for key, url in (("d1.api_base", cfg.d1.api_base), ("r2.endpoint_url", cfg.r2.endpoint_url)):
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"Expected an http:// or https:// URL - at `$.{key}`")
    return cfg


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>.*)`", re.DOTALL)


def _located(exc: msgspec.ValidationError, raw: Any) -> str:
    """msgspec's message, with the path completed: an unknown key is named
    in it (``$.supervisor.budget_sec``, not ``$.supervisor``), and a table of
    named tables (``[kinds.<name>]``, ``[ai.anthropic.prices.<model>]``) gets
    the name instead of msgspec's ``[...]``."""
    what, at = _split(str(exc))
    keys: tuple[str, ...] = ()
    while "[...]" in at:
        found = _culprit(raw, at)
        if found is None:
            break
        keys, at = found
    unknown = _UNKNOWN.fullmatch(what)
    if unknown is not None:
        what, at = "unknown key", at + key_path(unknown["key"])[1:]
        kind = raw.get("kinds", {}).get(keys[1]) if keys[:1] == ("kinds",) else None
        if len(keys) == 2 and isinstance(kind, dict) and \
                isinstance(kind.get(unknown["key"]), dict):
            # [kinds.video.publish] is a table "video" holding a table "publish"
            what += (f' (a kind whose name has a dot is quoted: '
                     f'[kinds."{keys[1]}.{unknown["key"]}"])')
    return f"{what} - at `${at}`"


def _culprit(raw: Any, at: str) -> tuple[tuple[str, ...], str] | None:
    """For a path with ``[...]`` (an entry of a named-table table, which msgspec
    does not name), the entry's keys and the path with its name in: found by
    converting the document again with that table cut down to one entry."""
    prefix, _, _ = at.partition("[...]")
    keys = [k for k in prefix.split(".") if k]
    node = raw
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    for name, value in node.items():
        trial = _replaced(raw, keys, {name: value})
        try:
            msgspec.convert(trial, Config)
        except msgspec.ValidationError as inner:
            _, inner_at = _split(str(inner))
            if inner_at.startswith(prefix + "[...]"):
                named = key_path(*keys, name)[1:]
                return (*keys, name), named + inner_at[len(prefix) + len("[...]"):]
    return None


def _replaced(raw: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the table at ``keys`` replaced by ``value``."""
    if not keys:
        return value  # type: ignore[no-any-return]
    out = dict(raw)
    out[keys[0]] = _replaced(raw[keys[0]], keys[1:], value)
    return out


def _split(message: str) -> tuple[str, str]:
    """A msgspec message as (what, path after the ``$``)."""
    m = _AT.fullmatch(message)
    assert m is not None  # the pattern matches any text
    return m["what"], m["at"] or ""


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
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: not UTF-8 text ({exc.reason} at "
                          f"position {exc.start})") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_located(exc, raw)}") from None
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
    # a name with a newline or an escape in it must not break the one line
    source = str(p) if str(p).isprintable() else repr(str(p))
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: the configuration is over {MAX_CONFIG_BYTES:,} bytes "
                          "(is it the right file?)")
    return decode(data, source=source)


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
