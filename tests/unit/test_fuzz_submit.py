"""Submissions refused before anything is written: :meth:`Client.prepare` on
hostile specs, and the CLI's client talking to something that is not a
deepmox daemon.

Rules: ``prepare`` is pure (no database is touched: the client's D1 is
never called); the only exception allowed out of it is RefusedError. The
"daemon" that answers garbage is a trio TCP listener on 127.0.0.1:0 in the
test's own nursery. Nothing sleeps.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmox import remote
from deepmox.actors.registry import Registry
from deepmox.client import Client, JobSpec, valid_idempotency_key
from deepmox.config import Config, D1Config, ServerConfig
from deepmox.errors import DeepmoxError, RefusedError

REGISTRY = Registry.load()


class _NoD1:
    backend = "sqlite"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"prepare must not touch D1 ({name})")


CLIENT = Client(Config(), _NoD1(), REGISTRY)  # type: ignore[arg-type]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10)
_fields = st.sampled_from(["value", "seconds", "steps", "error_class", "times", "retry_after",
                           "upstream", "source", "renditions", "thumbnails", "x"])
_payloads = _json | st.dictionaries(_fields, _json, max_size=4)
_keys = st.none() | st.text(max_size=300) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=256)


@settings(max_examples=500)
@given(kind=st.sampled_from([*REGISTRY.names(), "nope", ""]), payload=_payloads, key=_keys)
def test_prepare_refuses_or_prepares(kind: str, payload: Any, key: str | None) -> None:
    spec = JobSpec(kind=kind, payload=payload)
    try:
        job = CLIENT.prepare(spec, key)
    except RefusedError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        return
    assert REGISTRY.get(kind) is not None
    assert key is None or valid_idempotency_key(key)
    # what is stored decodes again for its kind: the actor will read it
    registered = REGISTRY.get(kind)
    assert registered is not None
    registered.decode_json(job.payload)


@pytest.mark.parametrize("source", [
    "file:///srv/media/a\x00b.mp4", "https://example.com/a\nb", "r2://jobs/x\x7f",
])
def test_a_source_with_control_characters_is_refused(source: str) -> None:
    with pytest.raises(RefusedError, match="source"):
        CLIENT.prepare(JobSpec(kind="video.transcode", payload={"source": source}))


async def _answer(body: bytes, stream: trio.SocketStream) -> None:
    async with stream:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n"
                              b"connection: close\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("body", [b"<html>hello</html>", b'{"id": 1}', b'"\xff"', b""])
async def test_submit_to_something_that_is_not_a_daemon(body: bytes) -> None:
    # another service on [server] listen answered 200: the CLI printed a traceback
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(
            trio.serve_tcp, functools.partial(_answer, body), 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        cfg = Config(d1=D1Config(path="unused.db"), server=ServerConfig(
            listen=f"127.0.0.1:{port}"))
        with pytest.raises(DeepmoxError, match="not a job"):
            await remote.submit(cfg, msgspec.convert({"kind": "noop"}, JobSpec), None)
        nursery.cancel_scope.cancel()
