"""Fetching sources: the address guard, file:// confinement, size limits,
redirects.

Rules: no traffic leaves loopback -- refused addresses are refused before any
connection is made, and the only server is a hypercorn app on 127.0.0.1
(allowed through ``allow_hosts``, which is how its redirects to forbidden
addresses get tested). No waiting on the wall clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from deepmox.errors import PermanentError, TransientError
from deepmox.video import ingest
from deepmox.video.netguard import ForbiddenAddressError, resolve_public, why_forbidden

BODY = b"not really a video, but bytes all the same\n" * 100


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    headers: list[tuple[bytes, bytes]] = []
    status, body = 200, BODY
    if path == "/to-metadata":
        status, body = 302, b""
        headers.append((b"location", b"http://169.254.169.254/latest/meta-data/"))
    elif path == "/to-decimal-loopback":
        status, body = 301, b""
        headers.append((b"location", b"http://2130706433:1/x"))
    elif path == "/loop":
        status, body = 302, b""
        headers.append((b"location", b"/loop"))
    elif path == "/to-clip":
        status, body = 302, b""
        headers.append((b"location", b"/clip.bin"))
    elif path == "/missing":
        status, body = 404, b"no"
    elif path == "/huge":
        headers.append((b"content-length", str(10**12).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    cfg = HyperConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.errorlog = None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve, app, cfg)  # type: ignore[arg-type]
        yield urls[0].replace("0.0.0.0", "127.0.0.1")
        nursery.cancel_scope.cancel()


def _host(url: str) -> str:
    return url.split("//", 1)[1]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "10.0.0.1", "172.16.5.4",
    "192.168.1.1", "100.64.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "fd00:ec2::254", "fe80::1", "fc00::1", "64:ff9b::a9fe:a9fe", "2002:a00:1::", "224.0.0.1",
    "255.255.255.255",
])
def test_forbidden_addresses(address: str) -> None:
    assert why_forbidden(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert why_forbidden(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/x", "http://2130706433/x", "http://0177.0.0.1/x", "http://0x7f.1/x",
    "http://localhost/x", "http://[::ffff:127.0.0.1]/x", "https://127.0.0.1:8443/x",
    "http://[fd00:ec2::254]/x",
])
async def test_private_urls_are_refused_before_connecting(url: str, tmp_path: Path) -> None:
    with pytest.raises(ForbiddenAddressError, match="refusing to fetch"):
        await ingest.fetch_http(url, tmp_path / "out", max_bytes=10**6, allow_private=False,
                                allow_hosts=[])
    assert not (tmp_path / "out").exists()


async def test_redirects_to_forbidden_addresses_are_refused(server: str,
                                                          tmp_path: Path) -> None:
    for path in ("/to-metadata", "/to-decimal-loopback"):
        with pytest.raises(ForbiddenAddressError):
            await ingest.fetch_http(server + path, tmp_path / "out", max_bytes=10**6,
                                    allow_private=False, allow_hosts=[_host(server)])


async def test_allowed_host_fetches_and_hashes(server: str, tmp_path: Path) -> None:
    import hashlib

    got = await ingest.fetch_http(server + "/to-clip", tmp_path / "out", max_bytes=10**6,
                                  allow_private=False, allow_hosts=[_host(server)])
    assert got.size == len(BODY)
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()
    assert got.name == "clip.bin"
    assert (tmp_path / "out").read_bytes() == BODY


async def test_http_limits_and_statuses(server: str, tmp_path: Path) -> None:
    allow = [_host(server)]
    with pytest.raises(ingest.SourceTooLargeError, match="max_input_bytes"):
        await ingest.fetch_http(server + "/huge", tmp_path / "a", max_bytes=10**6,
                                allow_private=False, allow_hosts=allow)
    with pytest.raises(ingest.SourceTooLargeError):
        await ingest.fetch_http(server + "/clip", tmp_path / "b", max_bytes=100,
                                allow_private=False, allow_hosts=allow)
    with pytest.raises(PermanentError, match="HTTP 404"):
        await ingest.fetch_http(server + "/missing", tmp_path / "c", max_bytes=10**6,
                                allow_private=False, allow_hosts=allow)
    with pytest.raises(PermanentError, match="redirects"):
        await ingest.fetch_http(server + "/loop", tmp_path / "d", max_bytes=10**6,
                                allow_private=False, allow_hosts=allow)
    with pytest.raises(TransientError):
        await ingest.fetch_http("http://127.0.0.1:9/x", tmp_path / "e", max_bytes=10**6,
                                allow_private=True, allow_hosts=[])


async def test_private_networks_can_be_allowed(server: str, tmp_path: Path) -> None:
    got = await ingest.fetch_http(server + "/clip", tmp_path / "out", max_bytes=10**6,
                                  allow_private=True, allow_hosts=[])
    assert got.size == len(BODY)


async def test_names_resolving_to_private_addresses_are_refused() -> None:
    with pytest.raises(ForbiddenAddressError, match="localhost"):
        await resolve_public("localhost", 80, allow_private=False)


async def test_file_sources_are_confined(tmp_path: Path) -> None:
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "clip.mp4").write_bytes(BODY)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    (allowed / "link.mp4").symlink_to(secret)
    got = await ingest.fetch_file((allowed / "clip.mp4").as_uri(), tmp_path / "o1",
                                  allowed_dirs=[str(allowed)], max_bytes=10**6)
    assert got.size == len(BODY)
    for url in (secret.as_uri(), (allowed / "link.mp4").as_uri(),
                f"file://{allowed}/../secret.txt", "file://otherhost/etc/passwd"):
        with pytest.raises(PermanentError):
            await ingest.fetch_file(url, tmp_path / "o2", allowed_dirs=[str(allowed)],
                                    max_bytes=10**6)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(PermanentError, match="allowed_dirs"):
        await ingest.fetch_file((allowed / "clip.mp4").as_uri(), tmp_path / "o3",
                                allowed_dirs=[], max_bytes=10**6)


async def test_unsupported_schemes_are_refused(tmp_path: Path) -> None:
    for url in ("ftp://example.com/x", "gopher://x", "/etc/passwd", "data:,hello"):
        with pytest.raises(PermanentError, match="unsupported source"):
            await ingest.fetch(url, tmp_path / "o", r2=None, max_bytes=10,  # type: ignore[arg-type]
                               allowed_dirs=[], allow_private=False, allow_hosts=[])
