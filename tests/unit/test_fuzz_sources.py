"""Hostile sources, fuzzed: every spelling of a forbidden address, names
that resolve to one, redirects to them, and file and object paths that try
to leave where they belong.

``tests/unit/test_ingest.py`` holds the fixed list; this module draws the
same attacks from hypothesis:

* an address from each forbidden network (loopback, private, link-local and
  the metadata address, CGNAT, multicast, reserved, unspecified; IPv6
  loopback, unique-local ``fd00::/8``, link-local, IPv4-mapped, NAT64, 6to4),
  spelled as a URL host every way a resolver reads it: dotted decimal,
  decimal, octal and hexadecimal integers and parts, short forms, IPv6
  literals, a trailing dot, upper-case schemes, user info;
* host names that resolve (through a resolver the test installs) to such an
  address, alone or next to a public one;
* a redirect chain from an allowed test server to any of those;
* ``file://`` paths built of ``..``, ``%2e%2e``, ``%2f``, ``%00``, doubled
  slashes, absolute paths and symbolic links out of ``allowed_dirs``;
* ``r2://`` keys of the same.

Rules: a refusal is a :class:`PermanentError` (nothing else may escape), made
before any connection: the forbidden targets point at a canary listener on
127.0.0.1 that counts connections, and it must count none. No file outside
the test's folder is read (a canary file outside ``allowed_dirs`` must never
come back). No traffic leaves loopback, nothing sleeps.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deepmox.bindings.r2 import FilesystemR2
from deepmox.errors import PermanentError, TransientError
from deepmox.video import ingest
from deepmox.video.netguard import ForbiddenAddressError, why_forbidden

FUZZ = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])

FORBIDDEN_V4 = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
                "192.0.0.0/24", "198.18.0.0/15"]
FORBIDDEN_V6 = ["::1/128", "fc00::/7", "fd00::/8", "fe80::/10", "ff00::/8", "::/128",
                "2001:db8::/32"]


def _in(network: str) -> st.SearchStrategy[Any]:
    net = ipaddress.ip_network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


_v4 = st.sampled_from(FORBIDDEN_V4).flatmap(_in)
_v6 = st.sampled_from(FORBIDDEN_V6).flatmap(_in)
#: IPv6 forms that carry a forbidden IPv4 address inside
_wrapped = _v4.flatmap(lambda a: st.sampled_from([
    ipaddress.IPv6Address(f"::ffff:{a}"),                       # IPv4-mapped
    ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(a)),  # NAT64
    ipaddress.IPv6Address((0x2002 << 112) | (int(a) << 80)),    # 6to4
]))


@settings(max_examples=300)
@given(st.one_of(_v4, _v6, _wrapped, st.just(ipaddress.ip_address("169.254.169.254")),
                 st.just(ipaddress.ip_address("fd00:ec2::254"))))
def test_every_forbidden_address_is_refused(addr: Any) -> None:
    assert why_forbidden(addr) is not None


# -- spellings --------------------------------------------------------------------------


def spellings(addr: ipaddress.IPv4Address) -> list[str]:
    """How a URL can name ``addr``: every form ``inet_aton`` and friends read."""
    a, b, c, d = addr.packed
    n = int(addr)
    return [
        str(addr), f"{n}", f"0{n:o}", f"0x{n:x}", f"0X{n:X}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}", f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}",
        f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}",
        f"0x{a:02x}.{b}.0{c:o}.{d}", f"{addr}.",
        f"[::ffff:{addr}]", f"[::ffff:{(a << 8) | b:x}:{(c << 8) | d:x}]",
        f"[0:0:0:0:0:ffff:{addr}]", f"[64:ff9b::{addr}]",
    ]


@dataclass
class Canary:
    """A listener that must never be connected to."""

    port: int
    connections: int = 0


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    async with trio.open_nursery() as nursery:
        found = Canary(0)

        async def count(stream: trio.SocketStream) -> None:
            found.connections += 1
            await stream.aclose()

        listeners = await nursery.start(functools.partial(trio.serve_tcp, count, 0,
                                                          host="127.0.0.1"))
        found.port = listeners[0].socket.getsockname()[1]
        yield found
        nursery.cancel_scope.cancel()


#: built once: a client that loads the CA bundle for every example is slow
_TLS = ssl.create_default_context()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0), follow_redirects=False,
                                  verify=_TLS) as c:
        yield c


_loopbackish = st.sampled_from(["127.0.0.1", "127.0.0.2", "127.255.255.254", "0.0.0.0",
                                "10.1.2.3", "169.254.169.254", "192.168.0.1", "172.31.0.1"])
_schemes = st.sampled_from(["http", "https", "HTTP", "hTTps"])


@FUZZ
@given(host=_loopbackish.map(ipaddress.IPv4Address).flatmap(
    lambda a: st.sampled_from(spellings(a))), scheme=_schemes,
    userinfo=st.sampled_from(["", "user@", "user:pass@", "a%40b@"]),
    path=st.sampled_from(["/", "/x", "/latest/meta-data/", "/%2e%2e/etc/passwd", ""]))
async def test_spelled_forbidden_hosts_are_refused_before_connecting(
        canary: Canary, http: httpx2.AsyncClient, tmp_path: Path, host: str, scheme: str,
        userinfo: str, path: str) -> None:
    url = f"{scheme}://{userinfo}{host}:{canary.port}{path}"
    with pytest.raises(PermanentError) as info:
        await ingest.fetch_http(url, tmp_path / "out", max_bytes=10**6, allow_private=False,
                                allow_hosts=[], client=http)
    event(type(info.value).__name__)
    assert canary.connections == 0
    assert not (tmp_path / "out").exists()


# -- names that resolve to forbidden addresses -----------------------------------------


class Resolver(trio.abc.HostnameResolver):
    """``*.test`` names resolve to what the test says; anything else as usual."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    async def getaddrinfo(self, host: bytes | str | None, port: bytes | str | int | None,
                          family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.names:
            out = []
            for addr in self.names[name]:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                sockaddr = (addr, int(port or 0), 0, 0) if fam == socket.AF_INET6 else (
                    addr, int(port or 0))
                out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
            return out
        if name.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family, type,
                                             proto, flags)

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


_public = st.sampled_from(["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
_private = st.one_of(_loopbackish, _v6.map(str), _wrapped.map(str))


@FUZZ
@given(private=st.lists(_private, min_size=1, max_size=2),
       public=st.lists(_public, max_size=2), public_first=st.booleans())
async def test_names_that_resolve_to_forbidden_addresses_are_refused(
        canary: Canary, http: httpx2.AsyncClient, tmp_path: Path, private: list[str],
        public: list[str], public_first: bool) -> None:
    addrs = public + private if public_first else private + public
    trio.socket.set_custom_hostname_resolver(Resolver({"media.test": addrs}))
    with pytest.raises(ForbiddenAddressError, match=r"media\.test"):
        await ingest.fetch_http(f"http://media.test:{canary.port}/clip.mp4", tmp_path / "o",
                                max_bytes=10**6, allow_private=False, allow_hosts=[],
                                client=http)
    assert canary.connections == 0


@pytest.mark.parametrize(("host", "error"), [
    ("nowhere.test", PermanentError),
    ("a" * 64 + ".example", PermanentError),     # a label over 63 characters
    ("ex\u00e4mple\u2028.com", PermanentError),  # a name IDNA refuses
    ("[::1", PermanentError),                    # does not parse
    ("[fe80::1%25eth0]", PermanentError),        # a zone: link-local all the same
])
async def test_hosts_that_cannot_be_names_are_permanent(tmp_path: Path, host: str,
                                                        error: type[Exception]) -> None:
    # ValueError and UnicodeError escaped here, and were retried as transient
    trio.socket.set_custom_hostname_resolver(Resolver({}))
    with pytest.raises(error) as info:
        await ingest.fetch_http(f"http://{host}/x", tmp_path / "o", max_bytes=10**6,
                                allow_private=False, allow_hosts=[])
    assert not isinstance(info.value, TransientError)


async def test_a_resolver_that_fails_for_now_is_transient(tmp_path: Path) -> None:
    class Down(Resolver):
        async def getaddrinfo(self, *args: Any, **kwargs: Any) -> list[Any]:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    trio.socket.set_custom_hostname_resolver(Down({}))
    with pytest.raises(TransientError, match="now"):
        await ingest.fetch_http("http://media.example/x", tmp_path / "o", max_bytes=10**6,
                                allow_private=False, allow_hosts=[])


# -- redirects --------------------------------------------------------------------------


@FUZZ
@given(target=_loopbackish.map(ipaddress.IPv4Address).flatmap(
    lambda a: st.sampled_from(spellings(a))), hops=st.integers(0, 3),
    scheme=_schemes)
async def test_redirects_to_forbidden_hosts_are_refused(
        canary: Canary, http: httpx2.AsyncClient, tmp_path: Path, target: str, hops: int,
        scheme: str) -> None:
    """An allowed server redirects ``hops`` times to itself, then to the canary."""
    location = f"{scheme}://{target}:{canary.port}/loot"
    served: list[str] = []

    async def redirect(stream: trio.SocketStream) -> None:
        async with stream:
            request = await stream.receive_some(65536)
            served.append(request.split(b" ", 2)[1].decode())
            step = len(served)
            where = f"/hop{step}" if step <= hops else location
            await stream.send_all(f"HTTP/1.1 302 Found\r\nlocation: {where}\r\n"
                                  "content-length: 0\r\nconnection: close\r\n\r\n".encode())

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, redirect, 0,
                                                            host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with pytest.raises(PermanentError):
            await ingest.fetch_http(f"http://127.0.0.1:{port}/start", tmp_path / "o",
                                    max_bytes=10**6, allow_private=False,
                                    allow_hosts=[f"127.0.0.1:{port}"], client=http)
        nursery.cancel_scope.cancel()
    assert len(served) == hops + 1
    assert canary.connections == 0


# -- file:// and r2:// paths ---------------------------------------------------------------

SECRET = b"canary: the bytes of a file outside allowed_dirs\n"
INSIDE = b"an allowed clip\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/media`` (allowed) holding a clip and links out of it; secrets beside."""
    root = tmp_path / "tree"
    media = root / "media"
    (media / "sub").mkdir(parents=True)
    (media / "clip.mp4").write_bytes(INSIDE)
    (media / "sub" / "clip.mp4").write_bytes(INSIDE)
    (root / "secret.txt").write_bytes(SECRET)
    (root / "media-evil").mkdir()
    (root / "media-evil" / "clip.mp4").write_bytes(SECRET)  # a sibling sharing the prefix
    (media / "link.mp4").symlink_to(root / "secret.txt")
    (media / "up").symlink_to(root)
    (media / "abs").symlink_to("/etc")
    (media / "loop").symlink_to(media / "loop")
    os.mkfifo(media / "fifo")
    return root


_segments = st.sampled_from(["..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "..%2f", "%2f",
                             "", "media", "sub", "clip.mp4", "secret.txt", "link.mp4", "up",
                             "abs", "loop", "fifo", "passwd", "media-evil", "%00", "clip.mp4%00",
                             "%252e%252e", "\\..", "..;", "%c0%ae%c0%ae"])


#: where a path ends: mostly names that exist, inside and out
_last = st.sampled_from(["clip.mp4", "clip.mp4", "sub/clip.mp4", "link.mp4", "secret.txt",
                         "media-evil/clip.mp4", "up/secret.txt", "abs/passwd", "clip.mp4%00",
                         "%63lip.mp4", "fifo"])


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_segments, max_size=5), last=_last,
       rooted=st.sampled_from(["media", "media", "root", "/"]),
       host=st.sampled_from(["", "", "localhost", "LOCALHOST", "evil.example"]))
async def test_file_paths_never_leave_allowed_dirs(tree: Path, tmp_path: Path,
                                                   segments: list[str], last: str, rooted: str,
                                                   host: str) -> None:
    base = {"media": f"{tree}/media", "root": str(tree), "/": ""}[rooted]
    url = f"file://{host}{base}/" + "/".join([*segments, last])
    out = tmp_path / "fetched"
    out.unlink(missing_ok=True)
    try:
        got = await ingest.fetch(url, out, r2=None,  # type: ignore[arg-type]
                                 max_bytes=10**6, allowed_dirs=[str(tree / "media")],
                                 allow_private=False, allow_hosts=[])
    except PermanentError as exc:
        event(f"refused: {str(exc).split(':')[0][:40]}")
        assert not out.exists() or out.read_bytes() != SECRET
        return
    event("fetched")
    assert out.read_bytes() == INSIDE, url
    assert got.size == len(INSIDE)


_keys = st.lists(st.sampled_from(["..", ".", "%2e%2e", "", "jobs", "x", "source", "\x00",
                                  "/", "a\\..\\b", "secret"]), min_size=1,
                 max_size=5).map("/".join)


@FUZZ
@given(key=_keys)
async def test_r2_keys_never_leave_the_store(tmp_path: Path, key: str) -> None:
    root = tmp_path / f"store-{abs(hash(key))}"
    (tmp_path / "secret").write_bytes(SECRET)
    r2 = FilesystemR2(root)
    try:
        await r2.put("jobs/x/source", INSIDE)
        out = tmp_path / "fetched"
        out.unlink(missing_ok=True)
        try:
            await ingest.fetch(f"r2://{key}", out, r2=r2, max_bytes=10**6, allowed_dirs=[],
                               allow_private=False, allow_hosts=[])
        except PermanentError:
            event("refused")
            assert not out.exists() or out.read_bytes() != SECRET
            return
        event("fetched")
        assert out.read_bytes() == INSIDE
        assert urllib.parse.unquote(key) == key
    finally:
        await r2.aclose()


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=12), st.sampled_from(["²", "1e999", "nan", "-5", "inf",
                                                       "Wed, 21 Oct 2015 07:28:00 GMT"])))
def test_any_retry_after_a_server_sends_is_a_sane_wait(value: str) -> None:
    # float("²") raised ValueError past the old digit check: retried as a fault
    wait = ingest._retry_after(value)
    assert 0 <= wait <= ingest.MAX_RETRY_AFTER_S
