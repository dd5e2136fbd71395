"""The HTTP API over a real port: routes, statuses, tokens, limits, and a fuzz
that no request a client can send gets a 500.

Rules:

* Each test starts the real server in-process with :func:`serve_api` on
  ``127.0.0.1:0`` (the port it reports is the one used) over a real SQLite
  file, and talks to it with an ``httpx2.AsyncClient`` over TCP. No daemon
  runs: submissions and reads go through :class:`deepmox.client.Client`, so
  jobs stay where the API put them.
* Nothing waits on the wall clock; every request is awaited to its answer.
* Tokens are made-up values set with ``monkeypatch`` before the server starts
  (the app reads them once, at start), and no test lets a token value appear
  in a response body or a log record.
* Every 4xx must carry the JSON error shape ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepmox.actors.registry import Registry
from deepmox.api import Health, serve_api
from deepmox.bindings.d1 import SqliteD1
from deepmox.bindings.d1.migrate import migrate
from deepmox.client import Client
from deepmox.config import Config, D1Config, ServerConfig
from deepmox.errors import ConfigError, D1RateLimitedError, D1UnavailableError

#: made up, and distinctive enough to be searched for in bodies and logs
WRITE_TOKEN = "write-token-made-up-7f3a"
READ_TOKEN = "read-token-made-up-91bc"
TOKEN_ENV = "DEEPMOX_TOKEN"
READ_TOKEN_ENV = "DEEPMOX_READ_TOKEN"
LIMIT = ServerConfig().max_body_bytes


@functools.cache
def registry() -> Registry:
    return Registry.load()


@dataclass
class Api:
    http: httpx2.AsyncClient
    client: Client
    bound: str
    health: list[Health] = field(default_factory=lambda: [Health(ok=True)])

    async def submit(self, kind: str = "noop", payload: Any = None, *,
                     key: str | None = None, **headers: str) -> httpx2.Response:
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.http.post("/v1/jobs", headers=headers,
                                    json={"kind": kind, "payload": payload or {}})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_type(response: httpx2.Response) -> str:
    """The error's type, after checking the body has exactly the error shape."""
    body = response.json()
    assert list(body) == ["error"], body
    detail = body["error"]
    assert isinstance(detail["type"], str)
    assert isinstance(detail["message"], str)
    assert set(detail) <= {"type", "message", "error_class"}
    return str(detail["type"])


@asynccontextmanager
async def open_client(tmp_path: Path, listen: str = "127.0.0.1:0"
                      ) -> AsyncIterator[tuple[Config, Client]]:
    """A configuration and a client over ``tmp_path/deepmox.db``, migrated."""
    cfg = Config(d1=D1Config(path=str(tmp_path / "deepmox.db")),
                 server=ServerConfig(listen=listen))
    d1 = SqliteD1(cfg.d1.path)
    try:
        await migrate(d1, 1_800_000_000.0)
        yield cfg, Client(cfg, d1, registry(), node="http-test")
    finally:
        await d1.aclose()


@asynccontextmanager
async def open_api(tmp_path: Path, *, listen: str = "127.0.0.1:0") -> AsyncIterator[Api]:
    """The server on its own port, and an HTTP client for it."""
    async with open_client(tmp_path, listen) as (cfg, client), trio.open_nursery() as nursery:
        health = [Health(ok=True)]
        bound = await nursery.start(functools.partial(
            serve_api, cfg, client, health=lambda: health[0]))
        port = bound.rsplit(":", 1)[1]
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield Api(http, client, bound, health)
        nursery.cancel_scope.cancel()


async def refusal(tmp_path: Path, listen: str) -> str:
    """The ConfigError ``serve_api`` raises, before listening, for ``listen``."""
    async with open_client(tmp_path, listen) as (cfg, client):
        with pytest.raises(ConfigError) as info:
            await serve_api(cfg, client, health=lambda: Health(ok=True))
    return str(info.value)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with open_api(tmp_path) as a:
        yield a


# -- starting -------------------------------------------------------------------------

async def test_reports_the_port_it_bound(api: Api) -> None:
    host, port = api.bound.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    response = await api.http.get("/healthz")
    assert response.status_code == 200


async def test_refuses_a_public_address_without_a_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(READ_TOKEN_ENV, READ_TOKEN)  # a read token alone is not enough
    message = await refusal(tmp_path, "0.0.0.0:0")
    assert "refusing to listen on 0.0.0.0:0 without a token" in message
    assert "$DEEPMOX_TOKEN" in message
    assert READ_TOKEN not in message


async def test_a_public_address_with_a_token_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, WRITE_TOKEN)
    async with open_api(tmp_path, listen="0.0.0.0:0") as a:
        assert a.bound.startswith("0.0.0.0:")
        assert (await a.http.get("/v1/jobs")).status_code == 401
        assert (await a.http.get("/v1/jobs", headers=auth(WRITE_TOKEN))).status_code == 200


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "::1:80", "127.0.0.1:"])
async def test_a_malformed_listen_is_a_config_error(tmp_path: Path, listen: str) -> None:
    assert "- at `$.server.listen`" in await refusal(tmp_path, listen)


async def test_an_address_in_use_is_a_config_error(api: Api, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    assert f"cannot listen on {api.bound}" in await refusal(tmp_path / "other", api.bound)


# -- jobs -----------------------------------------------------------------------------

async def test_submit_then_read_it_back(api: Api) -> None:
    response = await api.submit("noop", {"value": 42})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["content-type"] == "application/json"
    assert (job["kind"], job["state"], job["payload"]) == ("noop", "pending", {"value": 42})
    got = await api.http.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json() == job
    events = await api.http.get(f"/v1/jobs/{job['id']}/events")
    assert events.status_code == 200
    assert [e["type"] for e in events.json()] == ["submitted"]


async def test_priority_and_max_attempts_are_taken(api: Api) -> None:
    response = await api.http.post("/v1/jobs", json={
        "kind": "sleep", "payload": {"seconds": 1}, "priority": 7, "max_attempts": 2})
    assert response.status_code == 201
    assert (response.json()["priority"], response.json()["max_attempts"]) == (7, 2)


async def test_a_repeated_idempotency_key_returns_the_first_job(api: Api) -> None:
    first = await api.submit("noop", {"value": 1}, key="order-42")
    again = await api.submit("sleep", {"seconds": 3}, key="order-42")
    other = await api.submit("noop", {"value": 1}, key="order-43")
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json() == first.json()
    assert "location" not in again.headers
    assert other.json()["id"] != first.json()["id"]


async def test_unknown_job_is_404(api: Api) -> None:
    for path in ("/v1/jobs/01NOSUCHJOB0000000000000000", "/v1/jobs/x/events",
                 "/v1/jobs/" + "y" * 500):
        response = await api.http.get(path)
        assert response.status_code == 404, path
        assert error_type(response) == "not_found"
    for verb in ("cancel", "retry"):
        response = await api.http.post(f"/v1/jobs/nope/{verb}")
        assert response.status_code == 404
        assert "no job with id 'nope'" in response.json()["error"]["message"]


async def test_list_filters_and_orders_newest_first(api: Api) -> None:
    ids = [(await api.submit(kind, payload)).json()["id"]
           for kind, payload in [("noop", {}), ("sleep", {"seconds": 1}), ("noop", {}),
                                 ("sleep", {"seconds": 2}), ("noop", {})]]
    await api.http.post(f"/v1/jobs/{ids[0]}/cancel")

    async def listed(query: str) -> list[str]:
        response = await api.http.get(f"/v1/jobs{query}")
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()]

    assert await listed("") == ids[::-1]
    assert await listed("?kind=sleep") == [ids[3], ids[1]]
    assert await listed("?state=cancelled") == [ids[0]]
    assert await listed("?state=pending&kind=noop") == [ids[4], ids[2]]
    assert await listed("?state=completed") == []
    assert await listed("?limit=2") == ids[:2:-1]
    assert await listed("?limit=0") == ids[::-1]
    assert await listed("?state=&kind=&limit=") == ids[::-1]


@pytest.mark.parametrize("query", [
    "?state=done", "?limit=-1", "?limit=ten", "?limit=1e3", "?limit=9999999999",
    "?limit=1&limit=2", "?page=2", "?state=%ff",
])
async def test_bad_list_queries_are_400(api: Api, query: str) -> None:
    response = await api.http.get(f"/v1/jobs{query}")
    assert response.status_code == 400
    assert error_type(response) == "invalid_request"


async def test_cancel_and_retry_follow_the_job_state(api: Api) -> None:
    job_id = (await api.submit()).json()["id"]
    retried_pending = await api.http.post(f"/v1/jobs/{job_id}/retry")
    assert retried_pending.status_code == 409
    assert error_type(retried_pending) == "conflict"
    assert "it is pending" in retried_pending.json()["error"]["message"]

    cancelled = await api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = await api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert error_type(again) == "conflict"

    retried = await api.http.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200
    assert retried.json()["state"] == "pending"
    events = (await api.http.get(f"/v1/jobs/{job_id}/events")).json()
    assert [e["type"] for e in events] == ["submitted", "cancelled", "retried"]


# -- bad requests ---------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "kind"), [
    (b"", 400, "malformed_json"),
    (b"{", 400, "malformed_json"),
    (b"\xff\xfe", 400, "malformed_json"),
    # bad UTF-8 inside a string: msgspec raises UnicodeDecodeError there (was a 500)
    (b'{"kind": "\xc3\x28"}', 400, "malformed_json"),
    (b'{"kind": "noop", "payload": {"value": "\xed\xa0\x80"}}', 400, "malformed_json"),
    (b"[" * 100_000, 400, "invalid_request"),
    (b'{"kind": "noop", "payload": ' + b"[" * 100_000, 400, "malformed_json"),
    (b'{"kind": "noop", "payload": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
     400, "malformed_json"),
    (b"[]", 400, "invalid_request"),
    (b'"noop"', 400, "invalid_request"),
    (b"{}", 400, "invalid_request"),
    (b'{"kind": 1}', 400, "invalid_request"),
    (b'{"kind": "noop", "colour": "red"}', 400, "invalid_request"),
    (b'{"kind": "noop", "priority": 10000000}', 400, "invalid_request"),
    (b'{"kind": "noop", "max_attempts": 0}', 400, "invalid_request"),
    (b'{"kind": "nope"}', 422, "refused"),
    (b'{"kind": "noop", "payload": {"colour": "red"}}', 422, "refused"),
    (b'{"kind": "noop", "payload": []}', 422, "refused"),
    (b'{"kind": "sleep", "payload": {"seconds": -1}}', 422, "refused"),
])
async def test_bad_submissions(api: Api, body: bytes, status: int, kind: str) -> None:
    response = await api.http.post("/v1/jobs", content=body)
    assert response.status_code == status, response.text
    assert error_type(response) == kind
    listed = await api.http.get("/v1/jobs")
    assert listed.json() == []


async def test_refusals_say_why(api: Api) -> None:
    response = await api.http.post("/v1/jobs", json={"kind": "nope"})
    assert "unknown job kind 'nope' (known: " in response.json()["error"]["message"]
    response = await api.http.post("/v1/jobs", json={"kind": "noop", "colour": "red"})
    assert "colour" in response.json()["error"]["message"]


@pytest.mark.parametrize("key", ["", "k" * 256, "naïve"])
async def test_bad_idempotency_keys_are_400(api: Api, key: str) -> None:
    response = await api.http.post("/v1/jobs", json={"kind": "noop"},
                                   headers=[("Idempotency-Key", key.encode())])
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["message"]


async def test_a_repeated_idempotency_key_header_is_400(api: Api) -> None:
    response = await api.http.post("/v1/jobs", json={"kind": "noop"},
                                   headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert response.status_code == 400


async def test_a_body_at_the_limit_is_read(api: Api) -> None:
    head, tail = b'{"kind": "noop", "payload": {"value": "', b'"}}'
    body = head + b"x" * (LIMIT - len(head) - len(tail)) + tail
    assert len(body) == LIMIT
    response = await api.http.post("/v1/jobs", content=body)
    assert response.status_code == 201


async def test_a_body_just_over_the_limit_is_413(api: Api) -> None:
    body = b" " * (LIMIT + 1)
    response = await api.http.post("/v1/jobs", content=body)
    assert response.status_code == 413
    assert error_type(response) == "payload_too_large"
    assert f"{LIMIT:,}" in response.json()["error"]["message"]
    # the rest was read and dropped, so the connection goes on
    assert "connection" not in response.headers
    assert (await api.submit()).status_code == 201


async def test_a_huge_announced_body_is_refused_before_it_is_sent(api: Api) -> None:
    """Nothing of it is read: the answer comes at once and the connection closes."""
    host, port = api.bound.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n"
                              b"Content-Length: 10000000000\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["type"] == "payload_too_large"


async def test_a_streamed_body_over_the_limit_is_413(api: Api) -> None:
    """No Content-Length (chunked): the limit is enforced while reading."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (LIMIT // 4)
        yield b" "

    response = await api.http.post("/v1/jobs", content=chunks())
    assert response.status_code == 413
    assert error_type(response) == "payload_too_large"


@pytest.mark.parametrize("path", ["/metrics", "/v1/feed", "/", "/v1/jobs/", "/v1",
                                  "/v1/jobs//cancel", "/v1/jobs/x/cancel/more"])
async def test_unknown_routes_are_404(api: Api, path: str) -> None:
    response = await api.http.get(path)
    assert response.status_code == 404
    assert error_type(response) == "not_found"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/v1/jobs", "GET, POST"),
    ("PUT", "/v1/jobs/abc", "GET"),
    ("GET", "/v1/jobs/abc/cancel", "POST"),
    ("POST", "/healthz", "GET"),
])
async def test_wrong_methods_are_405(api: Api, method: str, path: str, allow: str) -> None:
    response = await api.http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert error_type(response) == "method_not_allowed"


async def test_head_is_get_without_a_body(api: Api) -> None:
    response = await api.http.head("/v1/jobs")
    assert response.status_code == 200
    assert response.content == b""


# -- the system of record, and server faults ------------------------------------------

async def test_d1_errors_are_503_with_their_class(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(job_id: str) -> None:
        raise D1UnavailableError("sqlite: database is locked")

    async def throttled(*args: Any, **kwargs: Any) -> None:
        raise D1RateLimitedError("D1 is throttling", upstream="d1", retry_after=3.0)

    monkeypatch.setattr(api.client, "get", unavailable)
    monkeypatch.setattr(api.client, "submit", throttled)
    response = await api.http.get("/v1/jobs/01ANYTHING")
    assert response.status_code == 503
    assert response.json() == {"error": {"type": "D1UnavailableError",
                                         "message": "sqlite: database is locked",
                                         "error_class": "transient"}}
    response = await api.submit()
    assert response.status_code == 503
    assert error_type(response) == "D1RateLimitedError"
    assert response.json()["error"]["error_class"] == "rate_limited"
    assert response.headers["retry-after"] == "3"


async def test_a_server_fault_is_a_logged_500_that_says_nothing(
        api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(**kwargs: Any) -> None:
        raise RuntimeError("the secret internals of a bug")

    monkeypatch.setattr(api.client, "list_jobs", broken)
    with caplog.at_level(logging.ERROR, logger="deepmox.api"):
        response = await api.http.get("/v1/jobs")
    assert response.status_code == 500
    assert error_type(response) == "internal"
    assert "secret internals" not in response.text
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
    # the server goes on
    monkeypatch.undo()
    assert (await api.http.get("/v1/jobs")).status_code == 200


# -- health ---------------------------------------------------------------------------

async def test_healthz_follows_the_daemon(api: Api) -> None:
    response = await api.http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    api.health[0] = Health(ok=False, reason="draining")
    response = await api.http.get("/healthz")
    assert (response.status_code, response.json()) == (503, {"ok": False, "reason": "draining"})


# -- tokens ---------------------------------------------------------------------------

async def test_without_tokens_everything_is_open(api: Api) -> None:
    assert (await api.submit()).status_code == 201
    assert (await api.http.get("/v1/jobs", headers=auth("anything"))).status_code == 200


async def test_the_write_token_opens_every_route(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(TOKEN_ENV, WRITE_TOKEN)
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    async with open_api(tmp_path) as a:
        missing = await a.submit()
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert error_type(missing) == "unauthorized"
        for headers in (auth("not-the-token"), auth(WRITE_TOKEN + "x"), auth(WRITE_TOKEN[:-1])):
            wrong = await a.submit(**headers)
            assert wrong.status_code == 403
            assert error_type(wrong) == "forbidden"
            bodies.append(wrong.text)
        other_scheme = await a.http.get("/v1/jobs",
                                        headers={"Authorization": f"Basic {WRITE_TOKEN}"})
        assert other_scheme.status_code == 401
        # unknown routes do not tell an anonymous client what exists
        assert (await a.http.get("/metrics")).status_code == 401
        assert (await a.http.get("/metrics", headers=auth(WRITE_TOKEN))).status_code == 404

        created = await a.submit(**auth(WRITE_TOKEN))
        assert created.status_code == 201
        job_id = created.json()["id"]
        for method, path, status in [("GET", f"/v1/jobs/{job_id}", 200),
                                     ("GET", "/v1/jobs", 200),
                                     ("GET", f"/v1/jobs/{job_id}/events", 200),
                                     ("POST", f"/v1/jobs/{job_id}/cancel", 200),
                                     ("POST", f"/v1/jobs/{job_id}/retry", 200)]:
            response = await a.http.request(method, path, headers=auth(WRITE_TOKEN))
            assert response.status_code == status, (method, path, response.text)
            bodies.append(response.text)
            assert (await a.http.request(method, path)).status_code == 401
        # /healthz never needs one, and ignores a wrong one
        assert (await a.http.get("/healthz")).status_code == 200
        assert (await a.http.get("/healthz", headers=auth("wrong"))).status_code == 200
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert WRITE_TOKEN not in logged
    assert not any(WRITE_TOKEN in body for body in bodies)


async def test_the_read_token_opens_reads_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, WRITE_TOKEN)
    monkeypatch.setenv(READ_TOKEN_ENV, READ_TOKEN)
    async with open_api(tmp_path) as a:
        job_id = (await a.submit(**auth(WRITE_TOKEN))).json()["id"]
        for path in (f"/v1/jobs/{job_id}", "/v1/jobs", f"/v1/jobs/{job_id}/events"):
            assert (await a.http.get(path, headers=auth(READ_TOKEN))).status_code == 200
        for path in ("/v1/jobs", f"/v1/jobs/{job_id}/cancel", f"/v1/jobs/{job_id}/retry"):
            response = await a.http.post(path, headers=auth(READ_TOKEN), json={"kind": "noop"})
            assert response.status_code == 403, path
            assert "read token" in response.json()["error"]["message"]
            assert READ_TOKEN not in response.text
        assert (await a.http.get("/v1/jobs", headers=auth("wrong"))).status_code == 403
        assert (await a.http.get(f"/v1/jobs/{job_id}")).status_code == 401


async def test_a_read_token_alone_closes_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(READ_TOKEN_ENV, READ_TOKEN)
    async with open_api(tmp_path) as a:
        assert (await a.http.get("/v1/jobs")).status_code == 401
        assert (await a.http.get("/v1/jobs", headers=auth(READ_TOKEN))).status_code == 200
        assert (await a.submit()).status_code == 401
        assert (await a.submit(**auth(READ_TOKEN))).status_code == 403


# -- the fuzz -------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
_specs = st.fixed_dictionaries(
    {"kind": st.sampled_from(["noop", "sleep", "fail", "video.transcode", "nope"]) | st.text()},
    optional={"payload": _json, "priority": st.integers(), "max_attempts": st.integers(),
              "extra": _json})
#: specs that may well be accepted
_good_specs = st.one_of(
    st.fixed_dictionaries({"kind": st.just("noop")},
                          optional={"payload": st.fixed_dictionaries({"value": _json}),
                                    "priority": st.integers(-5, 5)}),
    st.fixed_dictionaries({"kind": st.just("sleep"), "payload": st.fixed_dictionaries(
        {}, optional={"seconds": st.floats(-1, 5), "steps": st.integers(0, 3)})}),
)
_bodies = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    _specs.map(lambda v: json.dumps(v).encode()),
    _good_specs.map(lambda v: json.dumps(v).encode()),
)
_segment = st.text(max_size=12).map(lambda s: quote(s, safe=""))
_paths = st.builds(
    lambda base, rest: base + "".join("/" + s for s in rest),
    st.sampled_from(["", "/v1/jobs", "/v1/jobs/01HZZZZZZZZZZZZZZZZZZZZZZZ", "/healthz",
                     "/v1", "/metrics", "/v1/feed"]),
    st.lists(st.one_of(_segment, st.sampled_from(["cancel", "retry", "events"])), max_size=3),
).map(lambda p: p or "/")
_queries = st.one_of(
    st.just(""),
    st.dictionaries(st.sampled_from(["state", "kind", "limit", "page"]) | st.text(max_size=5),
                    st.text(max_size=10), max_size=3).map(
        lambda d: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items())),
)
_visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
_names = st.sampled_from(["Idempotency-Key", "Content-Type", "Authorization", "Content-Encoding",
                          "X-Anything", "Accept", "Expect-Nothing"])
_headers = st.dictionaries(_names, _visible, max_size=3)
#: mostly the write token, so that most requests get past the door
_authorization = st.sampled_from([f"Bearer {WRITE_TOKEN}"] * 8 + [
    f"Bearer {READ_TOKEN}", None, "Bearer wrong", "Basic eA==", "Bearer"])
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
#: requests aimed at the jobs routes, and requests anywhere
_aimed = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/jobs")),
    st.tuples(st.just("GET"), st.just("/v1/jobs")),
    st.tuples(st.sampled_from(["GET", "POST"]), st.builds(
        lambda job, verb: f"/v1/jobs/{job}{verb}",
        _segment | st.just("01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        st.sampled_from(["", "/cancel", "/retry", "/events"]))),
)
_requests = st.one_of(_aimed, _aimed, st.tuples(_methods, _paths))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(request=_requests, query=_queries, headers=_headers, authorization=_authorization,
       body=_bodies)
async def test_no_request_gets_a_500(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: tuple[str, str],
        query: str, headers: dict[str, str], authorization: str | None, body: bytes) -> None:
    method, path = request
    monkeypatch.setenv(TOKEN_ENV, WRITE_TOKEN)
    monkeypatch.setenv(READ_TOKEN_ENV, READ_TOKEN)
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    async with open_api(tmp_path) as a:
        response = await a.http.request(method, path + query, headers=headers,
                                        content=body if method not in ("GET", "HEAD") else None)
    assert response.status_code < 500, (response.status_code, response.text)
    if 400 <= response.status_code < 500 and method != "HEAD":
        error_type(response)
    assert WRITE_TOKEN not in response.text
    assert READ_TOKEN not in response.text
