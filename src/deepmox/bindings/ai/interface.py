"""What every inference provider speaks: prompts in, completions out.

A *model provider* (``claude-cli``, ``anthropic``) turns a :class:`Prompt`
into a :class:`Completion` and translates every failure of its own into one
of the AI families of :mod:`deepmox.errors`, once, where it saw it:

==========================  =================================================
:class:`~deepmox.errors.AIUnavailableError`    5xx, reset connections, timeouts, a CLI
                            that crashed or printed garbage: retried with
                            backoff, the upstream held for everyone
:class:`~deepmox.errors.AIRateLimitedError`    429 with ``retry-after``; 529 overloaded
                            (``overloaded``: the gate picks a growing wait)
:class:`~deepmox.errors.AIPermanentError`      refused for good: auth, billing, a spend
                            cap, a bad request; the next provider is tried
==========================  =================================================

The ``heuristic`` provider needs no prompt: it describes a :class:`Context`
itself (:mod:`.heuristic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import msgspec

Role = Literal["user", "assistant"]


class Turn(msgspec.Struct, frozen=True):
    role: Role
    text: str


class Prompt(msgspec.Struct, frozen=True):
    """A conversation: the system text, then turns that start with the user's."""

    system: str
    turns: tuple[Turn, ...]

    def flat(self) -> str:
        """The whole conversation as one text, for a provider that takes one."""
        parts = [self.system]
        for turn in self.turns:
            if turn.role == "assistant":
                parts.append(f"Your previous answer was:\n{turn.text}")
            else:
                parts.append(turn.text)
        return "\n\n".join(parts)


class Usage(msgspec.Struct, frozen=True):
    """What calls cost: tokens, and US dollars when the price is known."""

    input_tokens: int = 0
    output_tokens: int = 0
    #: ``None`` when the model's price is not known (see ``[ai.anthropic] prices``)
    cost_usd: float | None = 0.0

    def __add__(self, other: Usage) -> Usage:
        cost = (None if self.cost_usd is None and other.cost_usd is None
                else round((self.cost_usd or 0.0) + (other.cost_usd or 0.0), 8))
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens, cost)


class RateInfo(msgspec.Struct, frozen=True):
    """The upstream's own count of what is left (Anthropic's
    ``anthropic-ratelimit-requests-remaining`` and ``-reset`` headers)."""

    remaining: int
    #: wall-clock time (Unix seconds) when the limit is fully replenished
    reset_at: float
    #: requests the limit allows per period, when the upstream says
    limit: int | None = None


class Completion(msgspec.Struct, frozen=True):
    text: str
    usage: Usage
    model: str | None = None
    rate: RateInfo | None = None


class ModelProvider(Protocol):
    """``claude-cli`` or ``anthropic``."""

    #: the name in ``[ai] providers``
    name: str
    #: the throttle every node shares for it (``ai:<name>``)
    upstream: str
    #: whether :meth:`complete` needs its ``workdir`` (a child process runs there)
    needs_workdir: bool

    def unusable(self) -> str | None:
        """Why this provider cannot be used on this machine, or ``None``."""
        ...

    async def complete(self, prompt: Prompt, *, timeout_s: float,
                       workdir: Path | None) -> Completion:
        """One call. ``timeout_s`` comes from the actor's remaining budget;
        ``workdir`` is an empty folder of the actor's own for a provider that
        ``needs_workdir``, else ``None``."""
        ...

    async def aclose(self) -> None: ...
