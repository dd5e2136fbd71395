"""The ``s3`` R2 backend: Cloudflare R2 (or any S3 API) through boto3.

The client is made as R2 wants it: ``region_name`` (R2: ``"auto"``), the
account's ``endpoint_url``, path-style addressing, SigV4 signatures (presigned
URLs included), checksums only when an
operation requires them (``when_required``: R2 refuses the checksum headers
recent boto3 sends by default), botocore's own retries off
(``total_max_attempts`` 1 -- its ``max_attempts`` counts the retries after
the first attempt, so 1 would still retry once: deepmox classifies and
retries, and honours throttles across daemons), and
a pool of ``max_threads`` connections. boto3 blocks, so every request runs in a
worker thread, at most ``max_threads`` at a time (one
:class:`trio.CapacityLimiter`); the client itself is made in a worker thread on
first use.

Uploads: bytes, and files up to ``multipart_threshold_bytes``, in one
``PutObject``; larger files in equal parts of ``multipart_threshold_bytes``
(>= 5 MiB; the last part smaller), uploaded concurrently -- each part is read
in its own worker thread, so at most ``max_threads`` parts are in memory -- and
the upload is aborted if anything fails or the caller is cancelled. A
conditional put sends ``If-None-Match: *`` on ``PutObject`` or
``CompleteMultipartUpload``; a 412 answer means the key was taken
(``created=False``). A conditional multipart put HEADs the key first, so a
taken key costs no upload.

Cancellation: a request's worker thread is abandoned when the caller is
cancelled (the request may still take effect, as with any cancelled network
call); a streamed get stops between chunks and removes its temporary file; a
multipart upload is aborted under a shielded :data:`ABORT_GRACE_S` deadline.

Failures are classified here and nowhere else (:func:`classify`):

=========================================================  ======================
what came back                                             raised
=========================================================  ======================
``EndpointConnectionError``, ``ConnectTimeoutError``,      R2UnavailableError
``ReadTimeoutError``, ``ConnectionClosedError``, a reset   (transient)
or truncated answer (``ResponseStreamingError``,
``IncompleteReadError``), other connection errors
HTTP 500, 502, 504 and other 5xx but 503; 408; 409         R2UnavailableError
``ConditionalRequestConflict`` (a concurrent conditional   (transient)
write); ``NoSuchUpload``
HTTP 429; HTTP 503 (``SlowDown``), or ``SlowDown`` with    R2RateLimitedError
any status                                                 (upstream ``"r2"``,
                                                           ``Retry-After`` or 1 s)
HTTP 404 ``NoSuchKey`` / ``NotFound``                      R2NotFoundError (get);
                                                           head: None
HTTP 412 on a conditional put                              not an error:
                                                           ``created=False``
HTTP 400, 401, 403 (``AccessDenied``,                      R2PermanentError
``InvalidAccessKeyId``, ``SignatureDoesNotMatch``), 404
``NoSuchBucket``, ``InvalidBucketName``, other 4xx;
missing credentials, invalid parameters, a bad endpoint
=========================================================  ======================

A HEAD answer has no body, so a HEAD in a missing bucket looks like a missing
key (None); every other call tells them apart. Messages name the operation, the
key, the error code and the store's message; the credentials are redacted from
them should a store ever echo them.
"""

from __future__ import annotations

import builtins
import email.utils
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from ...config import R2_MAX_THREADS, R2_MULTIPART_BYTES
from ...errors import (
    ConfigError,
    R2Error,
    R2NotFoundError,
    R2PermanentError,
    R2RateLimitedError,
    R2UnavailableError,
)
from .interface import (
    CHUNK_BYTES,
    DEFAULT_CONTENT_TYPE,
    MAX_PARTS,
    MIN_PART_BYTES,
    ObjectInfo,
    PutResult,
    R2Statistics,
    local_file_error,
)
from .keys import is_valid_key, validate_content_type, validate_key, validate_metadata

T = TypeVar("T")

log = logging.getLogger("deepmox.r2")

UPSTREAM = "r2"
DEFAULT_RETRY_AFTER_S = 1.0
#: how long a failed or cancelled multipart upload may take to abort
ABORT_GRACE_S = 10.0
#: keys per ListObjectsV2 page (S3's maximum)
LIST_PAGE_SIZE = 1000
#: how long a presigned URL may live (SigV4's limit: 7 days)
MAX_PRESIGN_S = 7 * 24 * 3600

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_TRANSIENT_CODES = {"RequestTimeout", "ConditionalRequestConflict", "NoSuchUpload",
                    "InternalError", "ServiceUnavailable"}
_THROTTLE_CODES = {"SlowDown", "TooManyRequests", "RequestLimitExceeded"}


class _Taken(Exception):
    """A conditional write found the key taken (HTTP 412)."""


class _Absent(Exception):
    """A HEAD found no object (HTTP 404): an answer, not an error."""


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status if isinstance(status, int) else 0


def _retry_after(headers: Mapping[str, str]) -> float:
    value = headers.get("retry-after")
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_S
    return max(0.0, when.timestamp() - time.time())


def classify(exc: BaseException, *, op: str, key: str,
             redact: tuple[str, ...] = ()) -> R2Error | None:
    """The classified error for a driver exception, or None when ``exc`` is not
    one (a bug: let it propagate as it is). ``redact`` lists strings (the
    credentials) that must not appear in the message."""
    from botocore.exceptions import (  # type: ignore[import-untyped]
        BotoCoreError,
        ClientError,
        IncompleteReadError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )
    from urllib3.exceptions import HTTPError as URLLib3Error

    where = f"r2 s3: {op} {key!r}"

    def clean(text: str) -> str:
        for s in redact:
            if s:
                text = text.replace(s, "[redacted]")
        return text

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "?"
        message = clean(str(error.get("Message", "")))
        status = _status(exc)
        text = clean(f"{where}: {code} (HTTP {status})" + (f": {message}" if message else ""))
        if status in (429, 503) or code in _THROTTLE_CODES:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return R2RateLimitedError(f"R2 is throttling: {text}", upstream=UPSTREAM,
                                      retry_after=_retry_after(headers))
        if status >= 500 or status == 408 or code in _TRANSIENT_CODES:
            return R2UnavailableError(f"R2 is unavailable: {text}")
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return R2NotFoundError(f"{where}: no such object")
        return R2PermanentError(f"R2 refused the request: {text}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, ParamValidationError)):
        return R2PermanentError(clean(f"{where}: {exc}"))
    if isinstance(exc, IncompleteReadError):
        return R2UnavailableError(clean(f"R2 sent a truncated answer: {where}: {exc}"))
    if isinstance(exc, (BotoCoreError, URLLib3Error, ConnectionError, TimeoutError)):
        # connection refused or reset, timeouts, a broken stream: str(exc) names
        # the endpoint and the failure, never the request's signature
        return R2UnavailableError(
            clean(f"R2 is unreachable: {where}: {type(exc).__name__}: {exc}"))
    return None


def _etag(value: object) -> str:
    return str(value or "").strip('"')


def _info(key: str, response: Mapping[str, Any]) -> ObjectInfo:
    modified = response.get("LastModified")
    return ObjectInfo(
        key=key,
        size=int(response.get("ContentLength", 0)),
        etag=_etag(response.get("ETag")),
        content_type=str(response.get("ContentType") or DEFAULT_CONTENT_TYPE),
        metadata=dict(response.get("Metadata") or {}),
        last_modified=modified.timestamp() if modified is not None else 0.0,
    )


def _source_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise local_file_error(exc, f"cannot read {path}") from exc


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class S3R2:
    """Objects in one bucket of an S3 API (Cloudflare R2 in production)."""

    backend = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "auto",
        access_key: str | None = None,
        secret_key: str | None = None,
        max_threads: int = R2_MAX_THREADS,
        multipart_threshold_bytes: int = R2_MULTIPART_BYTES,
        page_size: int = LIST_PAGE_SIZE,
        client: Any = None,
    ) -> None:
        """``client``: a boto3 S3 client to use instead of making one (tests
        share one); the caller keeps closing it."""
        if multipart_threshold_bytes < MIN_PART_BYTES:
            raise ConfigError(f"must be at least 5 MiB ({MIN_PART_BYTES}) - at "
                              "`$.r2.multipart_threshold_bytes`")
        if not 1 <= page_size <= LIST_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{LIST_PAGE_SIZE}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.multipart_threshold_bytes: int = multipart_threshold_bytes
        self.page_size = page_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._redact = tuple(s for s in (secret_key, access_key) if s)
        self._max_threads = max_threads
        self._client = client
        self._owns_client = client is None
        self._client_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(max_threads)
        self._requests = 0
        self._errors = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._multipart_uploads = 0
        self._parts = 0

    # -- the client and one request ----------------------------------------------

    def _make_client(self) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # one attempt in all: deepmox classifies and retries, and honours
            # throttles across daemons ("max_attempts" would mean one retry)
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._max_threads,
            s3={"addressing_style": "path"},
            # R2 knows SigV4 only; boto3 would presign some URLs with SigV2
            signature_version="s3v4",
        )
        session = boto3.session.Session()
        return session.client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=config,
        )

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    try:
                        self._client = await trio.to_thread.run_sync(self._make_client)
                    except Exception as exc:  # a bad endpoint URL, an unknown region
                        text = str(exc)
                        for s in self._redact:
                            text = text.replace(s, "[redacted]")
                        raise R2PermanentError(
                            f"r2 s3: cannot make a client: {type(exc).__name__}: {text}"
                        ) from exc
        return self._client

    async def _call(self, op: str, key: str, fn: Callable[[Any], T], *,
                    conditional: bool = False, absent_ok: bool = False) -> T:
        """Run ``fn(client)`` in a worker thread, classifying what it raises.
        ``conditional``: a 412 raises :class:`_Taken`; ``absent_ok``: a 404
        raises :class:`_Absent` (neither counts as an error)."""
        client = await self._get_client()
        self._requests += 1
        try:
            return await trio.to_thread.run_sync(fn, client, limiter=self._limiter,
                                                 abandon_on_cancel=True)
        except R2Error:
            self._errors += 1
            raise
        except Exception as exc:
            if conditional and _status(exc) == 412:
                raise _Taken from exc
            mapped = classify(exc, op=op, key=key, redact=self._redact)
            if mapped is None:
                raise
            if absent_ok and isinstance(mapped, R2NotFoundError):
                raise _Absent from exc
            self._errors += 1
            raise mapped from exc

    # -- the interface -----------------------------------------------------------

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
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type,
                                "Metadata": meta}
        if isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
            size = len(body)
            put: Callable[[Any], Any] = partial(self._put_body, args, body, if_none_match)
        else:
            size = await trio.to_thread.run_sync(_source_size, data)
            if size > self.multipart_threshold_bytes:
                return await self._put_multipart(key, data, size, args, if_none_match)
            put = partial(self._put_file, args, data, if_none_match)
        try:
            response = await self._call("PutObject", key, put, conditional=if_none_match)
        except _Taken:
            return await self._taken(key)
        self._bytes_up += size
        return PutResult(key=key, etag=_etag(response.get("ETag")), size=size)

    async def get(self, key: str, dest: Path) -> ObjectInfo:
        validate_key(key)
        info = await self._call("GetObject", key, partial(self._fetch, key, os.fspath(dest)))
        self._bytes_down += info.size
        return info

    async def get_bytes(self, key: str) -> bytes:
        validate_key(key)

        def fetch(client: Any) -> bytes:
            response = client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                data: bytes = body.read()
            return data

        data = await self._call("GetObject", key, fetch)
        self._bytes_down += len(data)
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            response = await self._call(
                "HeadObject", key,
                lambda client: client.head_object(Bucket=self.bucket, Key=key),
                absent_ok=True)
        except _Absent:
            return None
        return _info(key, response)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        found: builtins.list[ObjectInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                      "MaxKeys": self.page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call("ListObjectsV2", prefix,
                                    partial(_list_page, kwargs))
            for o in page.get("Contents", ()):
                k = o["Key"]
                if not is_valid_key(k):
                    continue  # written by another tool; no deepmox call could name it
                found.append(ObjectInfo(key=k, size=int(o.get("Size", 0)),
                                        etag=_etag(o.get("ETag")), content_type="",
                                        metadata={},
                                        last_modified=o["LastModified"].timestamp()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        found.sort(key=lambda i: i.key)
        return found

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._call("DeleteObject", key,
                         lambda client: client.delete_object(Bucket=self.bucket, Key=key))

    async def presigned_url(self, key: str, expires_s: float) -> str | None:
        validate_key(key)
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise R2PermanentError(f"a presigned URL lives 1 s to {MAX_PRESIGN_S} s, "
                                   f"not {expires_s}")
        client = await self._get_client()
        url = await trio.to_thread.run_sync(partial(
            client.generate_presigned_url, "get_object",
            Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_s)))
        return str(url)

    def statistics(self) -> R2Statistics:
        return R2Statistics(
            backend=self.backend, requests=self._requests, errors=self._errors,
            bytes_up=self._bytes_up, bytes_down=self._bytes_down,
            multipart_uploads=self._multipart_uploads, parts_uploaded=self._parts,
        )

    async def aclose(self) -> None:
        """Close the client this store made (one passed in is the caller's)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await trio.to_thread.run_sync(client.close)

    # -- uploads -----------------------------------------------------------------

    @staticmethod
    def _put_body(args: dict[str, Any], body: bytes, if_none_match: bool, client: Any) -> Any:
        extra = {"IfNoneMatch": "*"} if if_none_match else {}
        return client.put_object(**args, **extra, Body=body)

    @staticmethod
    def _put_file(args: dict[str, Any], path: Path, if_none_match: bool, client: Any) -> Any:
        extra = {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed just below
        except OSError as exc:
            raise local_file_error(exc, f"cannot read {path}") from exc
        with f:
            return client.put_object(**args, **extra, Body=f)

    async def _taken(self, key: str) -> PutResult:
        existing = await self.head(key)
        return PutResult(key=key, etag=existing.etag if existing else "",
                         size=existing.size if existing else 0, created=False)

    async def _put_multipart(self, key: str, path: Path, size: int, args: dict[str, Any],
                             if_none_match: bool) -> PutResult:
        part_size = self.multipart_threshold_bytes
        count = -(-size // part_size)
        if count > MAX_PARTS:
            raise R2PermanentError(
                f"r2 s3: {path} ({size} bytes) needs {count} parts of {part_size} bytes; "
                f"at most {MAX_PARTS} are allowed: raise [r2] multipart_threshold_bytes")
        if if_none_match and (existing := await self.head(key)) is not None:
            return PutResult(key=key, etag=existing.etag, size=existing.size, created=False)
        started = await self._call("CreateMultipartUpload", key,
                                   lambda client: client.create_multipart_upload(**args))
        upload_id: str = started["UploadId"]
        try:
            etags = await self._upload_parts(key, path, upload_id, size, part_size, count)
            complete: dict[str, Any] = {
                "Bucket": self.bucket, "Key": key, "UploadId": upload_id,
                "MultipartUpload": {"Parts": [{"ETag": e, "PartNumber": i + 1}
                                              for i, e in enumerate(etags)]},
            }
            if if_none_match:
                complete["IfNoneMatch"] = "*"
            try:
                done = await self._call(
                    "CompleteMultipartUpload", key,
                    lambda client: client.complete_multipart_upload(**complete),
                    conditional=if_none_match)
            except _Taken:
                await self._abort(key, upload_id)
                return await self._taken(key)
        except BaseException:
            await self._abort(key, upload_id)
            raise
        self._multipart_uploads += 1
        return PutResult(key=key, etag=_etag(done.get("ETag")), size=size)

    async def _upload_parts(self, key: str, path: Path, upload_id: str, size: int,
                            part_size: int, count: int) -> builtins.list[str]:
        etags = [""] * count
        failures: builtins.list[R2Error] = []

        async def one(index: int, nursery: trio.Nursery) -> None:
            offset = index * part_size
            length = min(part_size, size - offset)
            try:
                response = await self._call(
                    "UploadPart", key,
                    partial(self._send_part, key, path, upload_id, index + 1, offset, length))
            except R2Error as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
                return
            etags[index] = str(response["ETag"])
            self._parts += 1
            self._bytes_up += length

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index, nursery)
        if failures:
            raise failures[0]
        return etags

    def _send_part(self, key: str, path: Path, upload_id: str, number: int, offset: int,
                   length: int, client: Any) -> Any:
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), length, offset)
        except OSError as exc:
            raise local_file_error(exc, f"cannot read {path}") from exc
        if len(data) != length:
            raise R2UnavailableError(f"r2 s3: {path} changed while it was being uploaded")
        return client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                  PartNumber=number, Body=data, ContentLength=length)

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, whatever happens to the caller. It skips
        the limiter: its slots may be held by the abandoned parts."""
        client = self._client
        with trio.move_on_after(ABORT_GRACE_S, shield=True):
            self._requests += 1
            try:
                await trio.to_thread.run_sync(
                    partial(client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                            UploadId=upload_id),
                    abandon_on_cancel=True)
            except Exception as exc:
                self._errors += 1
                mapped = classify(exc, op="AbortMultipartUpload", key=key,
                                  redact=self._redact)
                log.warning("could not abort the multipart upload of %r: %s", key,
                            mapped.message if mapped else repr(exc),
                            extra={"event": "r2_abort_failed"})

    # -- downloads ---------------------------------------------------------------

    def _fetch(self, key: str, dest: str, client: Any) -> ObjectInfo:
        response = client.get_object(Bucket=self.bucket, Key=key)
        info = _info(key, response)
        folder = os.path.dirname(os.path.abspath(dest))
        tmp = f"{folder}/.deepmox-{secrets.token_hex(8)}.part"
        with response["Body"] as body:
            try:
                try:
                    os.makedirs(folder, exist_ok=True)
                    out = open(tmp, "xb")  # noqa: SIM115 - closed just below
                except OSError as exc:
                    raise local_file_error(exc, f"cannot write {dest}") from exc
                n = 0
                with out:
                    # body.read raises botocore's errors (classified by _call);
                    # only the writes are the caller's file
                    while chunk := body.read(CHUNK_BYTES):
                        trio.from_thread.check_cancelled()
                        try:
                            out.write(chunk)
                        except OSError as exc:
                            raise local_file_error(exc, f"cannot write {dest}") from exc
                        n += len(chunk)
                if n != info.size:
                    raise R2UnavailableError(f"r2 s3: GetObject {key!r}: {n} bytes arrived "
                                             f"of {info.size}")
                trio.from_thread.check_cancelled()
                try:
                    os.replace(tmp, dest)
                except OSError as exc:
                    raise local_file_error(exc, f"cannot write {dest}") from exc
            finally:
                _unlink_quiet(tmp)
        return info


def _list_page(kwargs: dict[str, Any], client: Any) -> Any:
    return client.list_objects_v2(**kwargs)
