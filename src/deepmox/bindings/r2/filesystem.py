"""The ``filesystem`` R2 backend: objects as files in a folder (the embedded default).

Layout
------
DESIGN.md fixes the first line ("the object with key K is the file <path>/K;
metadata lives beside it, never inside the key space"); the rest is decided
here::

    <path>/K                              the object's bytes, exactly
    <path>.meta/<h[:2]>/<h>.json          its record; h = sha256(K as UTF-8), hex

The record -- content type, user metadata, the content's SHA-256 (the etag),
and the identity of the data file it describes (inode, size, mtime in ns) --
lives in a *sibling* folder, so every valid key can be stored, a walk of
``<path>`` finds exactly the objects, and no key can collide with a record.
Records are named by a hash of the key, so the key's shape (``a`` beside
``a/b``, a 255-byte segment) never matters for them.

Writes
------
Atomic: the bytes go to a temporary file in the object's own folder, are
fsynced, renamed over the final name, and the folder is fsynced; folders a put
creates are fsynced into their parents. Temporary names start with DEL
(``"\\x7fdeepmox-<host>.<pid>-<random>.tmp"``, see :mod:`.temps`), a character
no key may hold, so a half-written file is never mistaken for an object, and
listings skip them. A conditional put
*links* its temporary file to the final name: ``os.link`` fails when the name
exists, so of two processes racing for one key exactly one creates it, and the
other's content is never visible.

Data first, record second. A reader may therefore see a new object with the
previous record for an instant, and a crash between the two leaves data without
a matching record. A record names the data file it describes; a reader that
finds no record, or one that does not match, ignores it: the etag is computed
from the content, the content type is the default and the metadata empty. A get
always hashes what it streams and refuses content that contradicts its own
record (:class:`~deepmox.errors.R2PermanentError`: corrupt).

Limits of a folder: the key ``a`` (a file) and ``a/b`` (inside a folder ``a``)
cannot both exist; a put of one while the other exists raises
:class:`~deepmox.errors.R2KeyError`. Deleting an object removes the folders it
leaves empty. A process killed mid-write leaves its temporary file behind;
a daemon starting on the store removes it (:meth:`FilesystemR2.sweep_leftovers`).

Errors
------
=============================================  ===================================
what the filesystem said                       raised
=============================================  ===================================
no such object (ENOENT, ENOTDIR, a folder)     get: R2NotFoundError; head: None
the key's path is taken by ``a`` vs ``a/b``    R2KeyError
EACCES, EPERM, EROFS                           R2PermanentError
ENOSPC, EDQUOT, EIO, EMFILE, anything else     R2UnavailableError (transient)
a put's source or a get's destination          see :func:`.interface.local_file_error`
=============================================  ===================================

All blocking I/O runs in worker threads, at most ``max_threads`` at a time;
copies poll for cancellation between chunks and remove their temporary files.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TypeVar

import msgspec
import trio

from ...config import R2_MAX_THREADS
from ...errors import (
    ConfigError,
    R2Error,
    R2KeyError,
    R2NotFoundError,
    R2PermanentError,
    R2UnavailableError,
)
from .interface import (
    CHUNK_BYTES,
    DEFAULT_CONTENT_TYPE,
    ObjectInfo,
    PutResult,
    R2Statistics,
    local_file_error,
)
from .keys import is_valid_key, validate_content_type, validate_key, validate_metadata
from .temps import PREFIX as TMP_PREFIX
from .temps import sweep_tree, temp_name

T = TypeVar("T")

#: a delete may remove a folder between a put's mkdir and its create: try again
_CREATE_ATTEMPTS = 8
_PERMANENT_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    sha256: str
    content_type: str
    metadata: dict[str, str]
    ino: int
    size: int
    mtime_ns: int

    def describes(self, key: str, st: os.stat_result) -> bool:
        return (self.key == key and self.ino == st.st_ino and self.size == st.st_size
                and self.mtime_ns == st.st_mtime_ns)


_encode_record = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(_Record).decode


def _conflict(key: str) -> R2KeyError:
    return R2KeyError(f"object key {key!r} cannot be stored beside an existing key: "
                      "the filesystem backend cannot hold both 'a' and 'a/b'")


def _store_error(exc: OSError, key: str) -> R2Error:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _PERMANENT_ERRNOS:
        return R2PermanentError(f"r2 filesystem: {key!r}: {reason}")
    if exc.errno == errno.ENAMETOOLONG:
        return R2KeyError(f"r2 filesystem: {key!r}: {reason}")
    return R2UnavailableError(f"r2 filesystem: {key!r}: {reason}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: str) -> None:
    """``mkdir -p`` that fsyncs each folder it creates into its parent."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path) from None
        return
    except FileNotFoundError:
        _ensure_dir(os.path.dirname(path))
        _ensure_dir(path)
        return
    _fsync_dir(os.path.dirname(path))


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _copy(src: IO[bytes], dst: IO[bytes] | None, h: hashlib._Hash, *,
          reading: str | None = None, writing: str | None = None) -> int:
    """Copy ``src`` to ``dst`` (if any) hashing it, polling for cancellation.
    Errors of a caller's file (``reading`` or ``writing`` names it) are
    classified here; the store's own propagate as OSError."""
    n = 0
    while True:
        try:
            chunk = src.read(CHUNK_BYTES)
        except OSError as exc:
            if reading is None:
                raise
            raise local_file_error(exc, f"cannot read {reading}") from exc
        if not chunk:
            return n
        trio.from_thread.check_cancelled()
        h.update(chunk)
        if dst is not None:
            try:
                dst.write(chunk)
            except OSError as exc:
                if writing is None:
                    raise
                raise local_file_error(exc, f"cannot write {writing}") from exc
        n += len(chunk)


class FilesystemR2:
    """Objects as files under ``path``; records under ``<path>.meta``."""

    backend = "filesystem"
    multipart_threshold_bytes: int | None = None

    def __init__(self, path: str | os.PathLike[str], *, max_threads: int = R2_MAX_THREADS):
        root = os.path.abspath(os.fspath(path))
        if os.path.dirname(root) == root:
            raise ConfigError(f"the filesystem object store cannot be {root!r}: its records "
                              "live in a sibling folder - at `$.r2.path`")
        self.root = Path(root)
        self.meta_root = Path(root + ".meta")
        self._root = root
        self._meta = root + ".meta"
        self._limiter = trio.CapacityLimiter(max_threads)
        self._requests = 0
        self._errors = 0
        self._bytes_up = 0
        self._bytes_down = 0

    # -- the event-loop side ------------------------------------------------------

    async def _run(self, key: str, fn: Callable[..., T], *args: object) -> T:
        self._requests += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except R2Error:
            self._errors += 1
            raise
        except OSError as exc:
            self._errors += 1
            raise _store_error(exc, key) from exc

    async def put(
        self,
        key: str,
        data: bytes | Path,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
    ) -> PutResult:
        validate_key(key)
        validate_content_type(content_type)
        meta = validate_metadata(metadata)
        result = await self._run(key, self._put_sync, key, data, content_type, meta,
                                 if_none_match)
        if result.created:
            self._bytes_up += result.size
        return result

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        validate_key(key)
        info = await self._run(key, self._get_sync, key, os.fspath(dest))
        self._bytes_down += info.size
        return info

    async def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        data = await self._run(key, self._get_bytes_sync, key)
        self._bytes_down += len(data)
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        return await self._run(key, self._head_sync, key)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return await self._run(prefix, self._list_sync, prefix)

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._run(key, self._delete_sync, key)

    async def presigned_url(self, key: str, expires_s: float) -> str | None:
        validate_key(key)
        return None

    def statistics(self) -> R2Statistics:
        return R2Statistics(backend=self.backend, requests=self._requests, errors=self._errors,
                            bytes_up=self._bytes_up, bytes_down=self._bytes_down)

    async def sweep_leftovers(self) -> int:
        """Remove the temporary files that writers killed mid-write left in the
        store (see :mod:`.temps`); return how many. Walks the whole store."""
        return await trio.to_thread.run_sync(sweep_tree, self._root, self._meta,
                                             limiter=self._limiter)

    async def aclose(self) -> None:
        pass

    # -- paths and records ---------------------------------------------------------

    def _data_path(self, key: str) -> str:
        return f"{self._root}/{key}"  # validated: no '..', no leading '/', no empty segment

    def _record_path(self, key: str) -> str:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self._meta}/{h[:2]}/{h}.json"

    def _read_record(self, key: str) -> _Record | None:
        try:
            with open(self._record_path(key), "rb") as f:
                return _decode_record(f.read())
        except FileNotFoundError:
            return None
        except ValueError:  # msgspec's DecodeError, or bytes that are not UTF-8
            return None  # a torn or foreign record: the content speaks for itself

    def _write_record(self, record: _Record) -> None:
        path = self._record_path(record.key)
        folder = os.path.dirname(path)
        _ensure_dir(folder)
        tmp = temp_name(folder)
        try:
            with open(tmp, "xb") as f:
                f.write(_encode_record(record))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            _unlink_quiet(tmp)
        _fsync_dir(folder)

    def _open_object(self, key: str) -> IO[bytes] | None:
        """The object's file opened for reading, or None when there is none."""
        try:
            f = open(self._data_path(key), "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            return None
        return f

    def _info(self, key: str, f: IO[bytes], *, full: bool = True) -> ObjectInfo:
        """Describe the open object ``f`` from its record, or from its content
        when the record is missing or describes another file."""
        st = os.fstat(f.fileno())
        record = self._read_record(key)
        if record is not None and record.describes(key, st):
            etag, content_type, meta = record.sha256, record.content_type, record.metadata
        else:
            h = hashlib.sha256()
            _copy(f, None, h)
            etag, content_type, meta = h.hexdigest(), DEFAULT_CONTENT_TYPE, {}
        if not full:
            content_type, meta = "", {}
        return ObjectInfo(key=key, size=st.st_size, etag=etag, content_type=content_type,
                          metadata=dict(meta), last_modified=st.st_mtime)

    # -- the worker-thread side --------------------------------------------------

    def _create_temp(self, key: str, folder: str) -> tuple[IO[bytes], str]:
        for _ in range(_CREATE_ATTEMPTS):
            try:
                _ensure_dir(folder)
            except (FileExistsError, NotADirectoryError) as exc:
                raise _conflict(key) from exc
            tmp = temp_name(folder)
            try:
                return open(tmp, "xb"), tmp  # the caller closes it
            except FileNotFoundError:
                continue  # a delete removed the (empty) folder in between
            except NotADirectoryError as exc:
                raise _conflict(key) from exc
        raise R2UnavailableError(f"r2 filesystem: {key!r}: its folder keeps disappearing")

    def _put_sync(self, key: str, data: bytes | Path, content_type: str,
                  metadata: dict[str, str], if_none_match: bool) -> PutResult:
        final = self._data_path(key)
        folder = os.path.dirname(final)
        f, tmp = self._create_temp(key, folder)
        try:
            h = hashlib.sha256()
            with f:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    view = memoryview(data)
                    for i in range(0, len(view), CHUNK_BYTES):
                        trio.from_thread.check_cancelled()
                        f.write(view[i:i + CHUNK_BYTES])
                    h.update(view)
                else:
                    try:
                        src = open(data, "rb")  # noqa: SIM115 - closed just below
                    except OSError as exc:
                        raise local_file_error(exc, f"cannot read {data}") from exc
                    with src:
                        _copy(src, f, h, reading=str(data))
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            digest = h.hexdigest()
            if if_none_match:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    if os.path.isdir(final):
                        raise _conflict(key) from None
                    existing = self._head_sync(key)
                    return PutResult(key=key, etag=existing.etag if existing else "",
                                     size=existing.size if existing else 0, created=False)
                except IsADirectoryError:
                    raise _conflict(key) from None
                os.unlink(tmp)
            else:
                try:
                    os.replace(tmp, final)
                except (IsADirectoryError, NotADirectoryError):
                    raise _conflict(key) from None
            _fsync_dir(folder)
        finally:
            _unlink_quiet(tmp)
        self._write_record(_Record(key=key, sha256=digest, content_type=content_type,
                                   metadata=metadata, ino=st.st_ino, size=st.st_size,
                                   mtime_ns=st.st_mtime_ns))
        return PutResult(key=key, etag=digest, size=st.st_size, created=True)

    def _get_sync(self, key: str, dest: str) -> ObjectInfo:
        src = self._open_object(key)
        if src is None:
            raise R2NotFoundError(f"r2 filesystem: no object {key!r}")
        with src:
            st = os.fstat(src.fileno())
            folder = os.path.dirname(os.path.abspath(dest))
            tmp = f"{folder}/.deepmox-{secrets.token_hex(8)}.part"
            try:
                try:
                    os.makedirs(folder, exist_ok=True)
                    out = open(tmp, "xb")  # noqa: SIM115 - closed just below
                except OSError as exc:
                    raise local_file_error(exc, f"cannot write {dest}") from exc
                h = hashlib.sha256()
                with out:
                    _copy(src, out, h, writing=dest)
                info = self._checked(key, st, h.hexdigest())
                try:
                    os.replace(tmp, dest)
                except OSError as exc:
                    raise local_file_error(exc, f"cannot write {dest}") from exc
            finally:
                _unlink_quiet(tmp)
        return info

    def _get_bytes_sync(self, key: str) -> bytes:
        src = self._open_object(key)
        if src is None:
            raise R2NotFoundError(f"r2 filesystem: no object {key!r}")
        with src:
            st = os.fstat(src.fileno())
            data = src.read()
        self._checked(key, st, hashlib.sha256(data).hexdigest())
        return data

    def _checked(self, key: str, st: os.stat_result, sha256: str) -> ObjectInfo:
        """The description of content just read, refusing it when it contradicts
        the record written with it."""
        record = self._read_record(key)
        if record is not None and record.describes(key, st):
            if record.sha256 != sha256:
                raise R2PermanentError(f"r2 filesystem: object {key!r} is corrupt: its "
                                       "content does not match the SHA-256 recorded at put")
            return ObjectInfo(key=key, size=st.st_size, etag=sha256,
                              content_type=record.content_type,
                              metadata=dict(record.metadata), last_modified=st.st_mtime)
        return ObjectInfo(key=key, size=st.st_size, etag=sha256,
                          content_type=DEFAULT_CONTENT_TYPE, metadata={},
                          last_modified=st.st_mtime)

    def _head_sync(self, key: str) -> ObjectInfo | None:
        f = self._open_object(key)
        if f is None:
            return None
        with f:
            return self._info(key, f)

    def _list_sync(self, prefix: str) -> builtins.list[ObjectInfo]:
        if "/" in prefix:
            folder_key = prefix.rsplit("/", 1)[0]
            if not is_valid_key(folder_key):
                return []  # no valid key lies under an invalid folder
            stack = [(self._data_path(folder_key), folder_key + "/")]
        else:
            stack = [(self._root, "")]
        found: builtins.list[tuple[str, str]] = []
        while stack:
            folder, base = stack.pop()
            trio.from_thread.check_cancelled()
            try:
                entries = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(TMP_PREFIX) or not is_valid_key(name):
                        continue
                    key = base + name
                    if entry.is_dir(follow_symlinks=False):
                        if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                            stack.append((entry.path, key + "/"))
                    elif key.startswith(prefix) and entry.is_file():
                        found.append((key, entry.path))
        found.sort()
        infos = []
        for key, _path in found:
            f = self._open_object(key)
            if f is not None:  # deleted since the walk
                with f:
                    infos.append(self._info(key, f, full=False))
        return infos

    def _delete_sync(self, key: str) -> None:
        final = self._data_path(key)
        try:
            os.unlink(final)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        else:
            # remove the folders this leaves empty (a put racing with us
            # recreates its folder), then make the removal durable
            folder = os.path.dirname(final)
            while folder != self._root:
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)
            _fsync_dir(folder)
        _unlink_quiet(self._record_path(key))
