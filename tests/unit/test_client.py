"""Submissions and reads through the Python API the CLI uses: validation,
idempotency keys, cancel and retry, listing.

Rules: a real SQLite file per test; nothing waits on time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepmox.client import JobSpec
from deepmox.errors import ConflictError, NotFoundError, RefusedError

MakeHarness = Callable[..., Any]


async def test_idempotency_key_returns_the_first_job(make_harness: MakeHarness) -> None:
    async with make_harness() as h:
        spec = JobSpec(kind="noop", payload={"value": 1})
        first, created = await h.client.submit(spec, "key-1")
        again, created_again = await h.client.submit(JobSpec(kind="noop"), "key-1")
        other, _ = await h.client.submit(spec, "key-2")
        assert created
        assert not created_again
        assert again.id == first.id
        assert again.payload == {"value": 1}
        assert other.id != first.id
        assert await h.types(first.id) == ["submitted"]
        assert (await h.client.counts())["pending"] == 2


async def test_submit_many_mixes_new_and_repeated_keys(make_harness: MakeHarness) -> None:
    async with make_harness() as h:
        first, _ = await h.client.submit(JobSpec(kind="noop"), "k")
        out = await h.client.submit_many(
            [(JobSpec(kind="noop"), "k"), (JobSpec(kind="noop"), None)])
        assert [created for _, created in out] == [False, True]
        assert out[0][0].id == first.id


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec(kind="nope"), "unknown job kind 'nope'"),
        (JobSpec(kind="sleep", payload={"seconds": "x"}),
         "Expected `float`, got `str` - at `$.seconds`"),
        (JobSpec(kind="sleep", payload={"sleep": 1}), "unknown field `sleep`"),
        (JobSpec(kind="sleep", payload={"seconds": -1}), "Expected `float` >= 0"),
        (JobSpec(kind="noop", payload={"value": "x" * 300_000}), "the limit is 262,144"),
        (JobSpec(kind="fail", payload={"error_class": "zombie"}), "Invalid enum value 'zombie'"),
    ],
)
async def test_bad_specs_are_refused_and_nothing_is_written(
        make_harness: MakeHarness, spec: JobSpec, message: str) -> None:
    async with make_harness() as h:
        with pytest.raises(RefusedError) as info:
            await h.client.submit(spec)
        assert message in str(info.value)
        assert sum((await h.client.counts()).values()) == 0


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=10))
async def test_any_json_spec_is_accepted_or_refused(make_harness: MakeHarness,
                                                     body: Any) -> None:
    async with make_harness() as h:
        message = ""
        try:
            spec = msgspec.convert({"kind": "sleep", "payload": body}, JobSpec)
            job, _ = await h.client.submit(spec)
            message = job.id
        except (RefusedError, msgspec.ValidationError) as exc:
            message = str(exc)
        assert message


async def test_cancel_and_retry(make_harness: MakeHarness) -> None:
    async with make_harness() as h:
        job = await h.submit("noop")
        cancelled = await h.client.cancel(job.id)
        assert cancelled.state == "cancelled"
        assert cancelled.finished_at is not None
        with pytest.raises(ConflictError, match="already cancelled"):
            await h.client.cancel(job.id)
        retried = await h.client.retry(job.id)
        assert (retried.state, retried.attempt, retried.finished_at) == ("pending", 0, None)
        with pytest.raises(ConflictError, match="only failed or cancelled"):
            await h.client.retry(job.id)
        assert await h.types(job.id) == ["submitted", "cancelled", "retried"]
        with pytest.raises(NotFoundError):
            await h.client.cancel("missing")
        with pytest.raises(NotFoundError):
            await h.client.events("missing")


async def test_list_filters_and_orders_newest_first(make_harness: MakeHarness) -> None:
    async with make_harness() as h:
        a = await h.submit("noop")
        b = await h.submit("sleep", {"seconds": 1})
        c = await h.submit("noop")
        await h.client.cancel(c.id)
        assert [j.id for j in await h.client.list_jobs()] == [c.id, b.id, a.id]
        assert [j.id for j in await h.client.list_jobs(kind="noop")] == [c.id, a.id]
        assert [j.id for j in await h.client.list_jobs(state="pending")] == [b.id, a.id]
        assert [j.id for j in await h.client.list_jobs(limit=1)] == [c.id]
        assert len(await h.client.list_jobs(limit=0)) == 3
