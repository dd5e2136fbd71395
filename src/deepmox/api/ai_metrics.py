"""The AI binding's figures for ``/metrics``: calls, failures, tokens and
dollars per provider, and each gate's state (in flight, strikes, window).

Read from the binding's own counters at scrape time, like every other
family the daemon exports: a call pays nothing for being measured.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..bindings.ai import AI


def ai_metrics(ai: AI) -> Iterator[Metric]:
    calls = CounterMetricFamily("deepmox_ai_requests", "Requests to AI providers",
                                labels=["provider"])
    failed = CounterMetricFamily("deepmox_ai_request_failures", "AI requests that failed "
                                 "(throttled, unavailable or refused)", labels=["provider"])
    tokens = CounterMetricFamily("deepmox_ai_tokens", "Tokens used by AI requests",
                                 labels=["provider", "direction"])
    cost = CounterMetricFamily("deepmox_ai_cost_usd", "What AI requests cost, in US dollars "
                               "(where the price is known)", labels=["provider"])
    usable = GaugeMetricFamily("deepmox_ai_provider_usable", "1 when the provider is usable "
                               "on this daemon", labels=["provider"])
    in_flight = GaugeMetricFamily("deepmox_ai_in_flight", "AI requests in flight",
                                  labels=["provider"])
    strikes = GaugeMetricFamily("deepmox_ai_strikes", "Consecutive failures of the provider's "
                                "upstream (0 when healthy)", labels=["provider"])
    window = GaugeMetricFamily("deepmox_ai_window", "AI requests the gate allows in flight "
                               "now", labels=["provider"])
    for p in ai.statistics():
        calls.add_metric([p.name], p.calls)
        failed.add_metric([p.name], p.failed)
        tokens.add_metric([p.name, "input"], p.input_tokens)
        tokens.add_metric([p.name, "output"], p.output_tokens)
        cost.add_metric([p.name], p.cost_usd)
        usable.add_metric([p.name], 0.0 if p.unusable else 1.0)
        if p.gate is not None:
            in_flight.add_metric([p.name], p.gate.in_flight)
            strikes.add_metric([p.name], p.gate.strikes)
            window.add_metric([p.name], p.gate.window)
    yield from (calls, failed, tokens, cost, usable, in_flight, strikes, window)
