"""Bucketed observations per label tuple: a few list operations to observe,
read by the metrics collector at scrape time."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

#: label sets kept per histogram before new ones are folded into "other"
MAX_SERIES = 500


class Histograms:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._data: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self._data.get(labels)
        if row is None:
            if len(self._data) >= MAX_SERIES:
                labels = tuple("other" for _ in labels)
                row = self._data.get(labels)
            if row is None:
                row = self._data[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def rows(self) -> Iterator[tuple[tuple[str, ...], list[float], float]]:
        """(labels, cumulative counts per bucket and +Inf, sum of values)."""
        for labels, row in sorted(self._data.items()):
            cumulative: list[float] = []
            total = 0.0
            for count in row[:-1]:
                total += count
                cumulative.append(total)
            yield labels, cumulative, row[-1]
