"""The fault proxy speaks each upstream's own failures, and deepmox's bindings
classify every one of them as the design says.

Rules: real servers on loopback ports -- the D1 REST fake and moto's S3 server
-- behind the real proxy, reached by the real bindings (``HttpD1``, ``S3R2``).
Each fault is queued for exactly the next request, so every case is
deterministic; no rates, no sleeps. Faults that let the request through
(``reset``, ``applied``) must have taken effect upstream even though the
client saw an error: that is the case the fencing and the ack check exist for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from deepmox.bindings.d1.http import DEFAULT_RETRY_AFTER_S, HttpD1
from deepmox.bindings.r2.s3 import S3R2
from deepmox.errors import (
    D1RateLimitedError,
    D1UnavailableError,
    R2RateLimitedError,
    R2UnavailableError,
)
from tests.conftest import TOKEN
from tests.fakes.d1_server import D1Fake
from tests.fakes.fault_proxy import FaultProxy, serve_proxy
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, serve_s3

pytestmark = pytest.mark.slow

RETRY_AFTER_S = 3.0


@pytest.fixture
async def d1_proxy(d1_fake: D1Fake) -> AsyncIterator[FaultProxy]:
    async with trio.open_nursery() as nursery:
        proxy = await serve_proxy(nursery, upstream=d1_fake.origin, flavor="d1",
                                  retry_after_s=RETRY_AFTER_S, latency_s=0.05)
        yield proxy
        await proxy.shutdown()


@pytest.fixture
async def proxied_d1(d1_fake: D1Fake, d1_proxy: FaultProxy) -> AsyncIterator[HttpD1]:
    d1 = HttpD1(api_base=d1_proxy.url + "/client/v4", account_id=d1_fake.account_id,
                database_id=d1_fake.database_id, token=TOKEN, requests_per_5min=100_000)
    await d1.execute("CREATE TABLE t (n INTEGER)")
    yield d1
    await d1.aclose()


async def count_rows(d1: HttpD1) -> int:
    return int((await d1.execute("SELECT count(*) FROM t")).rows[0][0])


@pytest.mark.parametrize(("fault", "error"), [
    ("error", D1UnavailableError), ("throttle", D1RateLimitedError),
    ("overloaded", D1RateLimitedError), ("reset", D1UnavailableError),
    ("cut_upload", D1UnavailableError), ("applied", D1UnavailableError),
])
async def test_d1_faults_are_classified(proxied_d1: HttpD1, d1_proxy: FaultProxy,
                                        fault: str, error: type[Exception]) -> None:
    d1_proxy.queue(fault)
    with pytest.raises(error) as caught:
        await proxied_d1.execute("INSERT INTO t VALUES (1)")
    took_effect = fault in ("reset", "applied")
    assert await count_rows(proxied_d1) == (1 if took_effect else 0)
    if fault == "overloaded":
        # D1 says so in a 500 without retry-after: deepmox's default wait applies
        assert "D1 DB is overloaded" in str(caught.value)
        assert isinstance(caught.value, D1RateLimitedError)
        assert caught.value.retry_after == DEFAULT_RETRY_AFTER_S
    if fault == "throttle":
        assert isinstance(caught.value, D1RateLimitedError)
        assert caught.value.retry_after == RETRY_AFTER_S
        # the next request came inside the retry-after the proxy announced
        assert d1_proxy.stats.into_throttle == 1
    assert d1_proxy.stats.faults == {fault: 1}
    assert [entry[3] for entry in d1_proxy.stats.log] == [None, fault, None]


async def test_latency_forwards_the_request(proxied_d1: HttpD1, d1_proxy: FaultProxy) -> None:
    d1_proxy.queue("latency")
    await proxied_d1.execute("INSERT INTO t VALUES (1)")
    assert await count_rows(proxied_d1) == 1
    assert d1_proxy.stats.faults == {"latency": 1}
    assert d1_proxy.stats.forwarded == 3


# -- S3 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with serve_s3() as server:
        yield server


@pytest.fixture
async def s3_proxy(s3_server: S3Server) -> AsyncIterator[FaultProxy]:
    async with trio.open_nursery() as nursery:
        proxy = await serve_proxy(nursery, upstream=s3_server.endpoint_url, flavor="s3",
                                  retry_after_s=RETRY_AFTER_S)
        yield proxy
        await proxy.shutdown()


@pytest.fixture
async def proxied_s3(s3_server: S3Server, s3_proxy: FaultProxy) -> AsyncIterator[S3R2]:
    client = s3_server.client()
    bucket = await trio.to_thread.run_sync(s3_server.create_bucket, client)
    client.close()
    r2 = S3R2(bucket=bucket, endpoint_url=s3_proxy.url, region=REGION, access_key=ACCESS_KEY,
              secret_key=SECRET_KEY, max_threads=2)
    yield r2
    await r2.aclose()


async def test_s3_through_the_proxy_signs_and_reads_as_direct(proxied_s3: S3R2,
                                                              tmp_path: Path) -> None:
    await proxied_s3.put("jobs/a/x.bin", b"x" * 1000, metadata={"sha256": "abc"})
    info = await proxied_s3.head("jobs/a/x.bin")
    assert info is not None
    assert (info.size, info.metadata) == (1000, {"sha256": "abc"})
    await proxied_s3.get("jobs/a/x.bin", tmp_path / "x.bin")
    assert (tmp_path / "x.bin").read_bytes() == b"x" * 1000
    assert await proxied_s3.head("jobs/a/missing") is None


@pytest.mark.parametrize(("fault", "op", "error"), [
    ("error", "put", R2UnavailableError), ("throttle", "put", R2RateLimitedError),
    ("overloaded", "put", R2RateLimitedError), ("cut_upload", "put", R2UnavailableError),
    ("applied", "put", R2UnavailableError), ("reset", "get", R2UnavailableError),
    ("throttle", "head", R2RateLimitedError),
])
async def test_s3_faults_are_classified(proxied_s3: S3R2, s3_proxy: FaultProxy, tmp_path: Path,
                                        fault: str, op: str, error: type[Exception]) -> None:
    key = "jobs/b/obj.bin"
    body = b"0123456789" * 20_000
    if op != "put":
        await proxied_s3.put(key, body)
    s3_proxy.queue(fault)
    call: Any
    if op == "put":
        call = proxied_s3.put(key, body)
    elif op == "get":
        call = proxied_s3.get(key, tmp_path / "got.bin")
    else:
        call = proxied_s3.head(key)
    sent = len(s3_proxy.stats.log)
    with pytest.raises(error) as caught:
        await call
    # one attempt, no retry of botocore's own: deepmox decides what happens next
    assert [e[3] for e in s3_proxy.stats.log[sent:]] == [fault]
    if isinstance(caught.value, R2RateLimitedError):
        assert caught.value.retry_after == RETRY_AFTER_S
    stored = await proxied_s3.head(key)
    if op == "put":
        assert (stored is not None) == (fault == "applied")
    else:
        assert stored is not None
        assert stored.size == len(body)
    assert not (tmp_path / "got.bin").exists(), "a cut-off download leaves no file"
