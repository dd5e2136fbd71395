"""One pull cycle as one D1 request.

Everything the supervisor has to tell or ask the database goes out together,
in this order, as one atomic batch:

0. the statements of local submissions riding this cycle (so its claim
   sees the new jobs);
1. ``lease_lost`` notes and throttle extensions that piled up;
2. the acknowledgements (checkpoints and outcomes, fenced by lease token)
   and their events; which took effect comes back from ``RETURNING`` (or,
   for acks sent again after a lost answer, from ``last_ack``);
3. reap: expired leases back to pending (class zombie), or failed when their
   attempts are spent;
4. claim: up to the free actor slots, per kind where kinds have limits, with
   one fresh lease token, and the ``claimed`` events;
5. adopt: rows claimed by an earlier cycle whose answer was lost;
6. the active throttles, for every actor's :meth:`wait_throttle`;
7. while feed clients listen: the fleet's events since the last one seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from ..bindings.d1 import Result, Statement
from ..bindings.d1.queries import Q
from ..jobs import Claimed, claimed_from_row, dumps


class Ack(msgspec.Struct, kw_only=True):
    """One fenced write of an actor, as a row of the ``ack`` statement's JSON."""

    id: str
    tok: str
    ack: str
    state: str
    event: str
    ts: float
    attempt_delta: int = 0
    run_at: float | None = None
    has_checkpoint: bool = False
    checkpoint: str | None = None
    progress: float | None = None
    step: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    detail: str | None = None
    result: str | None = None
    deferred_add: float = 0.0


_encode = msgspec.json.Encoder().encode
#: events fetched per cycle for the live feed
TAIL_LIMIT = 2_000


@dataclass(slots=True)
class ClaimSpec:
    kinds: list[str]
    cap: int


@dataclass(slots=True)
class Cycle:
    """The statements of one cycle and where each answer will be."""

    statements: list[Statement] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    ack_check: int | None = None
    reap: int | None = None
    claims: list[int] = field(default_factory=list)
    adopt: int | None = None
    tail: int | None = None
    throttles: int | None = None

    def add(self, sql: str, *params: object) -> int:
        self.statements.append(Statement(sql, params))
        return len(self.statements) - 1


def build(*, head: Sequence[Statement] = (), now: float, node: str, acks: Sequence[Ack],
          lost: Sequence[dict[str, str]],
          throttles: Sequence[dict[str, object]], claims: Sequence[ClaimSpec], free: int,
          token: str, leases: dict[str, float], default_lease_s: float,
          adopt_tokens: Sequence[str], resent: bool = False,
          tail_after: int | None = None, housekeeping: bool = True) -> Cycle:
    """``resent``: some acks went out before in a request whose answer was
    lost; then which took effect is asked of ``last_ack``, not of this
    request's ``RETURNING``. ``housekeeping``: reap expired leases and read
    the throttles in this cycle (a few times a second is enough; a cycle
    without them is leaner, which is what a single submission waits on).
    ``head``: statements that go first (riding submissions), their results
    the first of the answer."""
    c = Cycle(statements=list(head))
    if lost:
        c.add(Q["lease_lost_events"], now, node, dumps(list(lost)))
    if throttles:
        c.add(Q["throttle_extend"], now, dumps(list(throttles)))
    if acks:
        # completions without a note for their event take the lean path
        done = [a for a in acks if a.state == "completed" and a.detail is None]
        other = ([a for a in acks if a.state != "completed" or a.detail is not None]
                 if len(done) < len(acks) else [])
        if done:
            rows = _encode([[a.id, a.tok, a.ts, a.step, a.ack, a.result, a.checkpoint]
                            for a in done]).decode()
            c.add(Q["complete_events"], rows, node)
            c.acks.append(c.add(Q["complete"], rows))
        if other:
            payload = _encode(other).decode()
            c.add(Q["ack_events"], payload, node)
            c.acks.append(c.add(Q["ack"], payload))
        if resent:
            c.ack_check = c.add(Q["ack_check"], _encode(list(acks)).decode())
    if housekeeping:
        c.add(Q["reap_failed_events"], now, node, now)
        c.add(Q["reap_events"], now, node, now)
        c.reap = c.add(Q["reap"], now, now, now, now)
    if free > 0 and claims:
        leases_json = dumps(leases)
        for spec in claims:
            c.claims.append(c.add(
                Q["claim"], now, leases_json, default_lease_s, token, node, now, now,
                dumps(spec.kinds), min(spec.cap, free), free, token))
        c.add(Q["claimed_events"], now, token)
    if adopt_tokens:
        c.adopt = c.add(Q["adopt"], dumps(list(adopt_tokens)))
    if housekeeping:
        c.throttles = c.add(Q["throttles_active"], now)
    if tail_after is not None:
        c.tail = c.add(Q["tail_events"], tail_after, TAIL_LIMIT)
    return c


def claimed_rows(cycle: Cycle, results: Sequence[Result]) -> list[Claimed]:
    out: list[Claimed] = []
    for i in [*cycle.claims, *([cycle.adopt] if cycle.adopt is not None else [])]:
        out.extend(claimed_from_row(row) for row in results[i].rows)
    return out
