"""Rows written straight into the database, broken: payloads and checkpoints
that are not JSON or not the kind's shape, wrong SQLite types in every
column an actor reads, absurd numbers, unknown kinds, states nobody sets.

Rules: each example inserts one hostile row beside a good ``noop`` job into a
fresh SQLite file, runs a supervisor on the autojump clock until the good
job completes and the hostile row has settled, and checks:

* the supervisor never raised (a row cannot crash the daemon);
* the good job completed (the daemon went on);
* a claimable row whose data is broken failed **permanent** with a message
  saying what was wrong; one whose data is sound completed;
* a row nobody may run (unknown kind, not due, a state the daemon never
  writes) was left exactly as it was.

The expected outcome is computed from the row with the kind's own decoder,
not hard-coded. Times are virtual; nothing sleeps on the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from deepmox.actors.actor import Checkpoint
from deepmox.actors.registry import Registry
from deepmox.jobs import TERMINAL_STATES
from tests.unit.conftest import BASE

MakeHarness = Callable[..., Any]
REGISTRY = Registry.load()

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


#: payloads: sound ones (short sleeps, noops), the kind's fields with wrong
#: types, random JSON, text that is not JSON, deep nesting, binary
_payloads = st.one_of(
    st.builds(lambda s, n: _dumps({"seconds": s, "steps": n}),
              st.floats(0, 3), st.integers(1, 3)),
    st.builds(lambda v: _dumps({"value": v}), _json_values),
    st.builds(lambda k, v: _dumps({k: v}), st.sampled_from(["seconds", "steps", "value",
                                                           "source", "renditions"]),
              _json_values),
    _json_values.map(_dumps),
    st.text(max_size=30),
    st.sampled_from(["{", '{"value": ' + "[" * 1100 + "]" * 1100 + "}", '{"seconds": NaN}',
                     '{"seconds": 1e999}',
                     '{"steps": 99999999999999999999999}', "null", "\x00",
                     '{"source": "file:///etc/passwd"}', '{"source": 7}']),
    st.binary(max_size=20),
)
#: checkpoints: none, sound, the right shape with wrong types, garbage
_checkpoints = st.one_of(
    st.none(),
    st.just(_dumps({"done": {}})),
    st.builds(lambda d: _dumps({"done": d}), st.dictionaries(
        st.sampled_from(["noop", "sleep:0", "sleep:1", "ingest", "plan", "x"]), _json_values,
        max_size=3)),
    st.builds(lambda k, v: _dumps({k: v}), st.sampled_from(["done", "failures", "times", "x"]),
              _json_values),
    _json_values.map(_dumps),
    st.text(max_size=20),
    st.binary(max_size=10),
)
#: SQLite values for a numeric column: numbers sane and absurd, and the wrong types
_numbers = st.one_of(
    st.integers(0, 3), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
    st.sampled_from(["x", "", "1", b"\x00", 1.5, -0.0]))
_kinds = st.sampled_from(["noop", "sleep", "sleep", "noop", "video.transcode", "nope", "",
                          "NOOP"])
_states = st.sampled_from(["pending"] * 6 + ["in_progress", "running", "", "PENDING"])


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": draw(_kinds), "payload": draw(_payloads), "state": draw(_states),
        "checkpoint": draw(_checkpoints),
        "run_at": draw(st.sampled_from([0.0, -1e308, BASE, 1e308])),
        "priority": 0, "attempt": 0, "max_attempts": 3, "progress": 0.0, "deferred_s": 0.0,
    }
    # one numeric column at a time set hostile, the rest sound
    column = draw(st.sampled_from(["priority", "attempt", "max_attempts", "progress",
                                   "deferred_s", None, None]))
    if column is not None:
        row[column] = draw(_numbers)
    return row


def _sound(row: dict[str, Any]) -> bool:
    """Whether an actor can run the row: its payload and checkpoint decode
    for its kind and the columns it reads hold numbers of the right types."""
    kind = REGISTRY.get(row["kind"])
    assert kind is not None
    try:
        kind.decode_json(row["payload"])
        checkpoint = (Checkpoint() if row["checkpoint"] is None else
                      msgspec.json.decode(row["checkpoint"], type=Checkpoint))
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return False
    if row["kind"] == "sleep":
        # its result adds up the outputs of the steps done
        return all(isinstance(v, int | float) for v in checkpoint.done.values())
    return True


def _sound_columns(stored: list[Any]) -> bool:
    """Whether the numbers an actor reads come out of the claim with their
    types: ``stored`` is ``typeof()`` of attempt, max_attempts, progress,
    deferred_s as SQLite holds them, and attempt's value. (The claim adds 1
    to attempt: text and blobs become 1, the largest integer a float.)"""
    attempt_type, max_type, progress_type, deferred_type, attempt = stored
    if attempt_type == "real" or (attempt_type == "integer" and attempt == 2**63 - 1):
        return False
    return max_type == "integer" and {progress_type, deferred_type} <= {"real", "integer"}


def _runnable(row: dict[str, Any]) -> bool:
    due = row["run_at"] <= BASE
    return (row["state"] == "pending" and REGISTRY.get(row["kind"]) is not None and due
            and row["kind"] != "video.transcode")


COLUMNS = ("id", "kind", "payload", "state", "priority", "run_at", "attempt", "max_attempts",
           "checkpoint", "progress", "deferred_s", "created_at", "updated_at")


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=rows())
async def test_a_broken_row_fails_only_itself(make_harness: MakeHarness,
                                              autojump_clock: MockClock,
                                              row: dict[str, Any]) -> None:
    if row["kind"] == "video.transcode":
        # its sound payloads would run ffmpeg; only broken ones are fuzzed here
        row["payload"] = row["payload"] if "source" not in str(row["payload"]) else "{}"
    async with make_harness() as h:
        good = await h.submit("noop", {"value": 1})
        values = {**row, "id": "hostile", "created_at": 0, "updated_at": 0}
        await h.d1.execute(
            f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            *(values[c] for c in COLUMNS))
        before = (await h.d1.execute("SELECT * FROM jobs WHERE id = 'hostile'")).rows
        (stored,) = (await h.d1.execute(
            "SELECT typeof(attempt), typeof(max_attempts), typeof(progress), "
            "typeof(deferred_s), attempt FROM jobs WHERE id = 'hostile'")).rows
        async with h.supervisor() as sup:
            with trio.fail_after(3600):  # virtual seconds
                done = await h.wait_state(sup, good.id, "completed")
                if _runnable(row) or (row["kind"] == "video.transcode"
                                      and row["state"] == "pending" and row["run_at"] <= BASE):
                    hostile = await h.wait_state(sup, "hostile", *TERMINAL_STATES)
                else:
                    # two more pull cycles with housekeeping: it is still untouched
                    for _ in range(2):
                        await trio.sleep(1)
                        await sup.wait_cycle()
                    hostile = None
        assert done.state == "completed"
        if hostile is None:
            after = (await h.d1.execute("SELECT * FROM jobs WHERE id = 'hostile'")).rows
            assert after == before, "a row nobody may run was changed"
            return
        if row["kind"] != "video.transcode" and _sound(row) and _sound_columns(stored):
            assert hostile.state == "completed", (hostile.error_class, hostile.error_message)
        else:
            assert (hostile.state, hostile.error_class) == ("failed", "permanent"), \
                (hostile.state, hostile.error_class, hostile.error_message)
            assert hostile.error_message


# -- what the fuzz found, kept as plain regressions ------------------------------------

_REGRESSIONS = {
    # the actor let RecursionError out of decode_json: the supervisor crashed
    "payload nests too deeply": ({"kind": "noop",
                                  "payload": '{"value": ' + "[" * 1100 + "]" * 1100 + "}"},
                                 "nests too deeply"),
    # Claimed(*row) took text for a number; the policy's arithmetic crashed
    "max_attempts is text": ({"kind": "noop", "max_attempts": "x"}, "wrong type"),
    "deferred_s is a blob": ({"kind": "noop", "deferred_s": b"\x00"}, "wrong type"),
    "attempt overflows into a float": ({"kind": "noop", "attempt": 2**63 - 1}, "wrong type"),
    # plan/result raised on outputs that do not fit: retried as transient 3 times
    "checkpoint outputs of the wrong type": (
        {"kind": "sleep", "checkpoint": '{"done": {"sleep:0": "x"}}'}, "do not fit kind"),
}


@pytest.mark.parametrize("case", list(_REGRESSIONS))
async def test_broken_rows_found_by_the_fuzz(make_harness: MakeHarness,
                                             autojump_clock: MockClock, case: str) -> None:
    columns, says = _REGRESSIONS[case]
    row = {"payload": "{}", "state": "pending", "checkpoint": None, "run_at": 0.0,
           "priority": 0, "attempt": 0, "max_attempts": 3, "progress": 0.0,
           "deferred_s": 0.0, "id": "hostile", "created_at": 0, "updated_at": 0, **columns}
    async with make_harness() as h:
        good = await h.submit("noop")
        await h.d1.execute(
            f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            *(row[c] for c in COLUMNS))
        async with h.supervisor() as sup:
            hostile = await h.wait_state(sup, "hostile", *TERMINAL_STATES)
            done = await h.wait_state(sup, good.id, *TERMINAL_STATES)
    assert done.state == "completed"
    assert (hostile.state, hostile.error_class) == ("failed", "permanent")
    assert says in (hostile.error_message or "")


async def test_rows_of_the_wrong_types_are_listed_not_refused(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # one such row made every listing (deepmox jobs, GET /v1/jobs, the feed's
    # snapshot) fail on a ValidationError
    async with make_harness() as h:
        good = await h.submit("noop")
        await h.d1.execute(
            "INSERT INTO jobs (id, kind, payload, state, priority, run_at, max_attempts, "
            "progress, created_at, updated_at) VALUES "
            "('odd', 'noop', '{}', 'running', 9.3e18, 'soon', 3, 'x', 0, 0)")
        # a payload blob that is not UTF-8 (msgspec: UnicodeDecodeError)
        await h.d1.execute(
            "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, created_at, "
            "updated_at) VALUES ('blob', 'noop', ?, 'cancelled', 0, 3, 0, 0)", b'"\xff"')
        jobs = await h.client.list_jobs(limit=0)
        odd = await h.job("odd")
        blob = await h.job("blob")
    assert {j.id for j in jobs} == {good.id, "odd", "blob"}
    assert blob.payload == b'"\xff"'  # shown as it is stored
    assert (odd.state, odd.priority, odd.run_at, odd.progress) == ("failed", 0, 0.0, 0.0)
    assert "state='running'" in (odd.error_message or "")
    assert "priority=9.3e+18" in (odd.error_message or "")
