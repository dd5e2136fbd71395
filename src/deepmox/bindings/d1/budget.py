"""The D1 REST request budget: a token bucket every call spends from.

Cloudflare allows about 1,200 REST requests per 5 minutes per account and
blocks the account for 5 minutes when that is exceeded. A plain bucket with
rate ``N/300`` and a burst would still let ``burst + N`` requests through in a
5-minute window, so this one refills at 90% of the rate and keeps a burst of
10%: no 5-minute window can ever see more than ``N`` requests.
"""

from __future__ import annotations

import trio

WINDOW_S = 300.0


class RequestBudget:
    def __init__(self, requests_per_window: int, *, window_s: float = WINDOW_S) -> None:
        self.capacity = max(1.0, requests_per_window * 0.1)
        self.rate_per_s = requests_per_window * 0.9 / window_s
        self._tokens = self.capacity
        self._stamp: float | None = None
        self._lock = trio.Lock()

    def _refill(self) -> None:
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def remaining(self) -> float:
        """Requests that may be sent now without waiting."""
        if self._stamp is None:
            return self._tokens
        self._refill()
        return self._tokens

    def wait_s(self) -> float:
        """How long until one request may be sent."""
        tokens = self.remaining()
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate_per_s

    async def acquire(self) -> None:
        """Take one request from the budget, waiting until there is one.
        Callers are served one at a time, in order."""
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await trio.sleep((1 - self._tokens) / self.rate_per_s)
                self._refill()
                # the whole wait has passed: the token is ours, whatever the
                # float arithmetic of the refill says
                self._tokens = max(self._tokens, 1.0)
            self._tokens -= 1
