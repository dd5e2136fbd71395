"""The R2 contract: what every R2 backend must do, as async check functions.

Each check in :data:`CHECKS` takes a freshly opened, empty
:class:`~deepmox.bindings.r2.R2` and a scratch folder of its own, and raises
``AssertionError`` when the backend breaks the contract. A test module
parametrizes :data:`CHECKS` over its backends (see
``tests/contract/test_r2_contract.py``); :func:`roundtrip_key` is the property
a test drives with arbitrary keys (Hypothesis).

The store's :attr:`~deepmox.bindings.r2.R2.multipart_threshold_bytes` should be
small (5 MiB) for :func:`check_multipart_file`, which writes a file of twice
that plus a little.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import trio

from ..bindings.r2 import DEFAULT_CONTENT_TYPE, R2, ObjectInfo, validate_key
from ..errors import R2KeyError, R2NotFoundError, R2PermanentError

Check = Callable[[R2, Path], Awaitable[None]]

#: keys that break each rule of validate_key, with the rule
INVALID_KEYS: list[tuple[str, str]] = [
    ("", "empty"),
    ("/a", "leading slash"),
    ("a/", "trailing slash (empty last segment)"),
    ("a//b", "empty segment"),
    ("/", "only a slash"),
    (".", "dot segment"),
    ("..", "dot-dot segment"),
    ("a/./b", "dot segment inside"),
    ("a/../b", "dot-dot segment inside"),
    ("../escape", "dot-dot first"),
    ("a/..", "dot-dot last"),
    ("a\x00b", "NUL"),
    ("a\nb", "newline"),
    ("a\tb", "tab"),
    ("a\x1fb", "unit separator (0x1f)"),
    ("a\x7fb", "DEL (0x7f)"),
    ("\x7fdeepmox-0123.tmp", "a temporary file's name"),
    ("/".join(["a" * 255] * 4) + "/e", "1,025 bytes"),
    ("/".join(["é" * 127] * 4) + "/xxxxxx", "1,026 bytes of UTF-8 in 518 characters"),
    ("x" * 256, "a 256-byte segment"),
    ("ok/" + "é" * 128, "a segment of 256 bytes of UTF-8"),
    ("a\ud800b", "a lone surrogate"),
]

#: unusual keys every backend must store and give back exactly
ODD_KEYS: list[str] = [
    "a",
    "jobs/01J0000000000000000000000/out.mp4",
    "b/.c",
    "..a",
    "a..b/c.",
    ".hidden",
    "a b/c  d",
    "percent%2Fslash+plus?query#frag&amp;=",
    "é/😀/日本語",
    "back\\slash/colon:star*",
    "c1\u0085\u2028nel",
    "x" * 255,
    "/".join(["k" * 255] * 3 + ["k" * 254]) + "/k",  # exactly 1,024 bytes
    "/".join(["é" * 127] * 4) + "/xxxx",  # 1,024 bytes of UTF-8
]


def _recent(info: ObjectInfo) -> bool:
    return abs(info.last_modified - time.time()) < 600


def _write_file(path: Path, size: int, seed: int) -> str:
    """A file of ``size`` pseudo-random bytes; its SHA-256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            chunk = rng.randbytes(n)
            h.update(chunk)
            f.write(chunk)
            left -= n
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def check_put_get_head_round_trip(r2: R2, tmp: Path) -> None:
    key = "jobs/01J/thumbs/poster.txt"
    data = b"hello, object store\n" * 10
    meta = {"job-id": "01J", "step": "thumbs", "empty": ""}
    put = await r2.put(key, data, content_type="text/plain; charset=utf-8", metadata=meta)
    assert (put.created, put.key, put.size) == (True, key, len(data)), put
    assert put.etag, put

    head = await r2.head(key)
    assert head is not None
    assert (head.key, head.size, head.etag) == (key, len(data), put.etag), head
    assert head.content_type == "text/plain; charset=utf-8", head
    assert head.metadata == meta, head.metadata
    assert _recent(head), head.last_modified

    dest = tmp / "down" / "deeper" / "poster.txt"  # folders are created
    got = await r2.get(key, dest)
    assert await trio.Path(dest).read_bytes() == data
    assert (got.key, got.size, got.etag, got.content_type, got.metadata) == (
        key, len(data), put.etag, head.content_type, meta), got
    assert await r2.get_bytes(key) == data

    empty = await r2.put("jobs/01J/empty", b"")
    assert (empty.size, empty.created) == (0, True), empty
    info = await r2.head("jobs/01J/empty")
    assert info is not None
    assert (info.size, info.content_type, info.metadata) == (0, DEFAULT_CONTENT_TYPE, {}), info
    assert await r2.get_bytes("jobs/01J/empty") == b""


async def check_missing_objects(r2: R2, tmp: Path) -> None:
    assert await r2.head("nope/nothing") is None
    for call in (lambda: r2.get_bytes("nope/nothing"),
                 lambda: r2.get("nope/nothing", tmp / "never")):
        try:
            await call()
        except R2NotFoundError as exc:
            assert exc.error_class == "permanent"
        else:
            raise AssertionError("getting a missing object must raise R2NotFoundError")
    assert not await trio.Path(tmp / "never").exists()
    await r2.put("here", b"x")
    assert await r2.head("here/below") is None  # a key "under" an object
    try:
        await r2.get_bytes("here/below")
    except R2NotFoundError:
        pass
    else:
        raise AssertionError("a key under an object's key holds nothing")


async def check_list_by_prefix(r2: R2, tmp: Path) -> None:
    inside = [f"jobs/a/{i:03d}" for i in range(25)] + ["jobs/a/sub/deep", "jobs/a/z"]
    outside = ["jobs/ab", "jobs/b/x", "other", "jobs/a-side"]
    etags = {}
    order = inside + outside
    random.Random(7).shuffle(order)
    for key in order:
        etags[key] = (await r2.put(key, key.encode())).etag

    listed = await r2.list("jobs/a/")
    assert [i.key for i in listed] == sorted(inside), [i.key for i in listed]
    for info in listed:
        assert (info.size, info.etag) == (len(info.key.encode()), etags[info.key]), info
        assert (info.content_type, info.metadata) == ("", {}), info
        assert _recent(info), info
    assert [i.key for i in await r2.list("jobs/a")] == sorted(
        [*inside, "jobs/ab", "jobs/a-side"])
    assert [i.key for i in await r2.list("jobs/a/00")] == sorted(inside)[:10]
    assert [i.key for i in await r2.list("jobs/a/sub/")] == ["jobs/a/sub/deep"]
    assert [i.key for i in await r2.list()] == sorted(order)
    assert [i.key for i in await r2.list("")] == sorted(order)
    for nothing in ("nothing/", "jobs/c", "jobs/a/sub/deep/", "../", "/jobs", "jobs//a"):
        assert await r2.list(nothing) == [], nothing


async def check_delete(r2: R2, tmp: Path) -> None:
    await r2.put("d/x/y", b"1")
    await r2.put("d/keep", b"2")
    await r2.delete("d/x/y")
    assert await r2.head("d/x/y") is None
    assert [i.key for i in await r2.list("d/")] == ["d/keep"]
    try:
        await r2.get_bytes("d/x/y")
    except R2NotFoundError:
        pass
    else:
        raise AssertionError("a deleted object must be gone")
    await r2.delete("d/x/y")  # again: missing is fine
    await r2.delete("never/was")
    # the key's former folder is free for an object of its own
    await r2.put("d/x", b"3")
    assert await r2.get_bytes("d/x") == b"3"
    assert await r2.get_bytes("d/keep") == b"2"


async def check_overwrite_replaces(r2: R2, tmp: Path) -> None:
    """A redone step writes the same key: the second put wins entirely."""
    key = "jobs/01J/render/480p.mp4"
    first = await r2.put(key, b"first version", content_type="video/mp4",
                         metadata={"attempt": "1", "only-first": "x"})
    second = await r2.put(key, b"second, longer version", content_type="video/webm",
                          metadata={"attempt": "2"})
    assert second.created, second
    assert second.etag != first.etag, (first, second)
    head = await r2.head(key)
    assert head is not None
    assert (head.size, head.etag, head.content_type, head.metadata) == (
        len(b"second, longer version"), second.etag, "video/webm", {"attempt": "2"}), head
    assert await r2.get_bytes(key) == b"second, longer version"
    assert [i.key for i in await r2.list("jobs/01J/")] == [key]
    # the same content again: same etag, still one object
    third = await r2.put(key, b"second, longer version", content_type="video/webm")
    assert (third.etag, third.created) == (second.etag, True), third


async def check_conditional_put(r2: R2, tmp: Path) -> None:
    key = "jobs/01J/lock"
    first = await r2.put(key, b"mine", metadata={"owner": "a"}, if_none_match=True)
    assert first.created, first
    second = await r2.put(key, b"theirs", metadata={"owner": "b"}, if_none_match=True)
    assert not second.created, second
    assert (second.etag, second.size) == (first.etag, first.size), second
    assert await r2.get_bytes(key) == b"mine"
    head = await r2.head(key)
    assert head is not None
    assert head.metadata == {"owner": "a"}, head
    src = tmp / "theirs.bin"
    await trio.to_thread.run_sync(src.write_bytes, b"a file")
    assert not (await r2.put(key, src, if_none_match=True)).created
    assert await r2.get_bytes(key) == b"mine"
    # an unconditional put still overwrites; after a delete the key is free again
    assert (await r2.put(key, b"forced")).created
    await r2.delete(key)
    assert (await r2.put(key, b"again", if_none_match=True)).created
    assert await r2.get_bytes(key) == b"again"


async def _refused(what: str, call: Awaitable[object]) -> None:
    try:
        await call
    except R2KeyError as exc:
        assert exc.error_class == "permanent"
    else:
        raise AssertionError(f"{what} must raise R2KeyError")


async def check_key_rules(r2: R2, tmp: Path) -> None:
    dest = tmp / "never"
    for key, rule in INVALID_KEYS:
        what = f"a key with {rule} ({key[:40]!r})"
        await _refused(f"put of {what}", r2.put(key, b"x"))
        await _refused(f"conditional put of {what}", r2.put(key, b"x", if_none_match=True))
        await _refused(f"get of {what}", r2.get(key, dest))
        await _refused(f"get_bytes of {what}", r2.get_bytes(key))
        await _refused(f"head of {what}", r2.head(key))
        await _refused(f"delete of {what}", r2.delete(key))
        await _refused(f"presigned_url of {what}", r2.presigned_url(key, 60))
    assert await r2.list() == [], "an invalid key was stored"
    for key in ODD_KEYS:
        validate_key(key)
        data = key.encode()
        put = await r2.put(key, data)
        assert (put.key, put.created) == (key, True), put
        assert await r2.get_bytes(key) == data, key
        head = await r2.head(key)
        assert head is not None, key
        assert (head.key, head.etag) == (key, put.etag), head
    assert [i.key for i in await r2.list()] == sorted(ODD_KEYS)
    for key in ODD_KEYS:
        await r2.delete(key)
    assert await r2.list() == []


async def check_metadata_rules(r2: R2, tmp: Path) -> None:
    bad: list[dict[str, object]] = [
        {"metadata": {"Upper": "x"}},
        {"metadata": {"": "x"}},
        {"metadata": {"with space": "x"}},
        {"metadata": {"k": "line\nbreak"}},
        {"metadata": {"k": " padded"}},
        {"metadata": {"k": "é"}},
        {"metadata": {"k": "x" * 2048}},
        {"content_type": ""},
        {"content_type": "text/plain\r\nx-injected: 1"},
        {"content_type": "tëxt/plain"},
    ]
    for kwargs in bad:
        try:
            await r2.put("m", b"x", **kwargs)  # type: ignore[arg-type]
        except R2KeyError:
            raise AssertionError(f"{kwargs}: bad metadata is not a bad key") from None
        except R2PermanentError:
            pass
        else:
            raise AssertionError(f"{kwargs} must be refused")
    assert await r2.head("m") is None
    ok = {"a": "1", "b-c_d.e": "value with spaces, and ;:=/", "z9": ""}
    await r2.put("m", b"x", metadata=ok)
    info = await r2.head("m")
    assert info is not None
    assert info.metadata == ok, info


async def check_multipart_file(r2: R2, tmp: Path) -> None:
    threshold = r2.multipart_threshold_bytes
    part = threshold if threshold is not None else 5 * 1024 * 1024
    size = 2 * part + 1024 * 1024 + 123
    src = tmp / "big.bin"
    digest = await trio.to_thread.run_sync(_write_file, src, size, 1)
    before = r2.statistics()
    put = await r2.put("jobs/01J/big.bin", src, content_type="video/mp4",
                       metadata={"parts": "3"})
    after = r2.statistics()
    assert (put.created, put.size) == (True, size), put
    expected_parts = 0 if threshold is None else -(-size // threshold)
    assert expected_parts in (0, 3)
    assert after.parts_uploaded - before.parts_uploaded == expected_parts, after
    assert after.multipart_uploads - before.multipart_uploads == (1 if expected_parts else 0)
    assert after.bytes_up - before.bytes_up == size, (before, after)
    head = await r2.head("jobs/01J/big.bin")
    assert head is not None
    assert (head.size, head.etag, head.content_type, head.metadata) == (
        size, put.etag, "video/mp4", {"parts": "3"}), head
    dest = tmp / "back" / "big.bin"
    got = await r2.get("jobs/01J/big.bin", dest)
    assert (got.size, got.etag) == (size, put.etag), got
    assert await trio.to_thread.run_sync(_sha256_file, dest) == digest
    assert r2.statistics().bytes_down - after.bytes_down == size
    # exactly at the threshold: one request, no parts
    small = tmp / "small.bin"
    await trio.to_thread.run_sync(_write_file, small, part, 2)
    mark = r2.statistics()
    one = await r2.put("jobs/01J/small.bin", small)
    assert one.size == part
    assert r2.statistics().parts_uploaded == mark.parts_uploaded
    # a conditional put of a large file onto a taken key uploads nothing
    mark = r2.statistics()
    again = await r2.put("jobs/01J/big.bin", small, if_none_match=True)
    assert (again.created, again.etag, again.size) == (False, put.etag, size), again
    taken = await r2.put("jobs/01J/big.bin", src, if_none_match=True)
    assert (taken.created, taken.etag) == (False, put.etag), taken
    assert r2.statistics().bytes_up == mark.bytes_up


async def check_get_is_atomic(r2: R2, tmp: Path) -> None:
    await r2.put("g/new", b"new content")
    folder = tmp / "dest"
    await trio.Path(folder).mkdir()
    dest = folder / "file"
    await trio.Path(dest).write_bytes(b"old content that is longer")
    await r2.get("g/new", dest)
    assert await trio.Path(dest).read_bytes() == b"new content"
    try:
        await r2.get("g/missing", dest)
    except R2NotFoundError:
        pass
    else:
        raise AssertionError("missing object")
    assert await trio.Path(dest).read_bytes() == b"new content"  # untouched
    names = sorted(await trio.to_thread.run_sync(os.listdir, folder))  # no temporary files
    assert names == ["file"], names


async def check_put_source_errors(r2: R2, tmp: Path) -> None:
    try:
        await r2.put("s/x", tmp / "does-not-exist")
    except R2KeyError:
        raise AssertionError("a missing source is not a bad key") from None
    except R2PermanentError as exc:
        assert "does-not-exist" in str(exc), exc
    else:
        raise AssertionError("a put of a missing file must raise R2PermanentError")
    assert await r2.head("s/x") is None


async def check_presigned_url(r2: R2, tmp: Path) -> None:
    data = bytes(range(256)) * 4
    await r2.put("p/file.bin", data, content_type="application/x-test")
    url = await r2.presigned_url("p/file.bin", 60)
    if url is None:
        return  # the backend has no URLs
    async with httpx2.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert response.content == data


async def check_statistics(r2: R2, tmp: Path) -> None:
    s0 = r2.statistics()
    assert s0.backend == r2.backend
    await r2.put("st/a", b"12345")
    await r2.get_bytes("st/a")
    assert await r2.head("st/none") is None
    s1 = r2.statistics()
    assert s1.requests >= s0.requests + 3, (s0, s1)
    assert (s1.bytes_up, s1.bytes_down) == (s0.bytes_up + 5, s0.bytes_down + 5), s1
    assert s1.errors == s0.errors, "a head of a missing key is an answer, not an error"
    try:
        await r2.get_bytes("st/none")
    except R2NotFoundError:
        pass
    assert r2.statistics().errors == s1.errors + 1


async def roundtrip_key(r2: R2, key: str) -> None:
    """The property for arbitrary ``key``: either every call refuses it with
    R2KeyError (and validate_key agrees), or it round-trips exactly."""
    try:
        validate_key(key)
    except R2KeyError:
        valid = False
    else:
        valid = True
    data = key.encode("utf-8", "surrogatepass")[:64] + b"!"
    try:
        put = await r2.put(key, data)
    except R2KeyError:
        assert not valid, f"a valid key was refused: {key!r}"
        for call in (lambda: r2.head(key), lambda: r2.get_bytes(key), lambda: r2.delete(key)):
            try:
                await call()
            except R2KeyError:
                pass
            else:
                raise AssertionError(f"an invalid key was accepted: {key!r}") from None
        return
    assert valid, f"an invalid key was stored: {key!r}"
    assert (put.key, put.size) == (key, len(data)), put
    assert await r2.get_bytes(key) == data
    head = await r2.head(key)
    assert head is not None
    assert (head.key, head.etag) == (key, put.etag), head
    listed = [i.key for i in await r2.list(key)]
    assert key in listed, (key, listed)
    await r2.delete(key)
    assert await r2.head(key) is None


CHECKS: list[Check] = [
    check_put_get_head_round_trip,
    check_missing_objects,
    check_list_by_prefix,
    check_delete,
    check_overwrite_replaces,
    check_conditional_put,
    check_key_rules,
    check_metadata_rules,
    check_multipart_file,
    check_get_is_atomic,
    check_put_source_errors,
    check_presigned_url,
    check_statistics,
]
