"""The R2 binding: an object store, a local folder (``filesystem``) or Cloudflare
R2 over its S3 API (``s3``).

Keys are deterministic per job and artifact (``jobs/{job_id}/...``), so a redone
step overwrites its object rather than adding a second one.
"""

from __future__ import annotations

from ...config import R2Config, secret
from ...errors import ConfigError
from .filesystem import FilesystemR2
from .interface import DEFAULT_CONTENT_TYPE, R2, ObjectInfo, PutResult, R2Statistics
from .keys import MAX_KEY_BYTES, MAX_SEGMENT_BYTES, is_valid_key, validate_key

__all__ = [
    "DEFAULT_CONTENT_TYPE", "MAX_KEY_BYTES", "MAX_SEGMENT_BYTES", "R2", "FilesystemR2",
    "ObjectInfo", "PutResult", "R2Statistics", "is_valid_key", "open_r2", "validate_key",
]

#: the standard names, used when the configured ones hold nothing
AWS_ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
AWS_SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"


def _credentials(cfg: R2Config) -> tuple[str, str]:
    """The access key pair: ``cfg.access_key_env`` / ``cfg.secret_key_env`` (the
    environment, or systemd credentials), else the standard AWS names. A pair
    is taken whole from one place, never mixed."""
    pairs = [(cfg.access_key_env, cfg.secret_key_env), (AWS_ACCESS_KEY_ENV, AWS_SECRET_KEY_ENV)]
    for access_env, secret_env in pairs:
        if not access_env and not secret_env:
            continue
        access = secret(access_env) if access_env else None
        secret_key = secret(secret_env) if secret_env else None
        if access and secret_key:
            return access, secret_key
        if access or secret_key:
            missing = secret_env if access else access_env
            raise ConfigError(f'[r2] backend = "s3": ${missing or "?"} is not set, but its '
                              "pair is - at `$.r2.access_key_env`")
    raise ConfigError(
        f'[r2] backend = "s3" needs an access key pair in ${cfg.access_key_env} and '
        f"${cfg.secret_key_env} (or {AWS_ACCESS_KEY_ENV} and {AWS_SECRET_KEY_ENV}), in the "
        "environment or in $CREDENTIALS_DIRECTORY")


def open_r2(cfg: R2Config) -> R2:
    """The backend ``cfg`` names. Nothing is read or sent yet: the s3 backend
    makes its client on first use; its credentials are looked up now."""
    if cfg.backend == "filesystem":
        return FilesystemR2(cfg.path, max_threads=cfg.max_threads)
    from .s3 import S3R2  # boto3 is imported only by daemons that need it

    access_key, secret_key = _credentials(cfg)
    return S3R2(
        bucket=cfg.bucket,
        endpoint_url=cfg.endpoint_url or None,
        region=cfg.region,
        access_key=access_key,
        secret_key=secret_key,
        max_threads=cfg.max_threads,
        multipart_threshold_bytes=cfg.multipart_threshold_bytes,
    )
