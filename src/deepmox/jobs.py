"""Jobs and their timeline: the records every other module talks about.

A job is a row in D1 ``jobs``; every transition appends a row to
``job_events``. Timestamps are Unix seconds (floats) taken from the wall clock
of the node that made the change, because leases are compared across nodes.
"""

from __future__ import annotations

import os
import time
from enum import StrEnum
from typing import Any

import msgspec


class JobState(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class EventType(StrEnum):
    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    STEP_COMPLETED = "step_completed"
    CONTINUED = "continued"
    RETRY_SCHEDULED = "retry_scheduled"
    REAPED = "reaped"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"
    RELEASED = "released"
    RETRIED = "retried"


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as clients see it (``deepmox status --json``, the HTTP API)."""

    id: str
    kind: str
    state: JobState
    payload: Any
    priority: int
    run_at: float
    attempt: int
    max_attempts: int
    progress: float
    step: str | None
    error_class: str | None
    error_message: str | None
    result: Any
    idempotency_key: str | None
    lease_owner: str | None
    lease_until: float | None
    created_at: float
    updated_at: float
    finished_at: float | None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a job's timeline (``deepmox events --json``)."""

    id: int
    job_id: str
    type: EventType
    ts: float
    attempt: int
    state: JobState
    progress: float
    step: str | None
    error_class: str | None
    detail: str | None
    node: str | None


class Claimed(msgspec.Struct, frozen=True):
    """What an actor starts from: its job row as the claim returned it."""

    id: str
    kind: str
    #: the stored JSON text, decoded by the actor (a broken row fails only its job)
    payload: str
    attempt: int
    max_attempts: int
    lease_token: str
    lease_until: float
    checkpoint: str | None
    progress: float
    deferred_s: float
    #: why the row cannot be run, when it was written with columns of the
    #: wrong types: its actor fails it as permanent at once
    broken: str | None = None


_CLAIMED_FIELDS = Claimed.__struct_fields__[:-1]


def claimed_from_row(row: list[Any]) -> Claimed:
    """A claimed row as an actor starts from it. A row written broken (text
    in a number's column, a float attempt) cannot crash the supervisor: it
    comes back with its numbers neutral and :attr:`Claimed.broken` saying
    what is wrong; the id, kind and lease are the claim's own, always sound."""
    try:
        return msgspec.convert(dict(zip(_CLAIMED_FIELDS, row, strict=True)), Claimed)
    except msgspec.ValidationError as exc:
        job_id, kind, _, attempt, _, token, lease_until, *_ = row
        return Claimed(id=str(job_id), kind=str(kind), payload="null",
                       attempt=attempt if type(attempt) is int else 1, max_attempts=1,
                       lease_token=str(token), lease_until=float(lease_until), checkpoint=None,
                       progress=0.0, deferred_s=0.0,
                       broken=f"the job's row holds a value of the wrong type: {exc}")


# -- ids ------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now: float | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds, 80 random bits, so ids sort
    by creation time and never collide across nodes."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()


def dumps(value: Any) -> str:
    return _JSON_ENCODER.encode(value).decode()


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return _JSON_DECODER.decode(text)


_JOB_FIELDS = [
    "id", "kind", "state", "payload", "priority", "run_at", "attempt", "max_attempts",
    "progress", "step", "error_class", "error_message", "result", "idempotency_key",
    "lease_owner", "lease_until", "created_at", "updated_at", "finished_at",
]
#: qualified, because several queries join ``jobs`` with ``json_each`` (which has an ``id``)
JOB_COLUMNS = ", ".join(f"jobs.{f}" for f in _JOB_FIELDS)
EVENT_COLUMNS = "id, job_id, type, ts, attempt, state, progress, step, error_class, detail, node"


def _loads_or_raw(text: Any) -> Any:
    """A stored JSON column, or its raw text when a row was written broken
    (reads must show such a row, not fail on it)."""
    if not isinstance(text, (str, bytes)):
        return text
    try:
        return _JSON_DECODER.decode(text)
    except (ValueError, RecursionError):  # not JSON, or not UTF-8 (a blob)
        return text


def job_from_row(row: dict[str, Any]) -> Job:
    data = dict(row)
    data["payload"] = _loads_or_raw(data["payload"])
    data["result"] = _loads_or_raw(data["result"])
    try:
        return msgspec.convert(data, Job)
    except msgspec.ValidationError:
        return _readable(data)


#: what a column that cannot be read shows instead, by the Job field's type
_NEUTRAL: dict[str, Any] = {"int": 0, "float": 0.0}


def _readable(data: dict[str, Any]) -> Job:
    """A row written with values of the wrong types (text in a number's
    column, a state deepmox never writes), shown rather than refused: one
    such row must not break every listing. Each unreadable value is replaced
    by a neutral one, an unknown state shows as ``failed``, and the error
    message says which columns were unreadable. The row itself is left as it
    is (a newer daemon may know its state)."""
    fields = {f.name: f for f in msgspec.structs.fields(Job)}
    bad: list[str] = []
    for name, value in data.items():
        field = fields.get(name)
        if field is None:
            continue
        try:
            msgspec.convert({name: value}, msgspec.defstruct("_One", [(name, field.type)]))
        except msgspec.ValidationError:
            bad.append(f"{name}={value!r}"[:80])
            if name == "state":
                data[name] = JobState.FAILED.value
            elif field.type in (int, float):
                data[name] = _NEUTRAL[field.type.__name__]
            elif field.type is str:
                data[name] = str(value)
            else:
                data[name] = None
    note = f"the row holds values deepmox cannot read: {', '.join(bad)}"
    data["error_message"] = note if not isinstance(data.get("error_message"), str) else \
        f"{data['error_message']} ({note})"
    return msgspec.convert(data, Job)


def event_from_row(row: dict[str, Any]) -> Event:
    return msgspec.convert(row, Event)
