"""Hostile submissions against one real daemon: raw HTTP requests on its
hypercorn port, and ``deepmox submit`` through its ``main()``.

``tests/integration/test_http.py`` fuzzes the API app in-process with
well-formed clients. This module goes to the wire of a running ``deepmox
run``: request bytes written on a socket (header values with every byte
HTTP allows, repeated and odd ``Idempotency-Key`` values, query strings and
paths with broken percent-escapes), JSON bodies with each kind's fields of
the wrong types, numbers JSON cannot hold (``NaN``, ``1e999``, 400 digits),
nesting thousands deep, and unicode (escapes of NUL and lone surrogates,
right-to-left text, emoji); and the command line with the same payloads, and
arguments that are not UTF-8 text.

Rules:

* one daemon for the module, ``deepmox run`` in its own session on a real
  SQLite file, its port read from its ``api_listening`` log record; it is
  started once and checked last: alive, no ``api_error`` record and no
  traceback in its log, and a job submitted after the fuzz completes;
* every answer is < 500; every refusal that reached the app is a 4xx with
  exactly the JSON error shape; every acceptance is a job of a registered
  kind whose payload decodes for it;
* every ``main()`` run exits 0 or 2; exit 2 prints exactly one line on
  stderr, starting ``deepmox:``; nothing prints a traceback;
* waiting is :func:`tests.helpers.wait_until` only; the fuzz is sized to run
  in a few seconds (``max_examples``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deepmox.actors.registry import Registry
from deepmox.cli import main
from tests.helpers import query, toml, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "deepmox"
WRITE_TOKEN = "hostile-write-made-up-5e1f"
REGISTRY = Registry.load()
START_TIMEOUT_S = 20.0
SOCKET_TIMEOUT_S = 20.0


@dataclass
class Hostile:
    root: Path
    config: Path
    db: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    accepted: set[str] = field(default_factory=set)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEEPMOX_CONFIG", "DEEPMOX_TOKEN", "DEEPMOX_READ_TOKEN")}
    return {**env, "PYTHONUNBUFFERED": "1", "DEEPMOX_TOKEN": WRITE_TOKEN}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    db = root / "deepmox.db"
    daemon_cfg = root / "daemon.toml"
    daemon_cfg.write_text(toml({
        "d1": {"path": str(db)}, "r2": {"path": str(root / "r2")},
        "server": {"listen": "127.0.0.1:0"},
        "supervisor": {"node": "hostile", "poll_max_s": 0.2, "backoff_base_s": 0.05}}))
    log = root / "daemon.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "--config", str(daemon_cfg), "--log-format", "json", "run"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(),
            cwd=root, start_new_session=True)
    hostile = Hostile(root, root / "cli.toml", db, 0, proc, log)

    def bound() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited:\n{log.read_text()}")
        for record in hostile.records():
            if record.get("event") == "api_listening":
                found = re.search(r"listening on \S+:(\d+)", record["msg"])
                if found:
                    return int(found[1])
        return None

    try:
        hostile.port = trio.run(lambda: wait_until(bound, START_TIMEOUT_S,
                                                   what="the daemon's port"))
        # the CLI's own file: the same database, the daemon's port, no node
        hostile.config.write_text(toml({
            "d1": {"path": str(db)}, "server": {"listen": f"127.0.0.1:{hostile.port}"}}))
        yield hostile
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# -- raw HTTP -----------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def request(port: int, head: bytes, body: bytes) -> Answer:
    """Send ``head`` (request line and headers, no blank line) and ``body`` on
    a fresh connection; read the answer to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as s:
        s.sendall(head + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                  + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, rest)


def error_shape(answer: Answer) -> str:
    body = json.loads(answer.body)
    assert list(body) == ["error"], body
    assert set(body["error"]) <= {"type", "message", "error_class"}
    assert isinstance(body["error"]["type"], str)
    assert isinstance(body["error"]["message"], str)
    return str(body["error"]["type"])


# -- JSON text, hostile -------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


#: JSON text of one value: sane values, and what JSON or msgspec cannot hold
_raw_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 400,
                                "-0", "0.0000001", "1E+2", "9007199254740993",
                                "18446744073709551616", "-9223372036854775809", "01", "1.",
                                ".5", "0x10"])
_unicode = st.sampled_from([r'"\u0000"', r'"\ud800"', r'"\udfff\ud800"', '"\u202eevil"',
                            '"😀"', '"\x7f"', r'"\"', '"a\\"', '"\\q"', "'single'"])
_sane = st.one_of(
    st.none().map(_json), st.booleans().map(_json), st.integers().map(_json),
    st.floats(allow_nan=False, allow_infinity=False).map(_json), st.text(max_size=10).map(_json))
#: mostly JSON that parses (so the kinds' own checks are reached), some that cannot
_scalars = st.one_of(_sane, _sane, _sane, _sane, _raw_numbers, _unicode)


def _nest(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.text(max_size=6), inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{_json(k)}: {v}" for k, v in kv) + "}")),
    max_leaves=6) | st.builds(_nest, st.sampled_from([100, 1000, 5000]), _scalars)


def _payload_fields(kind: str) -> list[str]:
    k = REGISTRY.get(kind)
    assert k is not None
    info = msgspec.inspect.type_info(k.Payload)
    return [f.name for f in getattr(info, "fields", [])]


#: each kind's own fields, set to hostile values; sometimes an extra field
_payloads = st.one_of(
    st.sampled_from(REGISTRY.names()).flatmap(lambda kind: st.tuples(
        st.just(kind),
        st.lists(st.tuples(st.sampled_from([*_payload_fields(kind), "extra"]), _values),
                 max_size=3).map(
            lambda kv: "{" + ", ".join(f"{_json(k)}: {v}" for k, v in kv) + "}"))),
    st.tuples(st.sampled_from(["noop", "sleep", "nope", "", "NOOP", "noop\u0000",
                               "video.transcode "]), _values),
)
#: specs the daemon should accept, so that the fuzz also runs real jobs
_good = st.one_of(
    st.builds(lambda v: ("noop", _json({"value": v})), st.text(max_size=20) | st.integers()),
    st.builds(lambda s: ("sleep", _json({"seconds": s})), st.floats(0, 0.2)),
    st.builds(lambda: ("fail", _json({"error_class": "permanent"}))),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind, payload = draw(_good | _payloads | _payloads)
    fields = [f'"kind": {_json(kind)}', f'"payload": {payload}']
    for name in draw(st.lists(st.sampled_from(["priority", "max_attempts", "priority",
                                               "max_attempts", "kind", "colour"]), max_size=1)):
        fields.append(f'"{name}": {draw(_values | st.integers(-5, 5).map(str))}')
    text = "{" + ", ".join(draw(st.permutations(fields))) + "}"
    how = draw(st.sampled_from(["as is"] * 6 + ["cut", "latin-1", "bom", "utf-16", "bad utf-8"]))
    if how == "bad utf-8":  # inside a string: msgspec raises UnicodeDecodeError there
        return text.encode().replace(b'"kind": "', b'"kind": "' + draw(st.sampled_from(
            [b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf"])), 1)
    if how == "cut":
        return text.encode()[: draw(st.integers(0, len(text)))]
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "utf-16":
        return text.encode("utf-16")
    return text.encode("utf-8", "surrogatepass")


#: what HTTP/1.1 allows in a header value: visible ASCII, obs-text, inner blanks
_header_byte = st.sampled_from([bytes([b]) for b in [*range(0x21, 0x7F), *range(0x80, 0x100)]])
_header_values = st.lists(_header_byte | st.sampled_from([b" ", b"\t"]), min_size=0,
                          max_size=300).map(b"".join).map(lambda v: v.strip(b" \t") or b"k")
#: idempotency keys: mostly ones the API takes, some it must refuse
_keys = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
            max_size=40).map(str.encode),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
            max_size=40).map(str.encode),
    _header_values, st.just(b"k" * 256), st.just(b"k" * 255))
_percent = st.sampled_from(["%00", "%ff", "%2e%2e", "%2F", "%", "%zz", "%e2%82", "%C0%AE",
                            "..", "/", "?", "#", "=", "&", ";"])
_target_text = st.lists(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
            max_size=4) | _percent, max_size=6).map("".join)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """(what, head, body): mostly submissions, some reads and state changes."""
    what = draw(st.sampled_from(["submit"] * 6 + ["list", "job", "change"]))
    headers: list[bytes] = [b"host: 127.0.0.1"]
    if draw(st.sampled_from([True] * 9 + [False])):
        headers.append(b"authorization: Bearer " + WRITE_TOKEN.encode())
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        headers.append(b"idempotency-key: " + draw(_keys))
    for name in draw(st.lists(st.sampled_from([b"content-type", b"accept", b"x-anything",
                                               b"content-encoding"]), max_size=2, unique=True)):
        headers.append(name + b": " + draw(_header_values))
    if draw(st.sampled_from([False] * 9 + [True])):
        headers.append(b"x-deepmox-database: " + draw(_header_values))
    body = b""
    if what == "submit":
        target = "/v1/jobs" + draw(st.just("") | _target_text.map(lambda t: "?" + t))
        method = "POST"
        body = draw(bodies())
    elif what == "list":
        target, method = "/v1/jobs?" + draw(_target_text), "GET"
    elif what == "job":
        target, method = "/v1/jobs/" + draw(_target_text), "GET"
    else:
        target = "/v1/jobs/" + draw(_target_text) + draw(st.sampled_from(
            ["/cancel", "/retry", "/events", ""]))
        method = "POST"
    if not target.startswith("/v1/jobs"):  # pragma: no cover - by construction
        raise AssertionError(target)
    head = f"{method} {target} HTTP/1.1".encode() + b"\r\n" + b"\r\n".join(headers)
    return what, head, body


def _check_job(job: dict[str, Any]) -> None:
    kind = REGISTRY.get(job["kind"])
    assert kind is not None, job
    kind.decode(job["payload"])


@settings(max_examples=250, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=requests())
def test_raw_requests_get_a_4xx_or_a_job(daemon: Hostile, req: tuple[str, bytes, bytes]) -> None:
    what, head, body = req
    answer = request(daemon.port, head, body)
    event(f"{what}: {answer.status}")
    assert answer.status < 500, (answer.status, answer.body[:300], head[:300])
    if 400 <= answer.status < 500:
        error_shape(answer)
    elif what == "submit":
        assert answer.status in (200, 201), answer
        job = json.loads(answer.body)
        _check_job(job)
        daemon.accepted.add(job["id"])
    assert WRITE_TOKEN.encode() not in answer.body


@pytest.mark.parametrize("raw", [
    b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\nidempotency-key: a\x00b\r\n\r\n",
    b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\nx-a: " + b"k" * 70_000 + b"\r\n\r\n",
    b"GET /v1/jobs?" + b"a=1&" * 20_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(2000)) + b"\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    b"GARBAGE\r\n\r\n",
    b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
    b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
])
def test_what_is_not_http_is_refused_by_the_server(daemon: Hostile, raw: bytes) -> None:
    """Refused by hypercorn before the app (so not with deepmox's JSON), never
    a 5xx; and the daemon answers the next request."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=SOCKET_TIMEOUT_S) as s:
        answer = b""
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before all of it was sent
            pass
        try:
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        except OSError:  # reset: the unread rest of the request
            pass
    if answer:
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    health = request(daemon.port, b"GET /healthz HTTP/1.1\r\nhost: x", b"")
    assert health.status == 200


# -- the command line ---------------------------------------------------------------------

@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """main() points the deepmox logger at stdout; put it back for the tests after."""
    logger = logging.getLogger("deepmox")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


#: argv strings as Python sees them: UTF-8 text, or bytes that are not UTF-8
#: (surrogate-escaped, as os.fsdecode gives them)
_argv_text = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=8).map(os.fsdecode),
    st.sampled_from(["", "-", "--", "--json", "-1", "99999999999999999999", "1e3", "nan",
                     "\x00", "a\nb", "\u202e"]))


@st.composite
def submit_argv(draw: st.DrawFn) -> list[str]:
    kind, payload = draw(_good | _good | _payloads)
    argv = ["submit", draw(st.sampled_from([kind] * 4) | _argv_text), "--payload",
            draw(st.sampled_from([payload] * 4) | _argv_text)]
    for flag in draw(st.lists(st.sampled_from(["--priority", "--max-attempts",
                                               "--idempotency-key"]), max_size=3,
                              unique=True)):
        argv += [flag, draw(_argv_text | st.sampled_from(["1", "2", "3", "-1", "0", "key-1"]))]
    argv += draw(st.sampled_from([["--json"], [], ["--direct"], ["--direct", "--json"]]))
    return argv


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return int(exc.code or 0)


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=submit_argv())
def test_cli_submit_exits_0_or_2_with_one_line(
        daemon: Hostile, quiet_logs: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setenv("DEEPMOX_TOKEN", WRITE_TOKEN)
    capsys.readouterr()
    code = run_main(["--config", str(daemon.config), *argv])
    out, err = capsys.readouterr()
    event(f"exit {code}")
    assert "Traceback" not in out + err
    assert code in (0, 2), (code, argv, err)
    if code == 2:
        assert err.endswith("\n"), err
        assert err.count("\n") == 1, err
        assert err.startswith("deepmox"), err
        return
    printed = out.strip()
    if "--json" in argv:
        job = json.loads(printed)
        _check_job(job)
        daemon.accepted.add(job["id"])
    else:
        assert re.fullmatch(r"[0-9A-Z]{26}", printed), printed
        daemon.accepted.add(printed)


@pytest.mark.parametrize("argv", [
    [b"submit", b"no\xffop"],
    [b"submit", b"noop", b"--payload", b'{"value": "\xff\xfe"}'],
    [b"submit", b"noop", b"--idempotency-key", b"k\xc3"],
    [b"status", b"\xff"],
    [b"jobs", b"--kind", b"\xed\xa0\x80"],
])
def test_cli_arguments_that_are_not_utf8(daemon: Hostile, argv: list[bytes]) -> None:
    out = subprocess.run([bytes(BIN), b"--config", bytes(daemon.config), *argv],
                         capture_output=True, timeout=60, check=False, env=_env())
    assert out.returncode == 2, out
    assert out.stderr.count(b"\n") == 1, out.stderr
    assert out.stderr.startswith(b"deepmox: ")


# -- afterwards ---------------------------------------------------------------------------

def test_the_daemon_survived_and_runs_what_it_accepted(
        daemon: Hostile, quiet_logs: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Last in the module: the fuzz above ran against this daemon."""
    monkeypatch.setenv("DEEPMOX_TOKEN", WRITE_TOKEN)
    assert daemon.accepted, "the fuzz must have had some submissions accepted"
    capsys.readouterr()
    assert run_main(["--config", str(daemon.config), "submit", "noop", "--payload",
                     '{"value": "after"}']) == 0
    after = capsys.readouterr().out.strip()

    def settled() -> bool:
        assert daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
        rows = dict(query(daemon.db, "SELECT id, state FROM jobs"))
        # accepted short jobs end; a long sleep the fuzz found valid may still run
        return rows.get(after) == "completed" and not any(
            rows.get(job_id) == "pending" and kind != "sleep"
            for job_id, kind in query(daemon.db, "SELECT id, kind FROM jobs"))

    trio.run(lambda: wait_until(settled, 60, what="the accepted jobs to run"))
    records = daemon.records()
    assert not [r for r in records if r.get("event") == "api_error"]
    assert not [r for r in records if "Traceback" in str(r.get("exc", ""))
                and r.get("logger") != "deepmox.actor"]
    states = dict(query(daemon.db, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert states.get("completed", 0) >= 1
