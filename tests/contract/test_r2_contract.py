"""The R2 contract suite, run against both backends, plus what one backend has
alone: the s3 backend's failure classification (a table of botocore errors, a
dead port, a missing bucket), its list pages, multipart abort and presigned
URLs; the filesystem backend's layout, its records, its race-free conditional
put and its cleanup on cancellation; and ``open_r2``'s credentials.

Rules: every check runs on a fresh, empty store -- a new folder, or a new bucket
on one moto server per module, on loopback; the s3 store uses a 5 MiB multipart
threshold and 10 keys per list page so the paths past them run fast; keys are
also drawn by Hypothesis. No wall-clock waiting: tests wait on events.
Fixtures close every store, client, socket and server they open; tests that
read credentials clear the real ones from the environment first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deepmox.bindings.r2 import FilesystemR2, is_valid_key, open_r2, validate_key
from deepmox.bindings.r2.filesystem import TMP_PREFIX
from deepmox.bindings.r2.interface import CHUNK_BYTES, MIN_PART_BYTES
from deepmox.bindings.r2.s3 import S3R2, classify
from deepmox.config import R2Config
from deepmox.errors import (
    ConfigError,
    R2KeyError,
    R2NotFoundError,
    R2PermanentError,
    R2RateLimitedError,
    R2UnavailableError,
)
from deepmox.testing.r2_contract import CHECKS, Check, roundtrip_key
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, serve_s3

ids = [c.__name__.removeprefix("check_") for c in CHECKS]


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with serve_s3() as server:
        yield server


@pytest.fixture(scope="module")
def s3_client(s3_server: S3Server) -> Iterator[Any]:
    client = s3_server.client(max_pool_connections=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Server, s3_client: Any) -> str:
    """A bucket for the module's Hypothesis test, whose examples clean up."""
    return s3_server.create_bucket(s3_client)


@pytest.fixture
async def fs_r2(tmp_path: Path) -> AsyncIterator[FilesystemR2]:
    r2 = FilesystemR2(tmp_path / "store", max_threads=4)
    yield r2
    await r2.aclose()


async def _s3_store(server: S3Server, client: Any) -> S3R2:
    bucket = await trio.to_thread.run_sync(server.create_bucket, client)
    return S3R2(bucket=bucket, client=client, region=REGION, max_threads=4,
                multipart_threshold_bytes=MIN_PART_BYTES, page_size=10)


@pytest.fixture
async def s3_r2(s3_server: S3Server, s3_client: Any) -> AsyncIterator[S3R2]:
    r2 = await _s3_store(s3_server, s3_client)
    yield r2
    await r2.aclose()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


# -- the contract, on both backends ------------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=ids)
async def test_filesystem(check: Check, fs_r2: FilesystemR2, scratch: Path) -> None:
    await check(fs_r2, scratch)


@pytest.mark.parametrize("check", CHECKS, ids=ids)
async def test_s3(check: Check, s3_r2: S3R2, scratch: Path) -> None:
    await check(s3_r2, scratch)


# arbitrary text, and paths of mostly plausible segments with every rule's
# breakers mixed in (Hypothesis favours the breakers: about 40% are valid)
_segment = st.text(st.characters(exclude_characters="/", exclude_categories=("Cc", "Cs")),
                   min_size=1, max_size=12)
_odd_segment = st.sampled_from(["", ".", "..", "a\x00", "\x7f", "\x1f", "é" * 128, "x" * 255])
_paths = st.lists(st.one_of(*[_segment] * 7, _odd_segment), min_size=1,
                  max_size=5).map("/".join)
keys = st.one_of(st.text(), _paths, _paths)

def _key_settings(max_examples: int) -> settings:
    # derandomized: the same keys on every run, so a run's time is predictable
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# Hypothesis runs a test's trio fixtures once, not once per example: these
# tests open their store themselves.


@_key_settings(150)
@given(key=keys)
async def test_keys_filesystem(key: str, tmp_path: Path) -> None:
    event("valid key" if is_valid_key(key) else "invalid key")
    r2 = FilesystemR2(tmp_path / "keys")
    try:
        await roundtrip_key(r2, key)
    finally:
        await r2.aclose()


@_key_settings(60)
@given(key=keys)
async def test_keys_s3(key: str, s3_bucket: str, s3_client: Any) -> None:
    event("valid key" if is_valid_key(key) else "invalid key")
    r2 = S3R2(bucket=s3_bucket, client=s3_client, region=REGION)
    try:
        await roundtrip_key(r2, key)
    finally:
        await r2.aclose()


def test_validate_key_messages_name_the_rule() -> None:
    for key, words in [("", "empty"), ("/a", "start with '/'"), ("a//b", "empty segment"),
                       ("a/../b", "'..' segment"), ("a\x00", "control"),
                       ("x" * 1025, "1025 bytes"), ("x" * 256, "segment longer")]:
        with pytest.raises(R2KeyError, match=words):
            validate_key(key)


# -- s3: classification ------------------------------------------------------------


def _client_error(status: int, code: str, headers: dict[str, str] | None = None,
                  message: str = "it went wrong") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "expected", "retry_after"),
    [
        (_client_error(500, "InternalError"), R2UnavailableError, None),
        (_client_error(502, "BadGateway"), R2UnavailableError, None),
        (_client_error(504, "GatewayTimeout"), R2UnavailableError, None),
        (_client_error(408, "RequestTimeout"), R2UnavailableError, None),
        (_client_error(409, "ConditionalRequestConflict"), R2UnavailableError, None),
        (_client_error(503, "SlowDown"), R2RateLimitedError, 1.0),
        (_client_error(503, "SlowDown", {"retry-after": "7"}), R2RateLimitedError, 7.0),
        (_client_error(429, "TooManyRequests", {"retry-after": "2.5"}), R2RateLimitedError,
         2.5),
        (_client_error(429, "TooManyRequests",
                       {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
         R2RateLimitedError, 0.0),
        (_client_error(400, "InvalidBucketName"), R2PermanentError, None),
        (_client_error(400, "KeyTooLongError"), R2PermanentError, None),
        (_client_error(403, "AccessDenied"), R2PermanentError, None),
        (_client_error(403, "SignatureDoesNotMatch"), R2PermanentError, None),
        (_client_error(404, "NoSuchBucket"), R2PermanentError, None),
        (_client_error(404, "NoSuchKey"), R2NotFoundError, None),
        (_client_error(404, "404", message="Not Found"), R2NotFoundError, None),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), R2UnavailableError, None),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"), R2UnavailableError, None),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), R2UnavailableError, None),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), R2UnavailableError, None),
        (ResponseStreamingError(error="Connection reset by peer"), R2UnavailableError, None),
        (ConnectionResetError(104, "Connection reset by peer"), R2UnavailableError, None),
        (NoCredentialsError(), R2PermanentError, None),
    ],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
def test_s3_failures_are_classified(exc: BaseException, expected: type[Exception],
                                    retry_after: float | None) -> None:
    mapped = classify(exc, op="PutObject", key="jobs/x")
    assert type(mapped) is expected, mapped
    if retry_after is not None:
        assert isinstance(mapped, R2RateLimitedError)
        assert (mapped.retry_after, mapped.upstream) == (retry_after, "r2")
    assert "jobs/x" in str(mapped)


def test_s3_bugs_are_not_classified() -> None:
    assert classify(TypeError("a bug"), op="PutObject", key="k") is None


def test_s3_messages_never_hold_the_credentials() -> None:
    exc = _client_error(403, "SignatureDoesNotMatch",
                        message=f"expected a signature with {SECRET_KEY} for {ACCESS_KEY}")
    mapped = classify(exc, op="PutObject", key="k", redact=(SECRET_KEY, ACCESS_KEY))
    assert mapped is not None
    assert SECRET_KEY not in str(mapped)
    assert ACCESS_KEY not in str(mapped)
    assert "[redacted]" in str(mapped)


async def test_s3_unreachable_is_transient(tmp_path: Path) -> None:
    # a socket bound but not listening: connections to it are refused, and no
    # other process can take the port while we hold it
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        r2 = S3R2(bucket="b", endpoint_url=f"http://127.0.0.1:{port}", region=REGION,
                  access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        try:
            for call in (r2.put("k", b"x"), r2.head("k"), r2.get_bytes("k"), r2.list("p/")):
                with pytest.raises(R2UnavailableError, match="unreachable") as info:
                    await call
                assert info.value.error_class == "transient"
                assert SECRET_KEY not in str(info.value)
            assert r2.statistics().errors == 4
        finally:
            await r2.aclose()


async def test_s3_bad_endpoint_is_permanent() -> None:
    r2 = S3R2(bucket="b", endpoint_url="not a url", access_key=ACCESS_KEY,
              secret_key=SECRET_KEY)
    with pytest.raises(R2PermanentError, match="cannot make a client"):
        await r2.head("k")
    await r2.aclose()


async def test_s3_missing_bucket_is_permanent(s3_client: Any, scratch: Path) -> None:
    r2 = S3R2(bucket=f"deepmox-missing-{uuid.uuid4().hex[:8]}", client=s3_client,
              region=REGION)
    for call in (r2.put("k", b"x"), r2.get_bytes("k"), r2.get("k", scratch / "k"),
                 r2.list(), r2.delete("k")):
        with pytest.raises(R2PermanentError, match="NoSuchBucket") as info:
            await call
        assert not isinstance(info.value, R2NotFoundError)  # the bucket, not the key
    await r2.aclose()


# -- s3: paging, multipart, presigned URLs -----------------------------------------


async def test_s3_list_reads_every_page(s3_r2: S3R2) -> None:
    for i in range(25):
        await s3_r2.put(f"many/{i:02d}", b"x")
    before = s3_r2.statistics().requests
    listed = await s3_r2.list("many/")
    assert [i.key for i in listed] == [f"many/{i:02d}" for i in range(25)]
    assert s3_r2.statistics().requests - before == 3  # pages of 10, 10 and 5


async def test_s3_multipart_etag_counts_the_parts(s3_r2: S3R2, scratch: Path) -> None:
    src = scratch / "big"
    await trio.to_thread.run_sync(src.write_bytes, os.urandom(2 * MIN_PART_BYTES + 1))
    put = await s3_r2.put("big", src)
    assert put.etag.endswith("-3"), put  # what the store itself says about the upload
    assert s3_r2.statistics().parts_uploaded == 3


class _FailingParts:
    """A boto3 client whose UploadPart fails (or blocks) for one part number."""

    def __init__(self, client: Any, *, part: int, block: bool = False) -> None:
        self._client = client
        self._part = part
        self._block = block
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] != self._part:
            return self._client.upload_part(**kwargs)
        if self._block:
            self.entered.set()
            self.release.wait(30)
            raise RuntimeError("abandoned part: never sent")
        raise _client_error(500, "InternalError")


def _uploads(client: Any, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


async def test_s3_failed_multipart_is_aborted(s3_r2: S3R2, s3_client: Any,
                                              scratch: Path) -> None:
    src = scratch / "big"
    await trio.to_thread.run_sync(src.write_bytes, b"z" * (2 * MIN_PART_BYTES + 1))
    r2 = S3R2(bucket=s3_r2.bucket, client=_FailingParts(s3_client, part=2), region=REGION,
              multipart_threshold_bytes=MIN_PART_BYTES)
    with pytest.raises(R2UnavailableError, match="UploadPart"):
        await r2.put("big", src)
    assert await trio.to_thread.run_sync(_uploads, s3_client, s3_r2.bucket) == []
    assert await s3_r2.head("big") is None


async def test_s3_cancelled_multipart_is_aborted(s3_r2: S3R2, s3_client: Any,
                                                 scratch: Path) -> None:
    src = scratch / "big"
    await trio.to_thread.run_sync(src.write_bytes, b"z" * (2 * MIN_PART_BYTES + 1))
    client = _FailingParts(s3_client, part=3, block=True)
    r2 = S3R2(bucket=s3_r2.bucket, client=client, region=REGION,
              multipart_threshold_bytes=MIN_PART_BYTES)
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(r2.put, "big", src)
                await trio.to_thread.run_sync(client.entered.wait)
                scope.cancel()  # the actor's budget ran out
        assert scope.cancelled_caught
        assert await trio.to_thread.run_sync(_uploads, s3_client, s3_r2.bucket) == []
        assert await s3_r2.head("big") is None
    finally:
        client.release.set()


async def test_s3_presigned_url_lifetime(s3_r2: S3R2) -> None:
    await s3_r2.put("p", b"x")
    url = await s3_r2.presigned_url("p", 3600)
    assert url is not None
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url  # R2 knows SigV4 only
    assert "X-Amz-Expires=3600" in url
    assert SECRET_KEY not in url
    for bad in (0, 8 * 24 * 3600):
        with pytest.raises(R2PermanentError, match="presigned"):
            await s3_r2.presigned_url("p", bad)


# -- filesystem: layout, records, races, cancellation ------------------------------


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_filesystem_layout(fs_r2: FilesystemR2) -> None:
    await fs_r2.put("jobs/1/a.txt", b"hello", content_type="text/plain",
                    metadata={"step": "s"})
    root = fs_r2.root
    assert (root / "jobs" / "1" / "a.txt").read_bytes() == b"hello"
    assert _files(root) == ["jobs/1/a.txt"]  # nothing else in the key space
    h = hashlib.sha256(b"jobs/1/a.txt").hexdigest()
    record = json.loads((fs_r2.meta_root / h[:2] / f"{h}.json").read_bytes())
    assert record["key"] == "jobs/1/a.txt"
    assert record["content_type"] == "text/plain"
    assert record["metadata"] == {"step": "s"}
    assert record["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert fs_r2.meta_root == root.with_name(root.name + ".meta")
    await fs_r2.delete("jobs/1/a.txt")
    assert list(root.iterdir()) == []  # emptied folders are removed
    assert _files(fs_r2.meta_root) == []


async def test_filesystem_without_a_record(fs_r2: FilesystemR2, scratch: Path) -> None:
    """A crash between data and record, or a file changed behind our back: the
    content speaks for itself."""
    await fs_r2.put("k", b"old", content_type="text/plain", metadata={"a": "1"})
    (fs_r2.root / "k").write_bytes(b"replaced by hand")  # a new inode or mtime
    info = await fs_r2.head("k")
    assert info is not None
    assert info.etag == hashlib.sha256(b"replaced by hand").hexdigest()
    assert (info.content_type, info.metadata) == ("application/octet-stream", {})
    got = await fs_r2.get("k", scratch / "k")
    assert got.etag == info.etag
    assert [i.etag for i in await fs_r2.list()] == [info.etag]
    h = hashlib.sha256(b"k").hexdigest()
    (fs_r2.meta_root / h[:2] / f"{h}.json").write_bytes(b"{torn")
    assert await fs_r2.get_bytes("k") == b"replaced by hand"


def _rot(path: Path) -> None:
    """Flip the first byte in place: same inode, same size, same mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_filesystem_corrupt_content_is_refused(fs_r2: FilesystemR2,
                                                     scratch: Path) -> None:
    await fs_r2.put("k", b"good content")
    await trio.to_thread.run_sync(_rot, fs_r2.root / "k")
    with pytest.raises(R2PermanentError, match="corrupt"):
        await fs_r2.get_bytes("k")
    with pytest.raises(R2PermanentError, match="corrupt"):
        await fs_r2.get("k", scratch / "k")
    assert not (scratch / "k").exists()


async def test_filesystem_key_conflicts(fs_r2: FilesystemR2) -> None:
    await fs_r2.put("a", b"1")
    await fs_r2.put("x/y", b"2")
    for key in ("a/b", "a/b/c", "x"):
        for conditional in (False, True):
            with pytest.raises(R2KeyError, match="beside an existing key"):
                await fs_r2.put(key, b"3", if_none_match=conditional)
    assert await fs_r2.head("x") is None
    assert [i.key for i in await fs_r2.list()] == ["a", "x/y"]


@pytest.mark.parametrize("stores", [1, 4], ids=["one-store", "four-stores"])
async def test_filesystem_conditional_put_race(tmp_path: Path, stores: int) -> None:
    """Sixteen writers race for one key, through one store or several (as
    separate daemons on one folder would): exactly one wins, and its content
    is what is stored."""
    r2s = [FilesystemR2(tmp_path / "shared", max_threads=16) for _ in range(stores)]
    results: dict[int, bool] = {}

    async def write(i: int) -> None:
        r = await r2s[i % stores].put("race/key", f"writer {i}".encode(), if_none_match=True)
        results[i] = r.created

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(write, i)
    winners = [i for i, created in results.items() if created]
    assert len(winners) == 1, results
    assert await r2s[0].get_bytes("race/key") == f"writer {winners[0]}".encode()
    assert _files(tmp_path / "shared") == ["race/key"]  # no temporary files left


async def test_filesystem_cancelled_put_leaves_nothing(fs_r2: FilesystemR2,
                                                       scratch: Path) -> None:
    """A put cancelled mid-copy stops at the next chunk and removes its
    temporary file. The source is a FIFO, so the test decides when each chunk
    arrives."""
    fifo = scratch / "fifo"
    os.mkfifo(fifo)
    scope = trio.CancelScope()

    async def put() -> None:
        with scope:
            await fs_r2.put("jobs/1/big", fifo)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        # opening blocks until the put opens the other end
        fd = await trio.to_thread.run_sync(os.open, fifo, os.O_WRONLY)
        writer = os.fdopen(fd, "wb", buffering=0)
        try:
            await trio.to_thread.run_sync(writer.write, b"a" * CHUNK_BYTES)  # copied
            scope.cancel()
            # the next chunk wakes the copy, which sees the cancellation (or it
            # saw it after the first chunk, and closed the FIFO already)
            with contextlib.suppress(BrokenPipeError):
                await trio.to_thread.run_sync(writer.write, b"b" * CHUNK_BYTES)
        finally:
            writer.close()
    assert scope.cancelled_caught
    assert _files(fs_r2.root) == []
    assert not any(name.startswith(TMP_PREFIX) for name in os.listdir(fs_r2.root / "jobs/1"))
    assert await fs_r2.head("jobs/1/big") is None


# -- open_r2: the configuration and the credentials --------------------------------

_CREDENTIAL_ENVS = ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "CREDENTIALS_DIRECTORY")


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _CREDENTIAL_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_open_r2_filesystem(tmp_path: Path) -> None:
    r2 = open_r2(R2Config(path=str(tmp_path / "objects")))
    assert isinstance(r2, FilesystemR2)
    assert r2.root == tmp_path / "objects"
    await r2.put("k", b"v")
    assert (tmp_path / "objects" / "k").read_bytes() == b"v"
    await r2.aclose()


async def test_open_r2_s3_end_to_end(s3_server: S3Server, s3_bucket: str,
                                     no_credentials: pytest.MonkeyPatch) -> None:
    """The product's own client (made on first use from the configuration and
    the credentials in the environment) against moto."""
    no_credentials.setenv("R2_ACCESS_KEY_ID", ACCESS_KEY)
    no_credentials.setenv("R2_SECRET_ACCESS_KEY", SECRET_KEY)
    cfg = R2Config(backend="s3", endpoint_url=s3_server.endpoint_url, bucket=s3_bucket,
                   region=REGION)
    r2 = open_r2(cfg)
    try:
        assert isinstance(r2, S3R2)
        put = await r2.put("e2e/k", b"through the product's client")
        assert put.created
        assert await r2.get_bytes("e2e/k") == b"through the product's client"
        url = await r2.presigned_url("e2e/k", 60)
        assert url is not None
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
        await r2.delete("e2e/k")
    finally:
        await r2.aclose()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"R2_ACCESS_KEY_ID": "r2a", "R2_SECRET_ACCESS_KEY": "r2s",
          "AWS_ACCESS_KEY_ID": "awsa", "AWS_SECRET_ACCESS_KEY": "awss"}, ("r2a", "r2s")),
        ({"AWS_ACCESS_KEY_ID": "awsa", "AWS_SECRET_ACCESS_KEY": "awss"}, ("awsa", "awss")),
        # a pair is never mixed: half of the R2 pair is an error, not a fallback
        ({"R2_ACCESS_KEY_ID": "r2a", "AWS_ACCESS_KEY_ID": "awsa",
          "AWS_SECRET_ACCESS_KEY": "awss"}, "R2_SECRET_ACCESS_KEY is not set"),
        ({}, "needs an access key pair"),
    ],
    ids=["r2-names", "aws-fallback", "half-a-pair", "none"],
)
def test_open_r2_s3_credentials(env: dict[str, str], expected: tuple[str, str] | str,
                                no_credentials: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        no_credentials.setenv(name, value)
    cfg = R2Config(backend="s3", bucket="b")
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            open_r2(cfg)
        return
    r2 = open_r2(cfg)
    assert isinstance(r2, S3R2)
    assert (r2._access_key, r2._secret_key) == expected
    assert (r2.region, r2.endpoint_url, r2.multipart_threshold_bytes) == (
        "auto", None, 8 * 1024 * 1024)


def test_open_r2_s3_credentials_from_systemd(tmp_path: Path,
                                             no_credentials: pytest.MonkeyPatch) -> None:
    (tmp_path / "R2_ACCESS_KEY_ID").write_text("filea\n")
    (tmp_path / "R2_SECRET_ACCESS_KEY").write_text("files\n")
    no_credentials.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    r2 = open_r2(R2Config(backend="s3", bucket="b"))
    assert isinstance(r2, S3R2)
    assert (r2._access_key, r2._secret_key) == ("filea", "files")
