"""``ai.describe`` end to end in one supervisor, on the autojump clock: the
real anthropic SDK against the Messages API fake on loopback, the ``claude``
stand-in as a real child process, the heuristic offline.

Rules: providers are chosen per test with ``[ai] providers``; a test that
runs the ``claude`` stand-in uses the real clock (a child process is not
virtual time); the fake's
answers are scripted, and what it received is asserted (how many requests,
what the repair request quoted); outcomes are read from the job row and its
timeline, as ``deepmox status`` and ``deepmox events`` show them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from deepmox.errors import RefusedError
from tests.fakes.messages_server import MessagesFake, error, ok, rate_limited, serve_messages
from tests.helpers import query
from tests.unit.conftest import wall

MakeHarness = Callable[..., Any]
DONE = ("completed", "failed", "cancelled")
CLAUDE = Path(__file__).resolve().parents[1] / "fakes" / "claude"
TRANSCRIPT = ("Welcome to the kitchen. Today we bake sourdough bread. A starter, flour, "
              "water and salt are all it needs. It bakes for forty minutes.")
VALID = {"title": "Baking sourdough", "summary": "How to bake sourdough bread at home.",
         "tags": ["baking", "bread"],
         "chapters": [{"start_s": 0, "title": "Intro"}, {"start_s": 60, "title": "Dough"}]}


def config(*providers: str, extra: str = "") -> str:
    names = ", ".join(f'"{p}"' for p in providers)
    return (f"[ai]\nproviders = [{names}]\n[ai.claude-cli]\npath = \"{CLAUDE}\"\n"
            f"[ai.anthropic]\nrequests_per_minute = 0\n{extra}")


@pytest.fixture
async def fake(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[MessagesFake]:
    server = await serve_messages(nursery, wall=wall)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-made-up-unit")
    yield server
    await server.shutdown()


async def run_one(make_harness: MakeHarness, toml: str, payload: dict[str, Any]
                  ) -> tuple[Any, list[Any]]:
    async with make_harness(toml) as h:
        job = await h.submit("ai.describe", payload)
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        return done, await h.events(job.id)


def details(events: list[Any], step: str) -> list[str]:
    return [e.detail or "" for e in events if e.step == step and e.type != "claimed"]


async def test_heuristic_when_no_provider_is_usable(
        make_harness: MakeHarness, autojump_clock: MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    toml = ('[ai]\n[ai.claude-cli]\npath = "claude-not-here"\n')
    done, events = await run_one(make_harness, toml, {"transcript": TRANSCRIPT,
                                                       "duration_s": 120})
    assert done.state == "completed"
    meta = done.result
    assert meta["provider"] == "heuristic"
    assert meta["context_source"] == "transcript"
    assert meta["title"] == "Welcome to the kitchen"
    assert "sourdough" in meta["tags"]
    assert meta["chapters"][0]["start_s"] == 0
    assert meta["usage"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    assert "skipped (no `claude-not-here` on PATH)" in details(events, "describe:claude-cli")[0]
    assert "ANTHROPIC_API_KEY" in details(events, "describe:anthropic")[0]


async def test_a_valid_answer_with_its_cost_on_the_record(
        make_harness: MakeHarness, autojump_clock: MockClock, fake: MessagesFake) -> None:
    fake.queue(ok(json.dumps(VALID), input_tokens=1500, output_tokens=300))
    done, events = await run_one(make_harness, config("anthropic", "heuristic"),
                                 {"transcript": TRANSCRIPT, "duration_s": 120,
                                  "title_hint": "Sourdough"})
    assert done.state == "completed", done.error_message
    meta = done.result
    assert meta["provider"] == "anthropic"
    assert meta["title"] == "Baking sourdough"
    assert meta["usage"]["input_tokens"] == 1500
    assert meta["usage"]["output_tokens"] == 300
    # claude-sonnet-5-5: $2 and $10 per million tokens
    assert meta["usage"]["cost_usd"] == pytest.approx(0.003 + 0.003)
    (detail,) = details(events, "describe:anthropic")
    assert "1500 in / 300 out tokens" in detail
    assert "$0.006000" in detail
    (sent,) = fake.requests
    text = sent.body["messages"][0]["content"]
    assert TRANSCRIPT in text
    assert "The uploader's title: Sourdough" in text


async def test_invalid_output_is_repaired_on_the_second_request(
        make_harness: MakeHarness, autojump_clock: MockClock, fake: MessagesFake) -> None:
    bad = {**VALID, "tags": ["Baking", "bread"], "chapters": [{"start_s": 500, "title": "x"}]}
    fake.queue(ok("Sure! ```json\n" + json.dumps(bad) + "\n```"),
               ok("```json\n" + json.dumps(VALID) + "\n```"))
    done, events = await run_one(make_harness, config("anthropic"),
                                 {"transcript": TRANSCRIPT, "duration_s": 120})
    assert done.state == "completed", done.error_message
    assert done.result["provider"] == "anthropic"
    assert done.result["tags"] == ["baking", "bread"]
    assert len(fake.requests) == 2
    repair = fake.requests[1].body["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert "tags[0] 'Baking' is not lowercase" in repair[2]["content"]
    assert "first chapter must start at 0" in repair[2]["content"]
    assert "past the end of the video (120 s)" in repair[2]["content"]
    (detail,) = details(events, "describe:anthropic")
    assert "repair" in detail


async def test_invalid_twice_falls_through_to_the_next_provider(
        make_harness: MakeHarness, autojump_clock: MockClock, fake: MessagesFake) -> None:
    fake.queue(ok("I cannot help with that."), ok('{"title": ""}'))
    done, events = await run_one(make_harness, config("anthropic", "heuristic"),
                                 {"description": "A walk in the park. Dogs and ducks."})
    assert done.state == "completed"
    assert done.result["provider"] == "heuristic"
    assert done.result["context_source"] == "description"
    assert done.result["usage"]["input_tokens"] == 24  # both anthropic calls, on the record
    assert len(fake.requests) == 2
    (detail,) = details(events, "describe:anthropic")
    assert "invalid output" in detail


async def test_every_provider_invalid_fails_permanent_with_the_errors(
        make_harness: MakeHarness, fake: MessagesFake, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # the real clock: the claude stand-in is a real child process, and the
    # autojump clock would jump to the budget while the loop waits for it
    script = tmp_path / "claude-script.json"
    script.write_text(json.dumps([{"result": "no json here"},
                                  {"result": json.dumps({**VALID, "tags": []})}]))
    monkeypatch.setenv("CLAUDE_FAKE_SCRIPT", str(script))
    fake.queue(ok(json.dumps({**VALID, "title": "x" * 150})),
               ok(json.dumps({**VALID, "title": "y" * 150})))
    done, events = await run_one(make_harness, config("claude-cli", "anthropic"),
                                 {"transcript": TRANSCRIPT, "duration_s": 120})
    assert done.state == "failed"
    assert done.error_class == "permanent"
    message = done.error_message or ""
    assert message.startswith("no provider gave valid metadata")
    assert "claude-cli: invalid output after a repair request: there are 0 tags" in message
    assert "anthropic: invalid output after a repair request: title has 150 characters" \
        in message
    failed = [e for e in events if e.type == "failed"]
    assert message in (failed[0].detail or "")
    assert "$" in (failed[0].detail or ""), "the failed step's cost is on its event"
    assert json.loads(script.read_text()) == [], "the CLI was asked twice"
    assert len(fake.requests) == 2


async def test_rate_limited_waits_without_using_an_attempt(
        make_harness: MakeHarness, autojump_clock: MockClock, fake: MessagesFake) -> None:
    fake.queue(rate_limited(retry_after=200), ok(json.dumps(VALID)))
    async with make_harness(config("anthropic")) as h:
        job = await h.submit("ai.describe", {"transcript": TRANSCRIPT, "duration_s": 120})
        async with h.supervisor() as sup:
            deferred = await h.wait_event(sup, job.id, "retry_scheduled")
            row = query(Path(h.path), "SELECT upstream, blocked_until FROM throttles")
            done = await h.wait_state(sup, job.id, *DONE)
        events = await h.events(job.id)
    assert deferred.error_class == "rate_limited"
    assert row == [("ai:anthropic", pytest.approx(deferred.ts + 200, abs=0.01))]
    assert done.state == "completed"
    assert done.attempt == 1, "a throttle must not use an attempt"
    second = [e for e in events if e.type == "claimed"][1]
    assert second.ts - deferred.ts == pytest.approx(200, abs=0.3)
    assert len(fake.requests) == 2


async def test_a_refusal_falls_through(make_harness: MakeHarness, autojump_clock: MockClock,
                                       fake: MessagesFake) -> None:
    fake.queue(error("authentication_error", "invalid x-api-key"))
    done, events = await run_one(make_harness, config("anthropic", "heuristic"),
                                 {"title_hint": "Holiday in Lisbon"})
    assert done.state == "completed"
    assert done.result["provider"] == "heuristic"
    assert done.result["context_source"] == "title_hint"
    assert done.result["title"] == "Holiday in Lisbon"
    assert "refused" in details(events, "describe:anthropic")[0]
    assert "401" in details(events, "describe:anthropic")[0]


async def test_a_passing_failure_retries_the_same_provider(
        make_harness: MakeHarness, autojump_clock: MockClock, fake: MessagesFake) -> None:
    fake.queue(error("api_error", status=503), ok(json.dumps(VALID)))
    done, events = await run_one(
        make_harness, config("anthropic", "heuristic", extra="[supervisor]\n"),
        {"transcript": TRANSCRIPT, "duration_s": 120})
    assert done.state == "completed"
    assert done.result["provider"] == "anthropic"
    assert done.attempt == 2
    retry = next(e for e in events if e.type == "retry_scheduled")
    assert retry.error_class == "transient"
    assert "503" in (retry.detail or "")


async def test_payloads_are_checked_at_submission(make_harness: MakeHarness,
                                                  autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        for payload in ({}, {"duration_s": 10}, {"transcript": "   "},
                        {"transcript": "x", "colour": "red"}, {"title_hint": 5},
                        {"transcript": "x", "duration_s": -1}):
            with pytest.raises(RefusedError):
                await h.submit("ai.describe", payload)
