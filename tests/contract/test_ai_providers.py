"""The model providers' contract, run against both: ``anthropic`` (the real SDK
against the Messages API fake on loopback) and ``claude-cli`` (the stand-in
executable ``tests/fakes/claude`` as a real child process).

Rules: every scenario of the contract is set up per provider by a small
adapter (a scripted answer for the fake server, a mode for the stand-in), and
the same assertions run on what comes back: a completion with its text and
usage, or one of the AI error families. Provider-specific mappings (each
status code, each CLI shape) follow the contract. No waiting on the wall
clock: timeouts are the providers' own, and short.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from deepmox.bindings.ai.anthropic_api import AnthropicProvider, parse_retry_after
from deepmox.bindings.ai.claude_cli import ClaudeCliProvider
from deepmox.bindings.ai.interface import ModelProvider, Prompt, Turn
from deepmox.config import AnthropicConfig, ClaudeCliConfig, PriceConfig
from deepmox.errors import AIPermanentError, AIRateLimitedError, AIUnavailableError
from tests.fakes.messages_server import MessagesFake, error, ok, rate_limited, serve_messages, slow

CLAUDE = Path(__file__).resolve().parents[1] / "fakes" / "claude"
KEY = "sk-made-up-for-tests-0000"
MODEL = "claude-sonnet-5-5"
PROMPT = Prompt("You describe videos.", (Turn("user", "Describe a video about bread."),))
ANSWER = json.dumps({"title": "Bread", "summary": "About bread.", "tags": ["bread"],
                     "chapters": [{"start_s": 0, "title": "Start"}]})


@pytest.fixture
async def fake(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[MessagesFake]:
    server = await serve_messages(nursery)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    yield server
    await server.shutdown()


class Adapter:
    """Sets one provider up for each scenario of the contract."""

    name: str
    provider: ModelProvider

    def answer(self, text: str) -> None: ...
    def throttled(self) -> None: ...
    def failing(self) -> None: ...
    def refusing(self) -> None: ...
    def hanging(self) -> None: ...


class AnthropicAdapter(Adapter):
    name = "anthropic"

    def __init__(self, fake: MessagesFake) -> None:
        self.fake = fake
        self.provider = AnthropicProvider(AnthropicConfig(model=MODEL))

    def answer(self, text: str) -> None:
        self.fake.queue(ok(text, input_tokens=1000, output_tokens=200))

    def throttled(self) -> None:
        self.fake.queue(rate_limited(retry_after=7))

    def failing(self) -> None:
        self.fake.queue(error("api_error"))

    def refusing(self) -> None:
        self.fake.queue(error("authentication_error"))

    def hanging(self) -> None:
        self.fake.queue(slow(30))


class CliAdapter(Adapter):
    name = "claude-cli"

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
        self.mp = monkeypatch
        monkeypatch.setenv("CLAUDE_FAKE_LOG", str(log))
        self.provider = ClaudeCliProvider(ClaudeCliConfig(path=str(CLAUDE)))

    def _mode(self, mode: str, **extra: str) -> None:
        self.mp.setenv("CLAUDE_FAKE_MODE", mode)
        for k, v in extra.items():
            self.mp.setenv(k, v)

    def answer(self, text: str) -> None:
        self._mode("success", CLAUDE_FAKE_RESULT=text)

    def throttled(self) -> None:
        self._mode("rate_limited")

    def failing(self) -> None:
        self._mode("error_during_execution")

    def refusing(self) -> None:
        self._mode("rate_limited", CLAUDE_FAKE_API_STATUS="401")

    def hanging(self) -> None:
        self._mode("hang")


@pytest.fixture(params=["anthropic", "claude-cli"])
async def adapter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Adapter]:
    a: Adapter
    if request.param == "anthropic":
        server = await serve_messages(nursery)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        a = AnthropicAdapter(server)
    else:
        a = CliAdapter(monkeypatch, tmp_path / "claude.log")
    yield a
    await a.provider.aclose()
    if isinstance(a, AnthropicAdapter):
        await a.fake.shutdown()


async def _complete(a: Adapter, tmp_path: Path, timeout_s: float = 10.0) -> Any:
    return await a.provider.complete(PROMPT, timeout_s=timeout_s, workdir=tmp_path)


# -- the contract --------------------------------------------------------------------


async def test_usable_with_its_credentials(adapter: Adapter) -> None:
    assert adapter.provider.unusable() is None
    assert adapter.provider.upstream == f"ai:{adapter.name}"


async def test_an_answer_is_a_completion_with_its_cost(adapter: Adapter, tmp_path: Path) -> None:
    adapter.answer(ANSWER)
    done = await _complete(adapter, tmp_path)
    assert done.text == ANSWER
    assert done.usage.input_tokens > 0
    assert done.usage.output_tokens > 0
    assert done.usage.cost_usd is not None
    assert done.usage.cost_usd > 0


async def test_a_throttle_is_rate_limited(adapter: Adapter, tmp_path: Path) -> None:
    adapter.throttled()
    with pytest.raises(AIRateLimitedError) as info:
        await _complete(adapter, tmp_path)
    assert info.value.upstream == f"ai:{adapter.name}"
    assert info.value.error_class == "rate_limited"


async def test_a_passing_failure_is_transient(adapter: Adapter, tmp_path: Path) -> None:
    adapter.failing()
    with pytest.raises(AIUnavailableError) as info:
        await _complete(adapter, tmp_path)
    assert info.value.error_class == "transient"


async def test_a_refusal_is_permanent(adapter: Adapter, tmp_path: Path) -> None:
    adapter.refusing()
    with pytest.raises(AIPermanentError) as info:
        await _complete(adapter, tmp_path)
    assert "401" in info.value.message


async def test_a_hang_ends_at_the_timeout_as_transient(adapter: Adapter, tmp_path: Path) -> None:
    adapter.hanging()
    started = trio.current_time()
    with pytest.raises(AIUnavailableError) as info:
        await _complete(adapter, tmp_path, timeout_s=0.5)
    assert trio.current_time() - started < 5
    assert "0.5 s" in info.value.message


# -- the Messages API, status by status -----------------------------------------------


@pytest.mark.parametrize(("answer", "family", "words"), [
    (error("invalid_request_error"), AIPermanentError, "400"),
    (error("authentication_error"), AIPermanentError, "401"),
    (error("billing_error"), AIPermanentError, "402"),
    (error("permission_error"), AIPermanentError, "403"),
    (error("not_found_error"), AIPermanentError, "404"),
    (error("request_too_large"), AIPermanentError, "413"),
    (rate_limited(retry_after=12), AIRateLimitedError, "429"),
    (rate_limited(), AIPermanentError, "spend or usage cap"),
    (error("api_error"), AIUnavailableError, "500"),
    (error("api_error", status=503), AIUnavailableError, "503"),
    (error("timeout_error"), AIUnavailableError, "504"),
    (error("overloaded_error"), AIRateLimitedError, "529"),
])
async def test_messages_api_statuses(fake: MessagesFake, tmp_path: Path, answer: Any,
                                     family: type[Exception], words: str) -> None:
    fake.queue(answer)
    provider = AnthropicProvider(AnthropicConfig(model=MODEL))
    try:
        with pytest.raises(family) as info:
            await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)
    finally:
        await provider.aclose()
    assert words in str(info.value)
    assert KEY not in str(info.value)
    assert len(fake.requests) == 1, "the SDK must not retry on its own"
    if isinstance(info.value, AIRateLimitedError):
        assert info.value.overloaded == (words == "529")
        if not info.value.overloaded:
            assert info.value.retry_after == 12


async def test_messages_api_request_and_usage(fake: MessagesFake, tmp_path: Path) -> None:
    fake.queue(ok(ANSWER, input_tokens=2_000_000, output_tokens=100_000))
    prices = {"m-custom": PriceConfig(input_per_mtok=1.0, output_per_mtok=4.0)}
    provider = AnthropicProvider(AnthropicConfig(model="m-custom", max_tokens=777,
                                                 prices=prices))
    try:
        repair = Prompt("sys", (Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")))
        done = await provider.complete(repair, timeout_s=10, workdir=tmp_path)
    finally:
        await provider.aclose()
    sent = fake.requests[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}" or sent.headers["x-api-key"] == KEY
    assert sent.body["model"] == "m-custom"
    assert sent.body["max_tokens"] == 777
    assert sent.body["system"] == "sys"
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert done.model == "m-custom"
    assert done.usage.input_tokens == 2_000_000
    assert done.usage.cost_usd == pytest.approx(2.0 + 0.4)


async def test_an_unknown_model_has_no_price(fake: MessagesFake, tmp_path: Path) -> None:
    fake.queue(ok(ANSWER))
    provider = AnthropicProvider(AnthropicConfig(model="claude-unheard-of-9"))
    try:
        done = await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)
    finally:
        await provider.aclose()
    assert done.usage.cost_usd is None


async def test_rate_headers_are_read(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    server = await serve_messages(nursery, limit_per_minute=5, wall=lambda: 1_800_000_000.0)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    provider = AnthropicProvider(AnthropicConfig(model=MODEL))
    try:
        await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)
        done = await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)
    finally:
        await provider.aclose()
        await server.shutdown()
    assert done.rate is not None
    assert done.rate.remaining == 3
    assert done.rate.reset_at == 1_800_000_060.0


async def test_an_unreachable_api_is_transient(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    provider = AnthropicProvider(AnthropicConfig(model=MODEL))
    try:
        with pytest.raises(AIUnavailableError, match="cannot reach"):
            await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)
    finally:
        await provider.aclose()


def test_no_key_means_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    reason = AnthropicProvider(AnthropicConfig()).unusable()
    assert reason is not None
    assert "ANTHROPIC_API_KEY" in reason


def test_retry_after_spellings() -> None:
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after("1.5", 0.0) == 1.5
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("nan", 0.0) is None


# -- the claude CLI, shape by shape ---------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, mode: str, **cfg: Any) -> ClaudeCliProvider:
    monkeypatch.setenv("CLAUDE_FAKE_MODE", mode)
    return ClaudeCliProvider(ClaudeCliConfig(path=str(CLAUDE), **cfg),
                             secret_names=["DEEPMOX_TEST_SECRET"])


@pytest.mark.parametrize(("mode", "family", "words"), [
    ("garbage", AIUnavailableError, "not its JSON result"),
    ("exit", AIUnavailableError, "exited with status 1"),
    ("error_during_execution", AIUnavailableError, "error_during_execution"),
    ("max_turns", AIPermanentError, "turn limit"),
    ("rate_limited", AIRateLimitedError, "API status 429"),
])
async def test_cli_shapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str,
                          family: type[Exception], words: str) -> None:
    provider = _cli(monkeypatch, mode)
    with pytest.raises(family, match=words):
        await provider.complete(PROMPT, timeout_s=10, workdir=tmp_path)


@pytest.mark.parametrize(("status", "family"), [
    ("529", AIRateLimitedError), ("500", AIUnavailableError), ("403", AIPermanentError)])
async def test_cli_api_statuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: str,
                                family: type[Exception]) -> None:
    monkeypatch.setenv("CLAUDE_FAKE_API_STATUS", status)
    with pytest.raises(family):
        await _cli(monkeypatch, "rate_limited").complete(PROMPT, timeout_s=10,
                                                         workdir=tmp_path)


async def test_cli_call_is_what_the_cli_expects(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CLAUDE_FAKE_LOG", str(log))
    monkeypatch.setenv("DEEPMOX_TEST_SECRET", "made-up-secret-1")
    monkeypatch.setenv("DEEPMOX_TOKEN", "made-up-secret-2")
    work = tmp_path / "work"
    work.mkdir()
    provider = _cli(monkeypatch, "success", model="claude-haiku-5-5",
                    extra_args=["--max-turns", "1"])
    done = await provider.complete(PROMPT, timeout_s=10, workdir=work)
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"] == ["-p", "--output-format", "json", "--model", "claude-haiku-5-5",
                            "--max-turns", "1"]
    assert call["stdin"] == PROMPT.flat()
    assert done.usage.cost_usd == pytest.approx(0.0012)
    assert done.model == "claude-haiku-5-5"


async def test_cli_child_has_no_deepmox_secrets(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """The stand-in's environment is observed through a wrapper script that
    prints it into the log before running the stand-in."""
    monkeypatch.setenv("DEEPMOX_TEST_SECRET", "made-up-secret-1")
    monkeypatch.setenv("DEEPMOX_TOKEN", "made-up-secret-2")
    env_out = tmp_path / "env.json"
    wrapper = tmp_path / "claude-wrapper"
    wrapper.write_text(f"#!/bin/sh\npwd > {tmp_path / 'cwd'}\nenv -0 > {env_out}\n"
                       f"exec {CLAUDE} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("CLAUDE_FAKE_MODE", "success")
    provider = ClaudeCliProvider(ClaudeCliConfig(path=str(wrapper)),
                                 secret_names=["DEEPMOX_TEST_SECRET"])
    work = tmp_path / "work"
    work.mkdir()
    await provider.complete(PROMPT, timeout_s=10, workdir=work)
    names = {item.split("=", 1)[0] for item in env_out.read_text().split("\0") if item}
    assert "DEEPMOX_TEST_SECRET" not in names
    assert "DEEPMOX_TOKEN" not in names
    assert "PATH" in names
    assert (tmp_path / "cwd").read_text().strip() == str(work)


async def test_cli_hang_is_killed_with_its_process_group(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CLAUDE_FAKE_LOG", str(log))
    provider = _cli(monkeypatch, "hang")
    with pytest.raises(AIUnavailableError, match="process group was killed"):
        await provider.complete(PROMPT, timeout_s=0.5, workdir=tmp_path)
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    with pytest.raises(ProcessLookupError):
        os.killpg(call["pid"], 0)


def test_no_cli_means_unusable() -> None:
    reason = ClaudeCliProvider(ClaudeCliConfig(path="claude-surely-not-installed")).unusable()
    assert reason == "no `claude-surely-not-installed` on PATH"


