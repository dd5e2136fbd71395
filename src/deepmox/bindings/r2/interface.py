"""The R2 binding's interface: put, get, head, list and delete objects by key.

One interface, two implementations: ``filesystem`` (the embedded default, a
folder) and ``s3`` (Cloudflare R2 or any S3 API). Both check keys, content
types and metadata with :mod:`.keys` before doing anything, and both pass the
contract suite in :mod:`deepmox.testing.r2_contract`.

When you get which error
------------------------
Failures are translated once, where the backend sees them, into the families
of :mod:`deepmox.errors`:

* :class:`~deepmox.errors.R2KeyError` -- the key breaks a rule of
  :func:`.keys.validate_key` (permanent), raised before any I/O;
* :class:`~deepmox.errors.R2NotFoundError` -- :meth:`R2.get` or
  :meth:`R2.get_bytes` of a key that holds no object (permanent);
  :meth:`R2.head` answers ``None`` and :meth:`R2.delete` does nothing instead;
* :class:`~deepmox.errors.R2PermanentError` -- refused for good: bad
  credentials, a missing bucket, a 4xx, a local source file that is missing;
* :class:`~deepmox.errors.R2UnavailableError` -- a passing fault: unreachable,
  reset, 5xx, a full disk (transient);
* :class:`~deepmox.errors.R2RateLimitedError` -- throttled; ``retry_after``
  says for how long.

A conditional put (``if_none_match=True``) that finds the key taken is an
answer, not an error: :attr:`PutResult.created` is False.

Time: calls take as long as they take. The caller owns the deadline (the
actor's cancel scope); a cancelled call removes its temporary files, and a
cancelled multipart upload is aborted.
"""

from __future__ import annotations

import builtins
import errno
import pathlib
from collections.abc import Mapping
from typing import Protocol

import msgspec

from ...errors import R2Error, R2PermanentError, R2UnavailableError

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: bytes moved per read or write when streaming to and from files
CHUNK_BYTES = 1024 * 1024
#: S3's (and R2's) limits on multipart uploads
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows about one object.

    ``etag`` is opaque: it changes when the content changes, and is the same in
    a put's result, a head and a get. (filesystem: the SHA-256 of the content;
    s3: what the store answers, without quotes -- an MD5, or ``<md5>-<parts>``
    for a multipart upload.) ``last_modified`` is Unix seconds.

    In :meth:`R2.list` results ``content_type`` is ``""`` and ``metadata`` is
    empty on every backend (an S3 listing does not carry them): use
    :meth:`R2.head` for those.
    """

    key: str
    size: int
    etag: str
    content_type: str
    metadata: dict[str, str]
    last_modified: float


class PutResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :meth:`R2.put`.

    ``created`` is False only for a conditional put that found the key taken:
    nothing was written, and ``etag`` and ``size`` describe the object already
    there (``""`` and 0 if it vanished in between).
    """

    key: str
    etag: str
    size: int
    created: bool = True


class R2Statistics(msgspec.Struct, frozen=True, kw_only=True):
    backend: str
    #: calls to the store (s3: HTTP requests, one per listed page or uploaded part)
    requests: int
    #: calls that raised an error
    errors: int
    #: object bytes written and read
    bytes_up: int
    bytes_down: int
    #: s3: multipart uploads completed, and the parts they were sent in
    multipart_uploads: int = 0
    parts_uploaded: int = 0


class R2(Protocol):
    """An object store: bytes under keys, with a content type and user metadata."""

    backend: str

    @property
    def multipart_threshold_bytes(self) -> int | None:
        """Files larger than this are uploaded in parts of this size; None
        when the backend never splits an upload (filesystem)."""
        ...

    async def put(
        self,
        key: str,
        data: bytes | pathlib.Path,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
    ) -> PutResult:
        """Store ``data`` (bytes, or the content of a local file) under ``key``,
        replacing any object there -- unless ``if_none_match``, when an existing
        object is left alone and the result says ``created=False``. Readers see
        the old object or the new one, never a part."""
        ...

    async def get(self, key: str, dest: pathlib.Path) -> ObjectInfo:
        """Stream the object to the file ``dest`` (its folder is created):
        written beside it under a temporary name, then renamed, so ``dest`` is
        either absent or complete."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The object's content in memory: for small objects."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's description, or None when there is none."""
        ...

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (all pages), sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a key that holds none is fine."""
        ...

    async def presigned_url(self, key: str, expires_s: float) -> str | None:
        """A URL that GETs the object without credentials for ``expires_s``
        seconds, or None when the backend has no URLs (filesystem)."""
        ...

    def statistics(self) -> R2Statistics: ...

    async def aclose(self) -> None: ...


def local_file_error(exc: OSError, what: str) -> R2Error:
    """Classify an error of a local file the caller named (a put's source, a
    get's destination): missing or forbidden is permanent, a full disk or an
    I/O error transient."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM,
                     errno.EROFS, errno.ELOOP, errno.EINVAL, errno.ENAMETOOLONG):
        return R2PermanentError(f"{what}: {reason}")
    return R2UnavailableError(f"{what}: {reason}")
