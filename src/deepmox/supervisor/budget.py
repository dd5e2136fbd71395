"""Expected step costs: declared, then learned from the step's earlier runs.

Before a step, the runner compares the remaining budget with the step's
expected cost; a step that will not fit is left for a fresh actor (a
continuation). Costs are learned per kind and step *family* -- the step's name
without its numeric parts (``sleep:3`` and ``sleep:4`` are one family) -- as an
exponentially weighted mean that leans towards the slower runs, so one fast
run does not talk the runner into starting a step it cannot finish.
"""

from __future__ import annotations

import re

_NUMBERS = re.compile(r":\d+(?=:|$)")
ALPHA = 0.3
#: only start a step whose expected cost is at most this share of what remains
SAFETY = 0.9


def family(step: str) -> str:
    return _NUMBERS.sub(":#", step)


class CostModel:
    def __init__(self) -> None:
        self._mean: dict[tuple[str, str], float] = {}
        self._families: dict[str, str] = {}

    def _key(self, kind: str, step: str) -> tuple[str, str]:
        fam = self._families.get(step)
        if fam is None:
            fam = family(step)
            if len(self._families) < 100_000:
                self._families[step] = fam
        return kind, fam

    def expect(self, kind: str, step: str, declared: float) -> float:
        learned = self._mean.get(self._key(kind, step))
        return declared if learned is None else max(learned, declared * 0.5)

    def observe(self, kind: str, step: str, seconds: float) -> None:
        key = self._key(kind, step)
        old = self._mean.get(key)
        if old is None:
            self._mean[key] = seconds
        else:
            # slower runs weigh more than faster ones
            alpha = ALPHA if seconds < old else 2 * ALPHA
            self._mean[key] = old + alpha * (seconds - old)

    def fits(self, expected: float, remaining: float) -> bool:
        return expected <= remaining * SAFETY
