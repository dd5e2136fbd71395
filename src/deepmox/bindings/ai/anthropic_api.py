"""The ``anthropic`` provider: the Messages API through the SDK's AsyncAnthropic.

The SDK's own retries are off (``max_retries=0``): a retry the SDK made on its
own would honour ``retry-after`` without a cap and be invisible to the gate.
Every call gets a timeout from the actor's remaining budget. The base URL is
the SDK's (``ANTHROPIC_BASE_URL``, else Anthropic's), the key comes from
``[ai.anthropic] api_key_env`` (environment or systemd credential).

How answers map to error classes, decided here once:

=======================================  =========================================
400, 401, 402, 403, 404, 413             permanent (the next provider is tried)
429 with ``retry-after``                 rate_limited, for that long, for everyone
429 without it (a spend or usage cap)    permanent, saying so
500, 502, 503, 504, other 5xx            transient (and a growing hold)
529 overloaded                           rate_limited, a growing wait
a timeout, a refused or reset connection transient (and a growing hold)
=======================================  =========================================

Successful answers carry ``anthropic-ratelimit-requests-remaining`` and
``-reset``; the gate paces by them.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import AnthropicConfig, secret
from ...errors import AIPermanentError, AIRateLimitedError, AIUnavailableError
from .interface import Completion, Prompt, RateInfo, Usage

if TYPE_CHECKING:
    import anthropic

NAME = "anthropic"
UPSTREAM = "ai:anthropic"
PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404, 413})


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``retry-after`` in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_rate(headers: Mapping[str, str]) -> RateInfo | None:
    remaining = headers.get("anthropic-ratelimit-requests-remaining")
    reset = headers.get("anthropic-ratelimit-requests-reset")
    if remaining is None or reset is None:
        return None
    limit = headers.get("anthropic-ratelimit-requests-limit")
    try:
        when = datetime.datetime.fromisoformat(reset.replace("Z", "+00:00"))
        return RateInfo(remaining=int(remaining), reset_at=when.timestamp(),
                        limit=int(limit) if limit is not None else None)
    except ValueError:
        return None


def _error_text(exc: anthropic.APIStatusError) -> str:
    body: Any = exc.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return f"{err.get('type', 'error')}: {str(err.get('message', ''))[:300]}"
    return str(exc.message)[:300]


def classify(exc: anthropic.APIStatusError, now: float) -> Exception:
    """The deepmox error for an error answer."""
    status = exc.status_code
    what = f"the Messages API answered {status} ({_error_text(exc)})"
    if status == 429:
        wait = parse_retry_after(exc.response.headers.get("retry-after"), now)
        if wait is None:
            return AIPermanentError(f"{what} without retry-after: a spend or usage cap, "
                                    "not a passing limit")
        return AIRateLimitedError(what, upstream=UPSTREAM, retry_after=wait)
    if status == 529:
        return AIRateLimitedError(what, upstream=UPSTREAM, retry_after=0.0, overloaded=True)
    if status in PERMANENT_STATUSES:
        return AIPermanentError(what)
    if status >= 500 or status == 408:
        return AIUnavailableError(what, upstream=UPSTREAM)
    return AIPermanentError(what)


class AnthropicProvider:
    name = NAME
    upstream = UPSTREAM
    needs_workdir = False

    def __init__(self, cfg: AnthropicConfig, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._key = secret(cfg.api_key_env)
        self._client: anthropic.AsyncAnthropic | None = None
        self._wall = wall

    def unusable(self) -> str | None:
        if not self._key:
            return (f"no API key: ${self.cfg.api_key_env} is not set (nor a credential "
                    "of that name)")
        return None

    def _open(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            # the SDK is imported once the provider is used: it costs the
            # process about 50 MB, which a daemon without an API key (or
            # with another provider first) should not carry
            import anthropic

            self._client = anthropic.AsyncAnthropic(api_key=self._key, max_retries=0)
        return self._client

    def price(self, model: str, usage: Usage) -> float | None:
        p = self.cfg.price(model)
        if p is None:
            return None
        return round(usage.input_tokens / 1e6 * p.input_per_mtok
                     + usage.output_tokens / 1e6 * p.output_per_mtok, 8)

    async def complete(self, prompt: Prompt, *, timeout_s: float,
                       workdir: Path | None = None) -> Completion:
        import anthropic  # imported by _open already: a lookup

        client = self._open()
        messages: Any = [{"role": t.role, "content": t.text} for t in prompt.turns]
        try:
            raw = await client.messages.with_raw_response.create(
                model=self.cfg.model, max_tokens=self.cfg.max_tokens, system=prompt.system,
                messages=messages, timeout=max(0.1, timeout_s))
            message = await raw.parse()
        except anthropic.APITimeoutError as exc:
            raise AIUnavailableError(f"the Messages API did not answer within {timeout_s:.1f} s",
                                     upstream=UPSTREAM) from exc
        except anthropic.APIConnectionError as exc:
            raise AIUnavailableError(f"cannot reach the Messages API: {exc.message}",
                                     upstream=UPSTREAM) from exc
        except anthropic.APIStatusError as exc:
            raise classify(exc, self._wall()) from exc
        except anthropic.APIResponseValidationError as exc:
            raise AIUnavailableError(f"the Messages API's answer is not one the SDK reads: "
                                     f"{exc.message}", upstream=UPSTREAM) from exc
        text = "".join(b.text for b in message.content if b.type == "text")
        u = message.usage
        tokens_in = (u.input_tokens + (u.cache_creation_input_tokens or 0)
                     + (u.cache_read_input_tokens or 0))
        usage = Usage(tokens_in, u.output_tokens, None)
        usage = Usage(usage.input_tokens, usage.output_tokens, self.price(message.model, usage))
        return Completion(text=text, usage=usage, model=message.model,
                          rate=parse_rate(raw.headers))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
