"""Fetching a job's source into the actor's scratch folder.

``source`` is one of:

- ``file:///path`` -- only under ``[video] allowed_dirs`` (after resolving
  symbolic links), so a submission cannot read arbitrary local files;
- ``http(s)://...`` -- streamed with httpx2; ``Content-Length`` and then the
  bytes themselves are held to ``[limits] max_input_bytes``; every address on
  the way (redirects included) is checked by :mod:`.netguard`;
- ``r2://key`` -- an object already in the store.

The bytes are hashed (sha256) as they arrive.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import httpx2
import msgspec
import trio

from ..bindings.r2 import R2
from ..bindings.r2.keys import validate_key
from ..errors import PermanentError, RateLimitedError, TransientError
from .netguard import resolve_public

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024


class Fetched(msgspec.Struct, frozen=True):
    path: str
    size: int
    sha256: str
    #: a file name for people (the last part of the URL or path)
    name: str


class SourceTooLargeError(PermanentError):
    pass


def _too_large(size: int, limit: int) -> SourceTooLargeError:
    return SourceTooLargeError(
        f"the source is {size:,} bytes; the limit is {limit:,} ([limits] max_input_bytes)")


def _copy_hashing(src: Path, dest: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        while block := fin.read(CHUNK):
            size += len(block)
            if size > limit:
                raise _too_large(size, limit)
            digest.update(block)
            fout.write(block)
    return size, digest.hexdigest()


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            size += len(block)
            digest.update(block)
    return size, digest.hexdigest()


def _confined(url: str, allowed_dirs: Sequence[str]) -> Path:
    """The real path ``url`` names, if it lies under an allowed folder."""
    parsed = _split(url)
    if parsed.netloc not in ("", "localhost"):
        raise PermanentError(f"file:// sources must be local paths, not on {parsed.netloc!r}")
    path = Path(urllib.parse.unquote(parsed.path))
    if "\x00" in str(path):  # a %00 in the URL; no path holds one
        raise PermanentError(f"{url[:200]!r} names a path with a NUL byte in it")
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(d)) for d in allowed_dirs]
    if not any(real == root or root in real.parents for root in roots):
        where = ", ".join(str(r) for r in roots) or "none configured"
        raise PermanentError(
            f"{path} is not under [video] allowed_dirs ({where})")
    if not real.is_file():
        raise PermanentError(f"{path} does not exist or is not a file")
    return real


async def fetch_file(url: str, dest: Path, *, allowed_dirs: Sequence[str],
                     max_bytes: int) -> Fetched:
    real = await trio.to_thread.run_sync(_confined, url, allowed_dirs)
    try:
        size, digest = await trio.to_thread.run_sync(_copy_hashing, real, dest, max_bytes)
    except PermissionError as exc:
        raise PermanentError(f"{real} cannot be read: {exc.strerror}") from None
    return Fetched(str(dest), size, digest, real.name)


def _split(url: str) -> urllib.parse.SplitResult:
    """``urlsplit``, with a malformed URL (``http://[::1``) a permanent error."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise PermanentError(f"the URL {url[:200]!r} does not parse: {exc}") from None


def _host_port(parsed: urllib.parse.SplitResult) -> tuple[str, int]:
    try:
        host = parsed.hostname
    except ValueError as exc:
        raise PermanentError(f"the URL {parsed.geturl()[:200]!r} does not parse: {exc}") \
            from None
    if not host:
        raise PermanentError(f"the URL {parsed.geturl()!r} has no host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise PermanentError(f"the URL {parsed.geturl()!r} has a bad port") from None
    return host, port


async def fetch_http(url: str, dest: Path, *, max_bytes: int, allow_private: bool,
                     allow_hosts: Sequence[str], client: httpx2.AsyncClient | None = None
                     ) -> Fetched:
    own = client is None
    http = client or httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), follow_redirects=False)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            parsed = _split(url)
            if parsed.scheme not in ("http", "https"):
                raise PermanentError(f"refusing a redirect to a {parsed.scheme}: URL")
            host, port = _host_port(parsed)
            exempt = host in allow_hosts or f"{host}:{port}" in allow_hosts
            addrs = await resolve_public(host, port, allow_private=allow_private or exempt)
            # connect to the address that was checked; the name stays in Host and SNI
            ip = str(addrs[0])
            netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            target = urllib.parse.urlunsplit(
                (parsed.scheme, netloc, parsed.path or "/", parsed.query, ""))
            headers = {"host": parsed.netloc.rsplit("@", 1)[-1]}
            extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
            try:
                async with http.stream("GET", target, headers=headers,
                                       extensions=extensions) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise PermanentError(f"{url} redirects without a Location")
                        try:
                            url = urllib.parse.urljoin(url, location)
                        except ValueError as exc:
                            raise PermanentError(f"{url} redirects to a URL that does not "
                                                 f"parse: {exc}") from None
                        continue
                    _check_status(url, host, response)
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise _too_large(int(declared), max_bytes)
                    digest = hashlib.sha256()
                    size = 0
                    async with await trio.open_file(dest, "wb") as f:
                        async for block in response.aiter_bytes(CHUNK):
                            size += len(block)
                            if size > max_bytes:
                                raise _too_large(size, max_bytes)
                            digest.update(block)
                            await f.write(block)
            except httpx2.HTTPError as exc:
                raise TransientError(
                    f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc
            name = Path(urllib.parse.unquote(parsed.path)).name or "source"
            return Fetched(str(dest), size, digest.hexdigest(), name)
        raise PermanentError(f"{url}: more than {MAX_REDIRECTS} redirects")
    finally:
        if own:
            await http.aclose()


def _check_status(url: str, host: str, response: httpx2.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or (status == 503 and "retry-after" in response.headers):
        retry = _retry_after(response.headers.get("retry-after", ""))
        raise RateLimitedError(f"{url} answered HTTP {status}", upstream=f"http:{host}",
                               retry_after=retry)
    if status >= 500 or status == 408:
        raise TransientError(f"{url} answered HTTP {status}")
    raise PermanentError(f"{url} answered HTTP {status}")


#: a retry-after that cannot be read, or is longer than this, waits this long
DEFAULT_RETRY_AFTER_S = 30.0
MAX_RETRY_AFTER_S = 3600.0


def _retry_after(value: str) -> float:
    """A server's ``Retry-After`` seconds: what it says when that is a
    plausible number, else :data:`DEFAULT_RETRY_AFTER_S` (an HTTP date, "²",
    "nan" and "1e999" are all things a server may send)."""
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    if math.isnan(seconds) or seconds < 0:
        return DEFAULT_RETRY_AFTER_S
    return min(seconds, MAX_RETRY_AFTER_S)


async def fetch_r2(url: str, dest: Path, *, r2: R2, max_bytes: int) -> Fetched:
    key = url.removeprefix("r2://")
    validate_key(key)
    info = await r2.head(key)
    if info is None:
        raise PermanentError(f"no object {key!r} in the store")
    if info.size > max_bytes:
        raise _too_large(info.size, max_bytes)
    await r2.get(key, dest)
    size, digest = await trio.to_thread.run_sync(sha256_file, dest)
    return Fetched(str(dest), size, digest, Path(key).name)


async def fetch(source: str, dest: Path, *, r2: R2, max_bytes: int,
                allowed_dirs: Sequence[str], allow_private: bool,
                allow_hosts: Sequence[str]) -> Fetched:
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme == "file":
        return await fetch_file(source, dest, allowed_dirs=allowed_dirs, max_bytes=max_bytes)
    if scheme in ("http", "https"):
        return await fetch_http(source, dest, max_bytes=max_bytes, allow_private=allow_private,
                                allow_hosts=allow_hosts)
    if scheme == "r2":
        return await fetch_r2(source, dest, r2=r2, max_bytes=max_bytes)
    raise PermanentError(
        f"unsupported source {source[:80]!r}: use file://, http(s):// or r2://")
