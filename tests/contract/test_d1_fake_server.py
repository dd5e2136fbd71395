"""Contract tests of the fake Cloudflare D1 REST API (``tests/fakes/d1_server.py``).

Rules of this file:

* The fake is started in process with ``serve_d1`` in pytest-trio's ``nursery``
  fixture, on a fresh SQLite file under ``tmp_path``, and spoken to over real
  loopback HTTP with ``httpx2.AsyncClient`` -- the same way the D1 REST binding
  will talk to Cloudflare.  Only the process-mode test starts a subprocess.
* No waiting on the wall clock: never ``time.sleep`` or ``trio.sleep`` to let
  something happen.  Time-dependent behaviour (the rate-limit window) runs on
  pytest-trio's ``mock_clock`` and is moved with ``mock_clock.jump``; the only
  wall-clock bound is a ``fail_after`` guard against a hung subprocess.
* Every client and server is closed by the fixture or test that opened it
  (pytest runs with ``filterwarnings = error``; a leak is a ResourceWarning).
* Assertions pin the wire format a client sees (status, headers, envelope),
  not the fake's internals; ``D1Fake.stats()`` and ``inject()`` are the only
  back doors, and each has its HTTP twin under ``/__control/`` tested here too.
* Nothing here imports ``deepmox``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
import trio.testing

from tests.fakes.d1_server import FAULTS, D1Fake, serve_d1

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "fakes" / "d1_server.py"
META_KEYS = {
    "changed_db",
    "changes",
    "duration",
    "last_row_id",
    "rows_read",
    "rows_written",
    "size_after",
    "served_by_primary",
    "served_by_region",
}


@pytest.fixture
async def d1(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[D1Fake]:
    fake = await serve_d1(nursery, db_path=tmp_path / "d1.sqlite")
    yield fake
    await fake.shutdown()


@pytest.fixture
async def client(d1: D1Fake) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(headers=AUTH, timeout=30.0) as c:
        yield c


async def post(client: httpx2.AsyncClient, url: str, body: Any) -> httpx2.Response:
    return await client.post(url, json=body)


async def setup_table(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    r = await post(
        client,
        d1.query_url,
        {"sql": "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, f REAL, b BLOB)"},
    )
    assert r.status_code == 200, r.text


def assert_ok_envelope(body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    assert len(body["result"]) == n
    for entry in body["result"]:
        assert entry["success"] is True
        assert set(entry["meta"]) == META_KEYS
        assert entry["meta"]["served_by_primary"] is True
        assert isinstance(entry["meta"]["duration"], float)
    return body["result"]  # type: ignore[no-any-return]


def assert_error(r: httpx2.Response, status: int, code: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["success"] is False
    assert body["messages"] == []
    assert len(body["errors"]) == 1
    assert body["errors"][0]["code"] == code
    return body["errors"][0]["message"]  # type: ignore[no-any-return]


# -- queries -------------------------------------------------------------------


async def test_query_returns_rows_as_objects(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.query_url,
        {"sql": "INSERT INTO t (k, v, f, b) VALUES (?, ?, ?, x'0aff')", "params": ["a", 7, 1.5]},
    )
    (insert,) = assert_ok_envelope(r.json(), 1)
    assert insert["results"] == []
    assert insert["meta"]["changes"] == 1
    assert insert["meta"]["changed_db"] is True
    assert insert["meta"]["last_row_id"] == 1
    assert insert["meta"]["rows_written"] == 1

    r = await post(client, d1.query_url, {"sql": "SELECT k, v, f, b, NULL AS n FROM t"})
    assert r.status_code == 200
    (select,) = assert_ok_envelope(r.json(), 1)
    assert select["results"] == [{"k": "a", "v": 7, "f": 1.5, "b": [10, 255], "n": None}]
    assert select["meta"]["changes"] == 0
    assert select["meta"]["changed_db"] is False
    assert select["meta"]["rows_read"] == 1
    assert select["meta"]["size_after"] > 0


async def test_raw_returns_columns_and_rows(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.raw_url,
        {
            "batch": [
                {"sql": "INSERT INTO t (k, v) VALUES (?, ?)", "params": [k, v]}
                for k, v in [("a", 1), ("b", 2)]
            ]
        },
    )
    assert r.status_code == 200, r.text
    r = await post(
        client, d1.raw_url, {"sql": "SELECT k, v FROM t WHERE v >= ? ORDER BY k", "params": [1]}
    )
    (entry,) = assert_ok_envelope(r.json(), 1)
    assert entry["results"] == {"columns": ["k", "v"], "rows": [["a", 1], ["b", 2]]}

    r = await post(client, d1.raw_url, {"sql": "SELECT k FROM t WHERE v > 99"})
    (entry,) = assert_ok_envelope(r.json(), 1)
    assert entry["results"] == {"columns": ["k"], "rows": []}


async def test_batch_insert_then_select(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.query_url,
        {
            "batch": [
                {"sql": "INSERT INTO t (k, v) VALUES (?, ?)", "params": ["x", 42]},
                {"sql": "SELECT k, v FROM t WHERE k = ?", "params": ["x"]},
            ]
        },
    )
    assert r.status_code == 200, r.text
    insert, select = assert_ok_envelope(r.json(), 2)
    assert insert["meta"]["changes"] == 1
    assert select["results"] == [{"k": "x", "v": 42}]


async def test_multi_statement_sql_string(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    r = await post(
        client,
        d1.query_url,
        {
            "sql": (
                "CREATE TABLE m (s TEXT);\n"
                "INSERT INTO m VALUES ('semi;colon');  -- a comment; with a semicolon\n"
                "INSERT INTO m VALUES ('two');\n"
                "SELECT s FROM m ORDER BY rowid;\n"
            )
        },
    )
    assert r.status_code == 200, r.text
    create, first, second, select = assert_ok_envelope(r.json(), 4)
    assert create["meta"]["changed_db"] is True
    assert first["meta"]["changes"] == second["meta"]["changes"] == 1
    assert select["results"] == [{"s": "semi;colon"}, {"s": "two"}]


async def test_params_with_several_statements_are_refused(
    client: httpx2.AsyncClient, d1: D1Fake
) -> None:
    r = await post(client, d1.query_url, {"sql": "SELECT ?; SELECT ?", "params": [1]})
    assert_error(r, 400, 7400)


# -- atomicity and SQL errors ------------------------------------------------------


async def test_batch_rolls_back_when_a_statement_fails(
    client: httpx2.AsyncClient, d1: D1Fake
) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.query_url,
        {
            "batch": [
                {"sql": "INSERT INTO t (k, v) VALUES (?, ?)", "params": ["gone", 1]},
                {"sql": "SELEC k FROM t"},
            ]
        },
    )
    message = assert_error(r, 400, 7500)
    assert r.json()["result"] == []
    assert message.endswith(": SQLITE_ERROR")
    assert message.startswith('near "SELEC": syntax error')

    r = await post(client, d1.query_url, {"sql": "SELECT COUNT(*) AS n FROM t"})
    (entry,) = assert_ok_envelope(r.json(), 1)
    assert entry["results"] == [{"n": 0}]


async def test_multi_statement_string_is_atomic(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.query_url,
        {"sql": "INSERT INTO t (k) VALUES ('a'); INSERT INTO t (k) VALUES ('a')"},
    )
    message = assert_error(r, 400, 7500)
    assert message == "UNIQUE constraint failed: t.k: SQLITE_CONSTRAINT"
    r = await post(client, d1.raw_url, {"sql": "SELECT COUNT(*) FROM t"})
    (entry,) = assert_ok_envelope(r.json(), 1)
    assert entry["results"]["rows"] == [[0]]


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA table_info(t)",
        "  pragma journal_mode = DELETE",
        "BEGIN",
        "commit",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE s",
        "-- leading comment\nBEGIN IMMEDIATE",
    ],
)
async def test_refused_sql_is_not_authorized(
    client: httpx2.AsyncClient, d1: D1Fake, sql: str
) -> None:
    await setup_table(client, d1)
    r = await post(
        client,
        d1.query_url,
        {"batch": [{"sql": "INSERT INTO t (k) VALUES ('x')"}, {"sql": sql}]},
    )
    assert assert_error(r, 400, 7500) == "not authorized: SQLITE_AUTH"
    assert r.json()["result"] == []
    r = await post(client, d1.raw_url, {"sql": "SELECT COUNT(*) FROM t"})
    assert r.json()["result"][0]["results"]["rows"] == [[0]]


async def test_more_than_100_params_is_refused(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    placeholders = ", ".join(["?"] * 101)
    r = await post(
        client, d1.query_url, {"sql": f"SELECT {placeholders}", "params": list(range(101))}
    )
    assert assert_error(r, 400, 7500) == "too many SQL variables: SQLITE_ERROR"

    placeholders = ", ".join(["?"] * 100)
    r = await post(
        client, d1.raw_url, {"sql": f"SELECT {placeholders}", "params": list(range(100))}
    )
    (entry,) = assert_ok_envelope(r.json(), 1)
    assert entry["results"]["rows"] == [list(range(100))]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b"{}",
        b'{"sql": 1}',
        b'{"sql": "SELECT 1", "batch": []}',
        b'{"batch": []}',
        b'{"batch": [{"params": []}]}',
        b'{"sql": "SELECT ?", "params": [{"nested": true}]}',
        b'{"sql": "   ;  -- nothing"}',
    ],
)
async def test_malformed_body_is_400(
    client: httpx2.AsyncClient, d1: D1Fake, content: bytes
) -> None:
    r = await client.post(
        d1.query_url, content=content, headers={"content-type": "application/json"}
    )
    message = assert_error(r, 400, 7400)
    assert message.startswith("The request is malformed: ")


# -- auth and routing ------------------------------------------------------------------


async def test_wrong_or_missing_token_is_401(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    r = await client.post(
        d1.query_url, json={"sql": "SELECT 1"}, headers={"Authorization": "Bearer nope"}
    )
    assert assert_error(r, 401, 10000) == "Authentication error"
    async with httpx2.AsyncClient(timeout=30.0) as anonymous:
        r = await anonymous.post(d1.raw_url, json={"sql": "SELECT 1"})
    assert assert_error(r, 401, 10000) == "Authentication error"


async def test_unknown_database_or_account_is_404(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    r = await post(
        client, f"{d1.api_base}/accounts/acc/d1/database/nope/query", {"sql": "SELECT 1"}
    )
    assert assert_error(r, 404, 7404) == "The database nope could not be found"
    r = await post(client, f"{d1.api_base}/accounts/other/d1/database/db/raw", {"sql": "SELECT 1"})
    assert_error(r, 404, 7404)


async def test_api_base_shape(d1: D1Fake) -> None:
    assert d1.api_base == f"http://127.0.0.1:{d1.port}/client/v4"
    assert d1.query_url == f"{d1.api_base}/accounts/acc/d1/database/db/query"
    assert d1.raw_url == f"{d1.api_base}/accounts/acc/d1/database/db/raw"


# -- rate limiting ---------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = await serve_d1(nursery, db_path=tmp_path / "d1.sqlite", limit=2, window_s=60.0)
    try:
        async with httpx2.AsyncClient(headers=AUTH, timeout=30.0) as c:
            for _ in range(2):
                r = await post(c, fake.query_url, {"sql": "SELECT 1"})
                assert r.status_code == 200
            r = await post(c, fake.query_url, {"sql": "SELECT 1"})
        message = assert_error(r, 429, 971)
        assert message == "Please wait and consider throttling your request speed"
        assert re.fullmatch(r"\d+", r.headers["retry-after"])
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert fake.stats()["requests"] == 3
    finally:
        await fake.shutdown()


async def test_rate_limit_window_slides(
    nursery: trio.Nursery, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    fake = await serve_d1(nursery, db_path=tmp_path / "d1.sqlite", limit=1, window_s=10.0)
    # no keep-alive: jumping the clock also expires hypercorn's idle timer, and a
    # pooled connection the server is closing would race the next request
    limits = httpx2.Limits(max_keepalive_connections=0)
    try:
        async with httpx2.AsyncClient(headers=AUTH, timeout=30.0, limits=limits) as c:
            assert (await post(c, fake.query_url, {"sql": "SELECT 1"})).status_code == 200
            r = await post(c, fake.query_url, {"sql": "SELECT 1"})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "10"
            mock_clock.jump(9.0)
            r = await post(c, fake.raw_url, {"sql": "SELECT 1"})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            mock_clock.jump(1.0)
            assert (await post(c, fake.raw_url, {"sql": "SELECT 1"})).status_code == 200
    finally:
        await fake.shutdown()


# -- injected faults --------------------------------------------------------------------

ENVELOPE_FAULTS = {
    "network_lost": (500, 7500, "Network connection lost.", None),
    "reset": (500, 7500, "D1 DB storage caused object to be reset.", None),
    "code_updated": (500, 7500, "D1 DB reset because its code was updated.", None),
    "overloaded": (500, 7500, "D1 DB is overloaded. Too many requests queued.", None),
    "http429": (429, 971, "Please wait and consider throttling your request speed", "2"),
    "http500": (500, 7500, "Internal error", None),
}


def test_every_fault_is_covered() -> None:
    assert set(FAULTS) == {*ENVELOPE_FAULTS, "http503", "drop"}


@pytest.mark.parametrize("fault", sorted(ENVELOPE_FAULTS))
async def test_envelope_faults(client: httpx2.AsyncClient, d1: D1Fake, fault: str) -> None:
    status, code, message, retry_after = ENVELOPE_FAULTS[fault]
    r = await client.post(f"{d1.origin}/__control/faults", json={"fault": fault, "count": 2})
    assert r.status_code == 200, r.text
    for _ in range(2):
        r = await post(client, d1.query_url, {"sql": "SELECT 1"})
        assert assert_error(r, status, code) == message
        assert r.json()["result"] is None
        assert r.headers.get("retry-after") == retry_after
    r = await post(client, d1.query_url, {"sql": "SELECT 1 AS one"})
    assert r.status_code == 200
    assert r.json()["result"][0]["results"] == [{"one": 1}]


async def test_http503_fault_is_not_json(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    d1.inject("http503", 1)
    r = await post(client, d1.raw_url, {"sql": "SELECT 1"})
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "upstream unavailable"
    assert (await post(client, d1.raw_url, {"sql": "SELECT 1"})).status_code == 200


async def test_drop_fault_is_a_connection_error(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    d1.inject("drop", 2)
    for _ in range(2):
        with pytest.raises(httpx2.RemoteProtocolError):
            await post(client, d1.query_url, {"sql": "SELECT 1"})
    r = await post(client, d1.query_url, {"sql": "SELECT 1 AS one"})
    assert r.status_code == 200
    assert r.json()["result"][0]["results"] == [{"one": 1}]
    assert d1.stats()["requests"] == 3


async def test_faults_do_not_run_sql(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    d1.inject("network_lost", 1)
    r = await post(client, d1.query_url, {"sql": "INSERT INTO t (k) VALUES ('x')"})
    assert r.status_code == 500
    r = await post(client, d1.raw_url, {"sql": "SELECT COUNT(*) FROM t"})
    assert r.json()["result"][0]["results"]["rows"] == [[0]]


async def test_control_refuses_unknown_fault(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    for body in ({"fault": "gremlins", "count": 1}, {"fault": "drop", "count": 0}, {}):
        r = await client.post(f"{d1.origin}/__control/faults", json=body)
        assert r.status_code == 400
    assert d1.pending_faults == 0
    with pytest.raises(ValueError, match="unknown fault"):
        d1.inject("gremlins", 1)


# -- stats --------------------------------------------------------------------------------


async def test_stats_count_requests_and_statements(client: httpx2.AsyncClient, d1: D1Fake) -> None:
    await setup_table(client, d1)
    r = await client.post(f"{d1.origin}/__control/reset_stats")
    assert r.status_code == 200
    assert d1.stats() == {"requests": 0, "statements": 0, "by_endpoint": {"query": 0, "raw": 0}}

    # 2 statements executed
    await post(client, d1.query_url, {"sql": "INSERT INTO t (k) VALUES ('a'); SELECT * FROM t"})
    # 1 statement executed
    await post(client, d1.raw_url, {"sql": "SELECT * FROM t"})
    # refused: counted as requests, no statements
    await client.post(d1.raw_url, json={"sql": "SELECT 1"}, headers={"Authorization": "Bearer x"})
    await post(client, d1.query_url, {"sql": "PRAGMA user_version"})
    await post(
        client, d1.query_url, {"batch": [{"sql": "INSERT INTO t (k) VALUES ('b')"}, {"sql": "X"}]}
    )
    d1.inject("http500", 1)
    await post(client, d1.raw_url, {"sql": "SELECT 1"})
    # not a D1 endpoint: not counted
    assert (await post(client, f"{d1.api_base}/accounts/acc/tokens", {})).status_code == 404

    expected = {"requests": 6, "statements": 3, "by_endpoint": {"query": 3, "raw": 3}}
    assert d1.stats() == expected
    r = await client.get(f"{d1.origin}/__control/stats")
    assert r.status_code == 200
    assert r.json() == expected

    assert (await client.post(f"{d1.origin}/__control/reset_stats")).status_code == 200
    assert (await client.get(f"{d1.origin}/__control/stats")).json() == {
        "requests": 0,
        "statements": 0,
        "by_endpoint": {"query": 0, "raw": 0},
    }


# -- persistence and the process entry point ----------------------------------------------


async def test_data_lives_in_the_sqlite_file(
    nursery: trio.Nursery, tmp_path: Path, client: httpx2.AsyncClient, d1: D1Fake
) -> None:
    await setup_table(client, d1)
    await post(client, d1.query_url, {"sql": "INSERT INTO t (k, v) VALUES ('kept', 1)"})
    second = await serve_d1(nursery, db_path=tmp_path / "d1.sqlite", database_id="db2")
    try:
        r = await post(
            client,
            f"{second.api_base}/accounts/acc/d1/database/db2/query",
            {"sql": "SELECT k, v FROM t"},
        )
        assert r.json()["result"][0]["results"] == [{"k": "kept", "v": 1}]
    finally:
        await second.shutdown()


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_process_entry_point(tmp_path: Path, signum: signal.Signals) -> None:
    env = {**os.environ, "D1_FAKE_TOKEN": "proc-token"}
    argv = [sys.executable, str(SERVER_SCRIPT), "--db", str(tmp_path / "p.sqlite"), "--port", "0"]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        with trio.fail_after(60):  # a guard against a hung child, not a wait
            line = await read_line(proc.stdout)
            m = re.fullmatch(rb"LISTENING (http://127\.0\.0\.1:(\d+)/client/v4)\n", line)
            assert m, line
            api_base = m.group(1).decode()
            async with httpx2.AsyncClient(
                headers={"Authorization": "Bearer proc-token"}, timeout=30.0
            ) as c:
                r = await c.post(
                    f"{api_base}/accounts/acc/d1/database/db/raw", json={"sql": "SELECT 2 AS two"}
                )
            assert r.json()["result"][0]["results"] == {"columns": ["two"], "rows": [[2]]}
            proc.send_signal(signum)
            assert await proc.wait() == 0
            assert await read_line(proc.stdout) == b""  # exactly one line was printed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
