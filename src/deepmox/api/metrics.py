"""Prometheus metrics, read from the daemon's own counters at scrape time.

Nothing is incremented through prometheus-client on the hot path: the
supervisor, the bindings and the histograms below keep plain counters, and
:class:`DaemonCollector` turns them into metric families when ``/metrics`` is
scraped. A job costs a few dictionary increments, not a lock per metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..supervisor.histograms import Histograms

if TYPE_CHECKING:
    from ..bindings.d1 import D1
    from ..bindings.r2 import R2
    from ..supervisor import Supervisor



def _histogram(h: Histograms, name: str, doc: str,
               label_names: Sequence[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(label_names))
    bounds = [repr(b) for b in h.buckets] + ["+Inf"]
    for labels, cumulative, total in h.rows():
        family.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
    return family


class DaemonCollector:
    """Everything ``/metrics`` shows, collected from live objects."""

    def __init__(self, supervisor: Supervisor, d1: D1, r2: R2 | None,
                 counts: Callable[[], dict[str, int]],
                 extra: Callable[[], Iterator[Metric]] | None = None) -> None:
        self.supervisor = supervisor
        self.d1 = d1
        self.r2 = r2
        self.counts = counts
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        stats = sup.statistics()
        jobs = GaugeMetricFamily("deepmox_jobs", "Jobs in the database by state "
                                 "(refreshed every few seconds)", labels=["state"])
        for state, n in sorted(self.counts().items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("deepmox_actors_running", "Actors running on this daemon",
                                value=stats.running)
        yield CounterMetricFamily("deepmox_jobs_claimed", "Jobs claimed by this daemon",
                                  value=stats.claimed)
        outcomes = {
            "completed": CounterMetricFamily("deepmox_jobs_completed",
                                             "Jobs completed, by kind", labels=["kind"]),
            "failed": CounterMetricFamily("deepmox_jobs_failed", "Jobs failed, by kind and "
                                          "error class", labels=["kind", "error_class"]),
            "retried": CounterMetricFamily("deepmox_jobs_retried", "Retries scheduled, by "
                                           "kind and error class",
                                           labels=["kind", "error_class"]),
            "continued": CounterMetricFamily("deepmox_jobs_continued",
                                             "Continuations, by kind", labels=["kind"]),
            "released": CounterMetricFamily("deepmox_jobs_released",
                                            "Jobs handed back at shutdown", labels=["kind"]),
        }
        for (counter, kind, error_class), n in sorted(sup.outcomes.items()):
            family = outcomes[counter]
            labels = [kind, error_class] if counter in ("failed", "retried") else [kind]
            family.add_metric(labels, n)
        yield from outcomes.values()
        yield CounterMetricFamily("deepmox_jobs_reaped", "Expired leases reaped by this "
                                  "daemon's pull cycles", value=stats.reaped)
        yield CounterMetricFamily("deepmox_lease_lost", "Actor writes dropped because the "
                                  "lease was lost", value=stats.lease_lost)
        yield CounterMetricFamily("deepmox_pull_cycles", "Pull cycles that reached D1",
                                  value=stats.cycles)
        yield CounterMetricFamily("deepmox_pull_cycles_failed", "Pull cycles that failed",
                                  value=stats.failed_cycles)
        yield _histogram(sup.step_seconds, "deepmox_step_seconds", "Step durations",
                         ["kind", "step"])
        yield _histogram(sup.budget_use, "deepmox_budget_use_ratio",
                         "Share of the budget an actor run used", ["kind"])
        d1 = self.d1.statistics()
        yield CounterMetricFamily("deepmox_d1_requests", "Requests (or transactions) sent "
                                  "to D1", value=d1.requests)
        yield CounterMetricFamily("deepmox_d1_statements", "Statements sent to D1",
                                  value=d1.statements)
        yield CounterMetricFamily("deepmox_d1_errors", "D1 requests that failed",
                                  value=d1.errors)
        yield CounterMetricFamily("deepmox_d1_request_seconds", "Time spent in D1 requests",
                                  value=d1.seconds)
        if d1.budget_remaining is not None:
            yield GaugeMetricFamily("deepmox_d1_budget_remaining", "REST requests this "
                                    "daemon may send now without waiting",
                                    value=d1.budget_remaining)
        if self.r2 is not None:
            r2 = self.r2.statistics()
            moved = CounterMetricFamily("deepmox_r2_bytes", "Object bytes moved",
                                        labels=["direction"])
            moved.add_metric(["up"], r2.bytes_up)
            moved.add_metric(["down"], r2.bytes_down)
            yield moved
            yield CounterMetricFamily("deepmox_r2_requests", "Calls to the object store",
                                      value=r2.requests)
            yield CounterMetricFamily("deepmox_r2_errors", "Object store calls that failed",
                                      value=r2.errors)
        if self.extra is not None:
            yield from self.extra()


def registry_for(collector: DaemonCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class _Collected:
    """Metric families collected earlier, served as they were."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def collect_now(collector: DaemonCollector) -> CollectorRegistry:
    """A registry holding what ``collector`` shows now, to render anywhere.

    Call it on the event loop: collecting reads objects only the loop may
    touch -- the supervisor's dictionaries, which actors change as it reads,
    and the D1 REST budget, which asks trio for the time and raises
    ``RuntimeError`` in a worker thread. Rendering the text is the slow part,
    and only that belongs in a thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(list(collector.collect())))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (``text/plain; version=0.0.4``)."""
    return generate_latest(registry)


__all__ = ["DaemonCollector", "collect_now", "registry_for", "render"]
