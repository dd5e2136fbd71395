"""/metrics content, rendered from a supervisor that ran real jobs.

Rules: the supervisor runs on the autojump clock against a real SQLite file;
the exposition text is parsed with prometheus-client's own parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from deepmox.api.metrics import DaemonCollector, registry_for, render

MakeHarness = Callable[..., Any]


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_outcomes_steps_and_d1(make_harness: MakeHarness,
                                                   autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        done = [await h.submit("noop") for _ in range(3)]
        bad = await h.submit("fail", {"error_class": "permanent"})
        retried = await h.submit("fail", {"error_class": "transient", "times": 1})
        async with h.supervisor() as sup:
            for job in [*done, bad, retried]:
                await h.wait_state(sup, job.id, "completed", "failed")
            counts = await h.client.counts()
            collector = DaemonCollector(sup, sup.d1, None, lambda: counts)
            text = render(registry_for(collector))
    got = samples(text)
    assert got[("deepmox_jobs", (("state", "completed"),))] == 4
    assert got[("deepmox_jobs", (("state", "failed"),))] == 1
    assert got[("deepmox_jobs_completed_total", (("kind", "noop"),))] == 3
    assert got[("deepmox_jobs_completed_total", (("kind", "fail"),))] == 1
    assert got[("deepmox_jobs_failed_total", (("error_class", "permanent"), ("kind", "fail")))] \
        == 1
    assert got[("deepmox_jobs_retried_total", (("error_class", "transient"),
                                               ("kind", "fail")))] == 1
    assert got[("deepmox_jobs_claimed_total", ())] == 6
    assert got[("deepmox_step_seconds_count", (("kind", "noop"), ("step", "noop")))] == 3
    assert got[("deepmox_budget_use_ratio_count", (("kind", "noop"),))] == 3
    assert got[("deepmox_d1_requests_total", ())] > 0
    assert got[("deepmox_pull_cycles_total", ())] > 0
