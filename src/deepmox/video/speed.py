"""Encode speeds, learned per kind and rendition and kept in D1 so that every
node sizes its chunks from what every node has measured.

A speed is media seconds encoded per wall-clock second. Until one is known,
:data:`DEFAULT_SPEED` (a cautious guess for a small machine) is used.
"""

from __future__ import annotations

from ..bindings.d1 import D1
from ..bindings.d1.queries import Q

DEFAULT_SPEED = 1.0
#: a chunk should take about this share of the budget
CHUNK_BUDGET_SHARE = 0.5
MIN_CHUNK_S = 2.0
MAX_CHUNK_S = 600.0


async def known_speed(d1: D1, kind: str, rendition: str) -> float | None:
    row = (await d1.execute(Q["encode_speed"], kind, rendition)).first()
    return float(row["speed"]) if row else None


async def observe(d1: D1, kind: str, rendition: str, speed: float, now: float) -> None:
    if speed > 0:
        await d1.execute(Q["encode_speed_observe"], kind, rendition, speed, now)


def chunk_seconds(speed: float, budget_s: float) -> float:
    """How much media one chunk should hold so that it takes about half the budget."""
    return max(MIN_CHUNK_S, min(MAX_CHUNK_S, speed * budget_s * CHUNK_BUDGET_SHARE))
