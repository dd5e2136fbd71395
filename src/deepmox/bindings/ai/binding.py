"""The AI binding as a daemon holds it: the configured providers, one gate
each, and what they cost so far.

Providers are tried in ``[ai] providers`` order by the describe steps
(:mod:`deepmox.actors.describe`). A provider that is not usable on this
machine (no ``claude`` on PATH, no API key) is skipped; the reason is logged
at start and shown by ``deepmox doctor``.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import msgspec
import trio

from ...actors.kind import StepContext
from ...config import Config, secret
from ...errors import AIError
from .anthropic_api import AnthropicProvider
from .claude_cli import ClaudeCliProvider
from .gate import Gate, GateStatistics
from .interface import Completion, ModelProvider, Prompt

log = logging.getLogger("deepmox.ai")

#: a call's timeout ends this long before the actor's budget, so that its
#: failure is classified (and recorded) rather than cut off by the budget
CALL_RESERVE_S = 0.5


class ProviderStatistics(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    #: why the provider is skipped here, or None when it is usable
    unusable: str | None
    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    gate: GateStatistics | None


@dataclass
class _Totals:
    calls: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class AI:
    """The providers of ``cfg.ai``, in order."""

    def __init__(self, cfg: Config, *, rng: random.Random | None = None) -> None:
        ai = cfg.ai
        self.order: list[str] = list(ai.providers)
        self.models: dict[str, ModelProvider] = {}
        self.gates: dict[str, Gate] = {}
        rng = rng or random.Random()
        # deepmox's own secrets stay out of the CLI's environment; the CLI's
        # (ANTHROPIC_API_KEY, its login) stay in
        ours = (cfg.d1.token_env, cfg.r2.access_key_env, cfg.r2.secret_key_env,
                cfg.server.token_env, cfg.server.read_token_env, "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        for name in self.order:
            provider: ModelProvider
            if name == "claude-cli":
                # a key from a credential file reaches the CLI too (under
                # systemd's DynamicUser it has no login of its own)
                key_name = ai.anthropic.api_key_env
                key = secret(key_name) if not os.environ.get(key_name) else None
                provider = ClaudeCliProvider(ai.claude_cli, secret_names=ours,
                                             extra_env={key_name: key} if key else None)
                limits = (ai.claude_cli.max_concurrent, ai.claude_cli.requests_per_minute)
            elif name == "anthropic":
                provider = AnthropicProvider(ai.anthropic)
                limits = (ai.anthropic.max_concurrent, ai.anthropic.requests_per_minute)
            else:
                continue
            self.models[name] = provider
            self.gates[name] = Gate(provider.upstream, limits[0], limits[1],
                                    hold_base_s=ai.hold_base_s, hold_max_s=ai.hold_max_s,
                                    rng=rng)
        self._unusable = {name: p.unusable() for name, p in self.models.items()}
        self._totals = {name: _Totals() for name in self.order}

    def unusable(self, name: str) -> str | None:
        """Why ``name`` is skipped on this daemon, or ``None``."""
        if name == "heuristic":
            return None
        if name not in self.models:
            return "not configured"
        return self._unusable[name]

    def log_usability(self) -> None:
        for name in self.order:
            reason = self.unusable(name)
            if reason is None:
                log.info("ai provider %s is usable", name,
                         extra={"event": "ai_provider_usable"})
            else:
                log.warning("ai provider %s is skipped: %s", name, reason,
                            extra={"event": "ai_provider_skipped"})

    async def complete(self, ctx: StepContext, name: str, prompt: Prompt) -> Completion:
        """One call of provider ``name`` through its gate."""
        provider, gate = self.models[name], self.gates[name]
        totals = self._totals[name]
        workdir = None
        if provider.needs_workdir:
            workdir = ctx.scratch.path / f"ai-{name}"
            await trio.Path(workdir).mkdir(exist_ok=True)
        totals.calls += 1
        try:
            async with gate.call(ctx) as ticket:
                completion = await provider.complete(
                    prompt, timeout_s=ctx.remaining() - CALL_RESERVE_S, workdir=workdir)
                ticket.answered(completion)
        except AIError:
            totals.failed += 1
            raise
        totals.input_tokens += completion.usage.input_tokens
        totals.output_tokens += completion.usage.output_tokens
        totals.cost_usd += completion.usage.cost_usd or 0.0
        return completion

    def statistics(self) -> list[ProviderStatistics]:
        out = []
        for name in self.order:
            t = self._totals[name]
            gate = self.gates.get(name)
            out.append(ProviderStatistics(
                name=name, unusable=self.unusable(name), calls=t.calls, failed=t.failed,
                input_tokens=t.input_tokens, output_tokens=t.output_tokens,
                cost_usd=round(t.cost_usd, 8),
                gate=gate.statistics() if gate is not None else None))
        return out

    async def aclose(self) -> None:
        for provider in self.models.values():
            await provider.aclose()
