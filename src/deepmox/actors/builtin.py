"""Built-in kinds for operators and tests: ``noop``, ``sleep``, ``fail``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
import trio

from ..errors import (
    BudgetExceededError,
    InvalidOutputError,
    JobError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from .kind import Kind, Step, StepContext


class NoopPayload(msgspec.Struct, forbid_unknown_fields=True):
    #: returned as the job's result
    value: Any = None


class Noop(Kind):
    """Does nothing, at once: measures the daemon's own cost per job."""

    name = "noop"
    Payload = NoopPayload

    def plan(self, payload: NoopPayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        async def run(ctx: StepContext) -> Any:
            return payload.value

        return [Step("noop", run)]


class SleepPayload(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 1.0
    steps: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1


class Sleep(Kind):
    """Sleeps ``seconds`` in ``steps`` equal steps: long sleeps need continuations."""

    name = "sleep"
    Payload = SleepPayload

    def plan(self, payload: SleepPayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        each = payload.seconds / payload.steps

        async def run(ctx: StepContext) -> Any:
            end = trio.current_time() + each
            while (left := end - trio.current_time()) > 0:
                ctx.report(1 - left / each if each else 1.0)
                await trio.sleep(min(left, 0.25))
            return each

        return [Step(f"sleep:{i}", run, cost_s=each) for i in range(payload.steps)]

    def result(self, payload: SleepPayload, outputs: Mapping[str, Any]) -> Any:
        return {"slept_s": sum(outputs.values())}


FailClass = Literal["transient", "rate_limited", "permanent", "budget_exceeded",
                    "invalid_output"]


class FailPayload(msgspec.Struct, forbid_unknown_fields=True):
    error_class: FailClass = "transient"
    #: how many runs fail before one succeeds
    times: Annotated[int, msgspec.Meta(ge=0, le=1_000)] = 1
    #: for rate_limited: the retry-after it reports
    retry_after: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 1.0
    upstream: str = "fail"


class Fail(Kind):
    """Fails ``times`` runs with ``error_class``, then succeeds: exercises the
    restart policies end to end."""

    name = "fail"
    Payload = FailPayload

    def plan(self, payload: FailPayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        async def run(ctx: StepContext) -> Any:
            if payload.error_class == "rate_limited":
                await ctx.wait_throttle(payload.upstream)
            if ctx.failures >= payload.times:
                return {"failures": ctx.failures}
            message = f"failing on purpose ({ctx.failures + 1} of {payload.times})"
            error: JobError
            match payload.error_class:
                case "transient":
                    error = TransientError(message)
                case "rate_limited":
                    error = RateLimitedError(message, upstream=payload.upstream,
                                             retry_after=payload.retry_after)
                case "permanent":
                    error = PermanentError(message)
                case "budget_exceeded":
                    error = BudgetExceededError(message)
                case _:
                    error = InvalidOutputError(message)
            raise error

        return [Step("fail", run)]


BUILTIN: tuple[type[Kind], ...] = (Noop, Sleep, Fail)
