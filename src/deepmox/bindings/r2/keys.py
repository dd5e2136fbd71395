"""What an object key, a content type and user metadata may be.

Every backend checks its arguments here, before anything is sent or written,
so a key the embedded ``filesystem`` backend refuses is refused by ``s3`` too,
and a job that works on a developer's laptop works against R2.

A key is one or more ``/``-separated segments:

* not empty, at most :data:`MAX_KEY_BYTES` (1,024) bytes of UTF-8 -- S3's and
  R2's limit -- and valid Unicode (no lone surrogates);
* no empty segment: no leading ``/``, no trailing ``/``, no ``a//b``;
* no ``.`` or ``..`` segment;
* no NUL or other control character (below 0x20, and 0x7f);
* no segment longer than :data:`MAX_SEGMENT_BYTES` (255) bytes of UTF-8: the
  filesystem backend stores a segment as one file name, and 255 bytes is the
  limit of every common Linux filesystem. S3 alone would accept more; the rule
  is shared so the two backends accept the same keys.

Keys are deterministic per job and artifact (``jobs/{job_id}/...``), so a redone
step overwrites its object rather than adding a second one.

User metadata travels as HTTP headers (``x-amz-meta-<name>``), which S3 folds
to lower case and strips; to round-trip exactly on every backend a name is
lower-case ASCII letters, digits, ``-``, ``_`` and ``.``, a value printable
ASCII without leading or trailing spaces, and names plus values take at most
:data:`MAX_METADATA_BYTES` (2 KiB, S3's limit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ...errors import R2KeyError, R2PermanentError

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_METADATA_BYTES = 2048
MAX_CONTENT_TYPE_BYTES = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise
    :class:`~deepmox.errors.R2KeyError` saying which rule it breaks."""
    if not isinstance(key, str):
        raise R2KeyError(f"an object key is a str, not {type(key).__name__}")
    if not key:
        raise R2KeyError("an object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise R2KeyError(f"object key {key!r} is not valid Unicode "
                         "(it holds a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise R2KeyError(f"object key {_short(key)} is {size} bytes of UTF-8; "
                         f"at most {MAX_KEY_BYTES} are allowed")
    if _CONTROL.search(key):
        raise R2KeyError(f"object key {_short(key)} holds a NUL or control character")
    if key.startswith("/"):
        raise R2KeyError(f"object key {_short(key)} must not start with '/'")
    for segment in key.split("/"):
        if not segment:
            raise R2KeyError(f"object key {_short(key)} has an empty segment "
                             "('//' or a trailing '/')")
        if segment in (".", ".."):
            raise R2KeyError(f"object key {_short(key)} has a {segment!r} segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise R2KeyError(f"object key {_short(key)} has a segment longer than "
                             f"{MAX_SEGMENT_BYTES} bytes of UTF-8")
    return key


def is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except R2KeyError:
        return False
    return True


def validate_content_type(content_type: str) -> str:
    """A content type is non-empty printable ASCII without surrounding spaces."""
    if (not content_type or len(content_type) > MAX_CONTENT_TYPE_BYTES
            or not _PRINTABLE.fullmatch(content_type) or content_type.strip() != content_type):
        raise R2PermanentError(f"content type {content_type[:80]!r} is not printable "
                               f"ASCII of 1 to {MAX_CONTENT_TYPE_BYTES} characters")
    return content_type


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``metadata`` (``{}`` for None) if every name and value is
    allowed (see the module docstring), else :class:`~deepmox.errors.R2PermanentError`."""
    if not metadata:
        return {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise R2PermanentError(
                f"metadata name {name!r} must be lower-case ASCII letters, digits, "
                "'-', '_' or '.', starting with a letter or digit")
        if (not isinstance(value, str) or not _PRINTABLE.fullmatch(value)
                or value.strip() != value):
            raise R2PermanentError(
                f"metadata value of {name!r} must be printable ASCII without "
                "leading or trailing spaces")
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        raise R2PermanentError(f"metadata takes {total} bytes; at most "
                               f"{MAX_METADATA_BYTES} are allowed")
    return dict(metadata)


def _short(key: str) -> str:
    return repr(key if len(key) <= 80 else key[:77] + "...")
