"""``ai.describe``, and the describe steps ``video.publish`` shares with it.

A kind that describes plans a ``context`` step (the text by source priority,
see :mod:`deepmox.bindings.ai.context`), then one step per provider in
``[ai] providers`` order, ``describe:<provider>``, each checkpointed on its
own -- so a provider's invalid answer is never asked for twice:

- a provider not usable on this daemon: ``skipped``, the next one is tried;
- an answer that fails validation: one repair request quoting the errors;
  still invalid: ``invalid``, the next one is tried;
- a refusal for good (auth, billing, a spend cap): ``refused``, the next one;
- a passing failure or a throttle: raised, so the job waits for the same
  provider (it does not fall back to a lesser one for a blip);
- none left: the job fails, ``permanent``, with every provider's reasons.

Each describe step notes what its calls cost on its event; the metadata
carries the job's totals.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec

from ..bindings.ai import heuristic, prompt, validate
from ..bindings.ai.context import Context, choose
from ..bindings.ai.interface import Completion, Usage
from ..errors import AIPermanentError, PermanentError
from .kind import Kind, Step, StepContext

#: the declared cost of a model's describe step until runs teach better
MODEL_STEP_COST_S = 20.0
_Text = Annotated[str, msgspec.Meta(max_length=200_000)]


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One request to a provider, on the record."""

    provider: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    repair: bool = False


class Attempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The output of one ``describe:<provider>`` step."""

    provider: str
    #: "ok", "invalid", "refused" or "skipped"
    status: str
    metadata: dict[str, Any] | None = None
    errors: list[str] = []
    reason: str | None = None
    calls: list[Call] = []


def describe_steps(outputs: Mapping[str, Any]) -> list[Step]:
    """The describe steps after a ``context`` step: one per provider, until
    one gave valid metadata."""
    planned = outputs.get("context")
    if planned is None:
        return []
    steps = []
    for name in planned["providers"]:
        cost = 0.05 if name == heuristic.NAME else MODEL_STEP_COST_S
        steps.append(Step(f"describe:{name}", functools.partial(_describe, name=name), cost))
        done = outputs.get(f"describe:{name}")
        if done is None or done["status"] == "ok":
            break
    return steps


def attempts(outputs: Mapping[str, Any]) -> list[Attempt]:
    return [msgspec.convert(v, Attempt) for k, v in outputs.items()
            if k.startswith("describe:")]


def metadata(outputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The valid metadata of a finished describe, or ``None``."""
    for attempt in attempts(outputs):
        if attempt.status == "ok":
            return attempt.metadata
    return None


def total_usage(calls: Sequence[Call]) -> Usage:
    total = Usage()
    for c in calls:
        total = total + Usage(c.input_tokens, c.output_tokens, c.cost_usd)
    return total


def context_output(ctx: StepContext, context: Context) -> dict[str, Any]:
    """What a ``context`` step returns: the context, and the providers to try."""
    return {"context": msgspec.to_builtins(context),
            "providers": list(ctx.bindings.cfg.ai.providers)}


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cost_usd": usage.cost_usd}


def _note(ctx: StepContext, name: str, calls: Sequence[Call], status: str) -> None:
    if not calls:
        ctx.note(f"ai {name}: {status}")
        return
    parts = []
    for c in calls:
        cost = "price unknown" if c.cost_usd is None else f"${c.cost_usd:.6f}"
        parts.append(f"{'repair ' if c.repair else ''}{c.model or name} "
                     f"{c.input_tokens} in / {c.output_tokens} out tokens, {cost}")
    total = total_usage(calls)
    cost = "unknown" if total.cost_usd is None else f"${total.cost_usd:.6f}"
    ctx.note(f"ai {name}: {status}; {'; '.join(parts)}; total {cost}")


def _evaluate(text: str, duration_s: float | None) -> tuple[validate.Draft | None, list[str]]:
    draft, errors = validate.parse(text)
    if draft is None:
        return None, errors
    draft = validate.normalized(draft)
    errors = validate.check(draft, duration_s)
    return (draft if not errors else None), errors


def _record(name: str, c: Completion, *, repair: bool) -> Call:
    return Call(provider=name, model=c.model, input_tokens=c.usage.input_tokens,
                output_tokens=c.usage.output_tokens, cost_usd=c.usage.cost_usd, repair=repair)


async def _ask(ctx: StepContext, name: str, context: Context) -> Attempt:
    ai = ctx.bindings.require_ai()
    first = prompt.describe(context)
    calls: list[Call] = []
    try:
        answer = await ai.complete(ctx, name, first)
        calls.append(_record(name, answer, repair=False))
        _note(ctx, name, calls, "answered")
        draft, errors = _evaluate(answer.text, context.duration_s)
        if draft is None:
            again = await ai.complete(ctx, name, prompt.repair(first, answer.text, errors))
            calls.append(_record(name, again, repair=True))
            _note(ctx, name, calls, "repair answered")
            draft, errors = _evaluate(again.text, context.duration_s)
    except AIPermanentError as exc:
        return Attempt(provider=name, status="refused", reason=exc.message, calls=calls)
    if draft is None:
        return Attempt(provider=name, status="invalid", errors=errors, calls=calls)
    return Attempt(provider=name, status="ok", metadata=msgspec.to_builtins(draft), calls=calls)


def _status_text(a: Attempt) -> str:
    if a.status == "ok":
        return "valid metadata"
    if a.status == "invalid":
        return "invalid output after a repair request: " + "; ".join(a.errors)
    return f"{a.status} ({a.reason})"


def _summary(done: Sequence[Attempt]) -> str:
    return "no provider gave valid metadata: " + " | ".join(
        f"{a.provider}: {_status_text(a)}" for a in done)


async def _describe(ctx: StepContext, *, name: str) -> Any:
    planned = ctx.outputs["context"]
    context = msgspec.convert(planned["context"], Context)
    reason = ctx.bindings.require_ai().unusable(name)
    if reason is not None:
        attempt = Attempt(provider=name, status="skipped", reason=reason)
    elif name == heuristic.NAME:
        draft = validate.normalized(heuristic.describe(context))
        errors = validate.check(draft, context.duration_s)
        attempt = (Attempt(provider=name, status="ok", metadata=msgspec.to_builtins(draft))
                   if not errors else Attempt(provider=name, status="invalid", errors=errors))
    else:
        attempt = await _ask(ctx, name, context)
    earlier = attempts(ctx.outputs)
    last = name == planned["providers"][-1]
    # a failing last step's event says the errors once, in its message
    _note(ctx, name, attempt.calls,
          attempt.status if last and attempt.status != "ok" else _status_text(attempt))
    if attempt.status == "ok":
        assert attempt.metadata is not None
        usage = total_usage([c for a in (*earlier, attempt) for c in a.calls])
        meta = {**attempt.metadata, "provider": name, "context_source": context.source,
                "usage": _usage_dict(usage)}
        attempt = msgspec.structs.replace(attempt, metadata=meta)
    elif last:
        raise PermanentError(_summary([*earlier, attempt]))
    return msgspec.to_builtins(attempt)


# -- the ai.describe kind -------------------------------------------------------------


class DescribePayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    description: _Text | None = None
    transcript: _Text | None = None
    title_hint: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    duration_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] | None = None

    def __post_init__(self) -> None:
        if not any(t and t.strip() for t in (self.description, self.transcript,
                                             self.title_hint)):
            raise ValueError("give at least one of description, transcript, title_hint")


class Describe(Kind):
    """Metadata for a text: a title, a summary, tags and chapters."""

    name = "ai.describe"
    Payload = DescribePayload
    budget_s = 120.0

    def plan(self, payload: DescribePayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        return [Step("context", self._context, 0.01), *describe_steps(outputs)]

    def result(self, payload: DescribePayload, outputs: Mapping[str, Any]) -> Any:
        return metadata(outputs)

    async def _context(self, ctx: StepContext) -> Any:
        p: DescribePayload = ctx.payload
        context = choose(max_chars=ctx.bindings.cfg.ai.max_context_chars,
                         transcript=p.transcript, description=p.description,
                         title_hint=p.title_hint, duration_s=p.duration_s)
        return context_output(ctx, context)
