"""The API for job kinds: an ordered list of named steps over a typed payload.

A kind declares its payload as a msgspec type (submissions are validated
against it) and plans its steps from the payload and the outputs of the steps
done so far -- so a kind can decide how many chunks to cut only after a probe
step has run. Each step is one idempotent unit of work with a deterministic
name (``transcode:480p:3``); its return value (JSON-able) is stored in the
checkpoint and handed to later steps and to :meth:`Kind.result`.

A step either finishes inside the budget, and its output is checkpointed, or
is redone by a later actor. At most one side effect per step; check before act.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol

import msgspec

if TYPE_CHECKING:
    from ..bindings import Bindings
    from .scratch import Scratch


class StepContext(Protocol):
    """What a running step may see and do."""

    job_id: str
    kind: str
    attempt: int
    #: the job's payload, decoded into the kind's ``Payload`` type
    payload: Any
    #: outputs of the steps done so far, by step name
    outputs: Mapping[str, Any]
    #: how many times this step failed before, over all earlier runs of this job
    failures: int
    #: the configuration and the bindings (d1, r2)
    bindings: Bindings
    #: local disk for this actor run only, under ``[limits] scratch_bytes``
    scratch: Scratch

    @property
    def step_times(self) -> Mapping[str, float]:
        """Seconds each finished step took, by step name."""
        ...

    def remaining(self) -> float:
        """Seconds left before this actor's budget (or the daemon's drain) ends."""
        ...

    def report(self, progress: float) -> None:
        """Progress inside the current step, 0..1 (for live views; not persisted)."""
        ...

    async def wait_throttle(self, upstream: str) -> None:
        """Call before touching ``upstream``. Returns at once when it is not
        throttled, waits when the throttle ends inside the remaining budget, and
        otherwise hands the job back to run again when the throttle ends (no
        attempt used)."""
        ...

    async def wait_until(self, when: float) -> None:
        """Wait until the wall-clock time ``when`` (Unix seconds) if it comes
        inside the remaining budget; otherwise hand the job back to run again
        at ``when`` (a continuation: no attempt used)."""
        ...

    def defer(self, run_at: float) -> NoReturn:
        """Hand the job back now, to run again at ``run_at`` (wall clock): a
        continuation, no attempt used."""
        ...

    def wall(self) -> float:
        """The wall clock (Unix seconds) that throttles and ``run_at`` use."""
        ...

    def throttled_until(self, upstream: str) -> float | None:
        """When ``upstream``'s throttle ends, as this daemon knows it (or ``None``)."""
        ...

    def block(self, upstream: str, until: float, reason: str) -> None:
        """Hold ``upstream`` for every actor of every daemon until ``until``
        (wall clock): on this daemon at once, in D1 with the next pull cycle.
        A throttle only ever grows."""
        ...

    def note(self, detail: str) -> None:
        """One line for this step's event in the timeline (what it cost, say);
        the last call of a step wins."""
        ...


StepFn = Callable[[StepContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    run: StepFn
    #: declared expected cost in seconds, used until runs of the step teach better
    cost_s: float = 0.0


class Kind:
    """Subclass and set :attr:`name` and :attr:`Payload`; implement :meth:`plan`."""

    name: ClassVar[str]
    #: a msgspec Struct (or any msgspec-decodable type) the payload must decode into
    Payload: ClassVar[Any] = dict[str, Any]
    #: the kind's default budget, when the configuration does not set one
    budget_s: ClassVar[float | None] = None

    def plan(self, payload: Any, outputs: Mapping[str, Any]) -> Sequence[Step]:
        raise NotImplementedError

    def result(self, payload: Any, outputs: Mapping[str, Any]) -> Any:
        """The job's result, once every step is done. Default: the last output."""
        return list(outputs.values())[-1] if outputs else None

    def decode(self, payload: Any) -> Any:
        """The payload as :attr:`Payload`; raises ``msgspec.ValidationError``."""
        return msgspec.convert(payload, self.Payload, strict=True)

    def decode_json(self, text: str) -> Any:
        """The payload from its stored JSON text; raises ``msgspec.ValidationError``
        or ``msgspec.DecodeError``."""
        return msgspec.json.decode(text, type=self.Payload)
