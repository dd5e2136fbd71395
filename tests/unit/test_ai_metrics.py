"""The AI binding's /metrics families, from a supervisor that ran
``ai.describe`` jobs against the Messages API fake (autojump clock).

Rules: the exposition text is rendered and parsed with prometheus-client's own
parser; the figures must match what the fake was asked and answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from deepmox.api.ai_metrics import ai_metrics
from deepmox.api.metrics import DaemonCollector, registry_for, render
from tests.fakes.messages_server import error, ok, serve_messages
from tests.unit.conftest import wall
from tests.unit.test_describe import VALID, config
from tests.unit.test_metrics import samples

MakeHarness = Callable[..., Any]


async def test_ai_calls_tokens_and_cost(make_harness: MakeHarness, autojump_clock: MockClock,
                                        nursery: trio.Nursery,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await serve_messages(nursery, wall=wall)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-made-up-metrics")
    fake.queue(error("api_error"), ok(json.dumps(VALID), input_tokens=1000, output_tokens=100),
               ok(json.dumps(VALID), input_tokens=1000, output_tokens=100))
    async with make_harness(config("anthropic", "heuristic")) as h:
        jobs = [await h.submit("ai.describe", {"transcript": "bread"}) for _ in range(2)]
        async with h.supervisor() as sup:
            for job in jobs:
                await h.wait_state(sup, job.id, "completed")
            ai = sup.bindings.require_ai()
            collector = DaemonCollector(sup, sup.d1, None, dict,
                                        extra=lambda: ai_metrics(ai))
            got = samples(render(registry_for(collector)))
    await fake.shutdown()
    a = (("provider", "anthropic"),)
    assert got[("deepmox_ai_requests_total", a)] == 3
    assert got[("deepmox_ai_request_failures_total", a)] == 1
    assert got[("deepmox_ai_tokens_total", (("direction", "input"), *a))] == 2000
    assert got[("deepmox_ai_tokens_total", (("direction", "output"), *a))] == 200
    assert got[("deepmox_ai_cost_usd_total", a)] == pytest.approx(2 * (0.002 + 0.001))
    assert got[("deepmox_ai_provider_usable", a)] == 1
    assert got[("deepmox_ai_provider_usable", (("provider", "heuristic"),))] == 1
    assert got[("deepmox_ai_in_flight", a)] == 0
    assert got[("deepmox_ai_strikes", a)] == 0
