"""Contract tests of the AI fakes: ``tests/fakes/messages_server.py`` and ``tests/fakes/claude``.

Rules of this file:

* The Messages fake is started in process with ``serve_messages`` in
  pytest-trio's ``nursery`` fixture and spoken to over real loopback HTTP by
  the REAL ``anthropic.AsyncAnthropic`` client (``max_retries=0``), so what is
  pinned here is what the SDK makes of the fake's answers: its own exception
  classes, status codes, headers, parsed content and usage.
* The ``claude`` stand-in is run as a real subprocess (its shebang, its stdin,
  its stdout), once per ``CLAUDE_FAKE_MODE``; its stdout is parsed as the
  feature will parse it.
* No waiting on the wall clock: never ``time.sleep`` or ``trio.sleep`` to let
  something happen.  The rate-limit window runs on pytest-trio's
  ``mock_clock``; the only wall-clock bounds are the client ``timeout`` of the
  slow answer and ``fail_after``/``move_on_after`` guards around subprocesses.
* Every client, server, pipe and process is closed, reaped or killed by the
  fixture or test that opened it (pytest runs with ``filterwarnings = error``).
* Nothing here imports ``deepmox``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
import trio
import trio.testing

from tests.fakes.messages_server import (
    DEFAULT_TEXT,
    Answer,
    MessagesFake,
    error,
    ok,
    rate_limited,
    serve_messages,
    slow,
)

CLAUDE = Path(__file__).resolve().parents[1] / "fakes" / "claude"
MODEL = "claude-fake-model-1"
PROMPT = [{"role": "user", "content": "Describe this video."}]
RESULT_KEYS = {
    "type",
    "subtype",
    "is_error",
    "duration_ms",
    "duration_api_ms",
    "num_turns",
    "session_id",
    "total_cost_usd",
    "usage",
}


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[MessagesFake]:
    server = await serve_messages(nursery)
    yield server
    await server.shutdown()


@pytest.fixture
async def client(fake: MessagesFake) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key="made-up", base_url=fake.base_url, max_retries=0
    ) as c:
        yield c


async def _create(client: anthropic.AsyncAnthropic) -> anthropic.types.Message:
    return await client.messages.create(model=MODEL, max_tokens=256, messages=PROMPT)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Messages API fake, through the real SDK


async def test_success_text_usage_and_recorded_request(
    fake: MessagesFake, client: anthropic.AsyncAnthropic
) -> None:
    fake.queue(ok("hello there", input_tokens=7, output_tokens=3))
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, messages=PROMPT  # type: ignore[arg-type]
    )
    message = await raw.parse()
    assert raw.status_code == 200
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert [(b.type, b.text) for b in message.content] == [("text", "hello there")]  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)

    (seen,) = fake.requests
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    # the key travels as ``x-api-key`` or (this SDK build) ``Authorization: Bearer``
    assert "made-up" in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "")[7:])
    assert "anthropic-version" in seen.headers
    assert seen.body == {"model": MODEL, "max_tokens": 256, "messages": PROMPT}


async def test_default_answer_is_fixed_json(
    fake: MessagesFake, client: anthropic.AsyncAnthropic
) -> None:
    message = await _create(client)
    text = message.content[0].text  # type: ignore[union-attr]
    assert text == DEFAULT_TEXT
    assert isinstance(json.loads(text), dict)
    assert fake.pending == 0


async def test_queue_is_fifo(fake: MessagesFake, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(ok("one"), error("api_error"), ok("two"))
    assert (await _create(client)).content[0].text == "one"  # type: ignore[union-attr]
    with pytest.raises(anthropic.InternalServerError):
        await _create(client)
    assert (await _create(client)).content[0].text == "two"  # type: ignore[union-attr]
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("answer", "exc_type", "status", "error_type"),
    [
        (error("invalid_request_error"), anthropic.BadRequestError, 400, "invalid_request_error"),
        (error("authentication_error"), anthropic.AuthenticationError, 401,
         "authentication_error"),
        (error("billing_error"), anthropic.APIStatusError, 402, "billing_error"),
        (error("permission_error"), anthropic.PermissionDeniedError, 403, "permission_error"),
        (error("not_found_error"), anthropic.NotFoundError, 404, "not_found_error"),
        (error("request_too_large"), anthropic.APIStatusError, 413, "request_too_large"),
        (rate_limited(), anthropic.RateLimitError, 429, "rate_limit_error"),
        (error("api_error"), anthropic.InternalServerError, 500, "api_error"),
        (error("timeout_error"), anthropic.InternalServerError, 504, "timeout_error"),
        (error("api_error", status=504), anthropic.InternalServerError, 504, "api_error"),
        (error("overloaded_error"), anthropic.InternalServerError, 529, "overloaded_error"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_error_status_raises_sdk_exception(
    fake: MessagesFake,
    client: anthropic.AsyncAnthropic,
    answer: Answer,
    exc_type: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
) -> None:
    fake.queue(answer)
    with pytest.raises(exc_type) as info:
        await _create(client)
    exc = info.value
    assert exc.status_code == status
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "error"
    assert exc.body["error"]["type"] == error_type
    assert isinstance(exc.body["error"]["message"], str)
    assert exc.request_id is not None
    assert exc.request_id.startswith("req_")


async def test_rate_limit_retry_after_header(
    fake: MessagesFake, client: anthropic.AsyncAnthropic
) -> None:
    fake.queue(rate_limited(retry_after=7), rate_limited())
    with pytest.raises(anthropic.RateLimitError) as with_header:
        await _create(client)
    assert with_header.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.RateLimitError) as without_header:
        await _create(client)
    assert "retry-after" not in without_header.value.response.headers


async def test_slow_answer_times_out_the_client(fake: MessagesFake) -> None:
    fake.queue(slow(5))
    async with anthropic.AsyncAnthropic(
        api_key="made-up", base_url=fake.base_url, max_retries=0, timeout=0.5
    ) as client:
        with trio.fail_after(4), pytest.raises(anthropic.APITimeoutError):
            await _create(client)
    assert len(fake.requests) == 1


async def test_missing_api_key_and_bad_body(fake: MessagesFake) -> None:
    """Checked by the fake itself, before any scripted answer is used."""
    fake.queue(ok("unused"))
    async with httpx2.AsyncClient(base_url=fake.base_url) as http:
        body = {"model": MODEL, "max_tokens": 8, "messages": PROMPT}
        no_key = await http.post("/v1/messages", json=body)
        no_model = await http.post(
            "/v1/messages", json={"max_tokens": 8, "messages": PROMPT},
            headers={"x-api-key": "made-up"},
        )
        elsewhere = await http.post("/v1/complete", json=body, headers={"x-api-key": "k"})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_model.status_code == 400
    assert no_model.json()["error"]["type"] == "invalid_request_error"
    assert elsewhere.status_code == 404
    assert elsewhere.json()["type"] == "error"
    assert fake.pending == 1


async def test_limit_per_minute_on_mock_clock(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    fake = await serve_messages(nursery, limit_per_minute=2)
    try:
        async with anthropic.AsyncAnthropic(
            api_key="made-up", base_url=fake.base_url, max_retries=0
        ) as client:
            await _create(client)
            mock_clock.jump(10)
            await _create(client)
            with pytest.raises(anthropic.RateLimitError) as info:
                await _create(client)
            assert info.value.response.headers["retry-after"] == "50"
            assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            mock_clock.jump(50)
            await _create(client)  # the first one left the window
            with pytest.raises(anthropic.RateLimitError):
                await _create(client)
    finally:
        await fake.shutdown()


# ---------------------------------------------------------------------------
# claude CLI stand-in, as a subprocess


def _env(mode: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_FAKE_")}
    if mode is not None:
        env["CLAUDE_FAKE_MODE"] = mode
    env.update(extra)
    return env


async def _run_claude(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [str(CLAUDE), "-p", "--output-format", "json", *args]
    with trio.fail_after(10):
        return await trio.run_process(
            argv,
            stdin=b"Describe this video.",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


async def test_claude_success_and_log(tmp_path: Path) -> None:
    log = tmp_path / "claude.log"
    env = _env(None, CLAUDE_FAKE_LOG=str(log))
    done = await _run_claude(env, "--model", "sonnet")
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert RESULT_KEYS | {"result"} <= out.keys()
    assert (out["type"], out["subtype"], out["is_error"], out["num_turns"]) == (
        "result", "success", False, 1
    )
    assert json.loads(out["result"]) == json.loads(DEFAULT_TEXT)
    assert set(out["usage"]) == {
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
    }

    custom = await _run_claude(_env("success", CLAUDE_FAKE_RESULT="plain words",
                                    CLAUDE_FAKE_LOG=str(log)))
    assert json.loads(custom.stdout)["result"] == "plain words"

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["argv"] for entry in lines] == [
        ["-p", "--output-format", "json", "--model", "sonnet"],
        ["-p", "--output-format", "json"],
    ]
    assert all(entry["stdin"] == "Describe this video." for entry in lines)


@pytest.mark.parametrize("subtype", ["success", "error_during_execution"])
async def test_claude_rate_limited(subtype: str) -> None:
    done = await _run_claude(_env("rate_limited", CLAUDE_FAKE_SUBTYPE=subtype))
    out = json.loads(done.stdout)
    assert out.keys() >= RESULT_KEYS
    assert out["is_error"] is True
    assert out["subtype"] == subtype
    assert out["api_error_status"] == 429
    assert out["result"].startswith("API Error: 429 ")
    assert json.loads(out["result"].removeprefix("API Error: 429 "))["error"]["type"] == (
        "rate_limit_error"
    )


@pytest.mark.parametrize(
    ("mode", "subtype"),
    [("error_during_execution", "error_during_execution"), ("max_turns", "error_max_turns")],
)
async def test_claude_error_results(mode: str, subtype: str) -> None:
    done = await _run_claude(_env(mode))
    out = json.loads(done.stdout)
    assert out.keys() >= RESULT_KEYS
    assert (out["subtype"], out["is_error"]) == (subtype, True)
    assert done.returncode != 0


async def test_claude_garbage_is_not_json() -> None:
    done = await _run_claude(_env("garbage"))
    assert done.returncode == 0
    assert done.stdout.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.stdout)


async def test_claude_exit_code_1() -> None:
    done = await _run_claude(_env("exit"))
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.strip()


async def test_claude_hang_dies_with_its_process_group() -> None:
    proc = await trio.lowlevel.open_process(
        [str(CLAUDE), "-p", "--output-format", "json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env("hang"),
        start_new_session=True,
    )
    try:
        with trio.move_on_after(0.5) as bound:
            await proc.wait()
        assert bound.cancelled_caught, "the hang mode returned on its own"
        assert proc.returncode is None
        os.killpg(proc.pid, signal.SIGKILL)
        with trio.fail_after(5):
            code = await proc.wait()
        assert code == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()
