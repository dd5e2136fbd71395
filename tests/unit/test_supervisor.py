"""The supervisor on the autojump clock: budgets, continuations, restarts by
class, fencing, draining.

Rules: every supervisor runs against a real SQLite file on the event loop's
thread; times are virtual and asserted exactly (``BASE`` + seconds); waiting
is on pull cycles, never on the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from deepmox.actors.kind import Kind, Step, StepContext
from deepmox.actors.registry import Registry
from deepmox.bindings.d1 import SqliteD1, Statement
from deepmox.errors import D1UnavailableError
from tests.helpers import D1Wrapper
from tests.unit.conftest import BASE

DONE = ("completed", "failed", "cancelled")
MakeHarness = Callable[..., Any]


async def test_noop_completes_with_its_timeline(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        job = await h.submit("noop", {"value": 42})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        assert done.state == "completed"
        assert done.result == 42
        assert done.attempt == 1
        assert done.progress == 1.0
        assert await h.types(job.id) == ["submitted", "claimed", "completed"]


async def test_budget_cancels_at_the_exact_virtual_time(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # one 10 s step under a 3 s budget: it starts with the whole budget and is
    # cancelled at exactly claim time + 3 s; once more (one overrun may be a
    # starved machine), then it can never fit: permanent, after 2 x 3 s.
    async with make_harness("[kinds.sleep]\nbudget_s = 3") as h:
        job = await h.submit("sleep", {"seconds": 10})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        events = await h.events(job.id)
        claims = [e for e in events if e.type == "claimed"]
        redo, failed = events[2], events[-1]
        assert [e.type for e in events] == ["submitted", "claimed", "retry_scheduled",
                                            "claimed", "failed"]
        assert redo.error_class == "budget_exceeded"
        assert done.state == "failed"
        assert done.error_class == "permanent"
        assert done.attempt == 1, "a redo after an overrun uses no attempt"
        assert "does not fit in the budget of 3 s" in (done.error_message or "")
        assert redo.ts - claims[0].ts == pytest.approx(3.0, abs=1e-6)
        assert failed.ts - claims[1].ts == pytest.approx(3.0, abs=1e-6)


async def test_long_job_runs_as_continuations(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # six 1 s steps under a 2.5 s budget: two steps fit per actor run.
    async with make_harness("[kinds.sleep]\nbudget_s = 2.5") as h:
        job = await h.submit("sleep", {"seconds": 6, "steps": 6})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        types = await h.types(job.id)
        assert done.state == "completed"
        assert done.result == {"slept_s": 6.0}
        assert types.count("claimed") == 3
        assert types.count("continued") == 2
        # a checkpoint of its own only between two steps of one run; the last
        # step of a run is recorded by the continuation or the completion
        assert types.count("step_completed") == 3
        assert done.attempt == 1, "continuations must not use attempts"
        assert done.finished_at is not None
        assert done.finished_at - done.created_at == pytest.approx(6.0, abs=0.05)


class _Overrun(Kind):
    """Its second step declares 0.1 s and takes 2 s: under a 3 s budget the
    first run overruns inside it; the redo, with a whole budget, fits."""

    name = "overrun"

    def plan(self, payload: Any, outputs: Mapping[str, Any]) -> Sequence[Step]:
        async def slow(ctx: StepContext) -> int:
            await trio.sleep(2)
            return 1

        return [Step("a", slow, cost_s=0.1), Step("b", slow, cost_s=0.1)]


def _registry(*kinds: Kind) -> Registry:
    base = Registry.load()
    table = {n: k for n in base.names() if (k := base.get(n)) is not None}
    table.update({k.name: k for k in kinds})
    return Registry(table)


async def test_budget_exceeded_inside_a_step_is_redone(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness("[kinds.overrun]\nbudget_s = 3", _registry(_Overrun())) as h:
        job = await h.submit("overrun")
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        events = await h.events(job.id)
        retry = [e for e in events if e.type == "retry_scheduled"]
        assert done.state == "completed"
        assert [e.error_class for e in retry] == ["budget_exceeded"]
        assert done.attempt == 1, "a redo after an overrun uses no attempt"


async def test_transient_retries_with_backoff_until_exhausted(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    cfg = "[supervisor]\nbackoff_base_s = 1\nbackoff_max_s = 8"
    async with make_harness(cfg) as h:
        job = await h.submit("fail", {"error_class": "transient", "times": 10},
                             max_attempts=3)
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        events = await h.events(job.id)
        assert done.state == "failed"
        assert done.attempt == 3
        assert done.error_class == "transient"
        assert "attempts exhausted (3/3)" in (done.error_message or "")
        claims = [e.ts for e in events if e.type == "claimed"]
        retries = [e.ts for e in events if e.type == "retry_scheduled"]
        # the n-th retry waits at most base * 2^n (plus one poll interval)
        for n, (failed_at, next_claim) in enumerate(zip(retries, claims[1:], strict=True), 1):
            assert 0 <= next_claim - failed_at <= 2.0**n + 1.0


async def test_a_step_raising_budget_exceeded_with_a_whole_budget_fails(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # ffmpeg's own CPU limit, say: a fresh actor does not help, so no endless redo
    async with make_harness() as h:
        job = await h.submit("fail", {"error_class": "budget_exceeded", "times": 5})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        assert (done.state, done.error_class, done.attempt) == ("failed", "permanent", 1)
        assert "does not fit" in (done.error_message or "")


async def test_transient_recovers(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        job = await h.submit("fail", {"error_class": "transient", "times": 2})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        assert done.state == "completed"
        assert done.attempt == 3
        assert done.result == {"failures": 2}


async def test_permanent_fails_at_once(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        job = await h.submit("fail", {"error_class": "permanent", "times": 5})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        assert (done.state, done.attempt, done.error_class) == ("failed", 1, "permanent")
        failed = (await h.events(job.id))[-1]
        assert (failed.type, failed.error_class) == ("failed", "permanent")
        assert failed.detail == "failing on purpose (1 of 5)"


async def test_rate_limited_defers_without_attempts_and_throttles_everyone(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        first = await h.submit("fail", {"error_class": "rate_limited", "times": 1,
                                        "retry_after": 60, "upstream": "api"})
        async with h.supervisor() as sup:
            await h.wait_event(sup, first.id, "retry_scheduled")
            deferred = await h.job(first.id)
            rows = (await h.d1.execute(
                "SELECT upstream, blocked_until FROM throttles")).rows
            assert rows == [["api", pytest.approx(deferred.run_at)]]
            assert deferred.attempt == 0, "rate_limited must not use an attempt"
            assert deferred.run_at - BASE == pytest.approx(trio.current_time() + 60, abs=0.1)
            # a second job for the same upstream does not call it: it continues
            # to run when the throttle ends (blocked beyond its budget)
            second = await h.submit("fail", {"error_class": "rate_limited", "times": 0,
                                             "upstream": "api"})
            await h.wait_event(sup, second.id, "continued")
            seen = await h.job(second.id)
            assert seen.run_at == pytest.approx(deferred.run_at)
            assert "continued" in await h.types(second.id)
            done1 = await h.wait_state(sup, first.id, *DONE)
            done2 = await h.wait_state(sup, second.id, *DONE)
        assert (done1.state, done1.attempt) == ("completed", 1)
        assert (done2.state, done2.attempt) == ("completed", 1)


async def test_rate_limited_past_the_deferral_bound_fails(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness("[supervisor]\nmax_deferral_s = 100") as h:
        job = await h.submit("fail", {"error_class": "rate_limited", "times": 10,
                                      "retry_after": 40})
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        assert done.state == "failed"
        assert "longer than max_deferral_s" in (done.error_message or "")
        assert (await h.types(job.id)).count("retry_scheduled") == 2


async def test_stale_actor_cannot_write_after_its_lease_was_reaped(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    cfg = "[supervisor]\nlease_grace_s = 1\n[kinds.sleep]\nbudget_s = 10"
    async with make_harness(cfg) as h:
        job = await h.submit("sleep", {"seconds": 8})
        async with h.supervisor("a") as a:
            await h.wait_state(a, job.id, "in_progress")
            # a's lease runs out behind its back (a paused process, a skewed clock)
            await h.d1.execute("UPDATE jobs SET lease_until = ? WHERE id = ?",
                               BASE + trio.current_time() - 1, job.id)
            async with h.supervisor("b") as b:
                done = await h.wait_state(b, job.id, *DONE)
                while a.statistics().lease_lost == 0:
                    await a.wait_cycle()
        events = await h.events(job.id)
        types = [e.type for e in events]
        assert done.state == "completed"
        assert types.count("completed") == 1
        assert types.count("reaped") == 1
        lost = [e for e in events if e.type == "lease_lost"]
        assert [e.node for e in lost] == ["a"]
        # either daemon may have re-claimed it; only one completion counted
        assert a.statistics().completed + b.statistics().completed == 1


async def test_drain_hands_running_jobs_back_at_once(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    cfg = "[supervisor]\ndrain_s = 2\n[kinds.sleep]\nbudget_s = 30"
    async with make_harness(cfg) as h:
        short = await h.submit("sleep", {"seconds": 1})
        long = await h.submit("sleep", {"seconds": 20, "steps": 2})
        async with h.supervisor() as sup:
            await h.wait_state(sup, long.id, "in_progress")
            stopped_at = trio.current_time()
            sup.stop()
            await sup.wait_stopped()
            assert trio.current_time() - stopped_at == pytest.approx(2.0, abs=0.01)
        job = await h.job(long.id)
        assert (await h.job(short.id)).state == "completed"
        assert job.state == "pending"
        assert job.attempt == 0, "a released job gets its attempt back"
        assert job.lease_until is None
        assert (await h.types(long.id))[-1] == "released"


async def test_broken_row_fails_only_its_job(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness() as h:
        good = await h.submit("noop")
        await h.d1.execute(
            "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, created_at, "
            "updated_at) VALUES ('broken', 'sleep', '{not json', 'pending', 0, 3, 0, 0)")
        await h.d1.execute(
            "INSERT INTO jobs (id, kind, payload, state, run_at, max_attempts, created_at, "
            "updated_at) VALUES ('badtype', 'sleep', '{\"seconds\": \"x\"}', 'pending', 0, 3, "
            "0, 0)")
        async with h.supervisor() as sup:
            broken = await h.wait_state(sup, "broken", *DONE)
            badtype = await h.wait_state(sup, "badtype", *DONE)
            ok = await h.wait_state(sup, good.id, *DONE)
        assert (broken.state, broken.error_class) == ("failed", "permanent")
        assert "payload does not decode" in (broken.error_message or "")
        assert "Expected `float`, got `str` - at `$.seconds`" in (badtype.error_message or "")
        assert ok.state == "completed"


async def test_per_kind_actor_limit(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    async with make_harness("[kinds.sleep]\nmax_actors = 2") as h:
        sleeps = [await h.submit("sleep", {"seconds": 5}) for _ in range(5)]
        noop = await h.submit("noop")
        peak = 0
        async with h.supervisor() as sup:
            await h.wait_state(sup, noop.id, "completed")
            for job in sleeps:
                while (await h.job(job.id)).state != "completed":
                    peak = max(peak, sup.statistics().running_by_kind.get("sleep", 0))
                    await sup.wait_cycle()
        assert peak == 2


class _LoseAnswerOnce(D1Wrapper):
    """A D1 whose first claim commits but whose answer is lost."""

    def __init__(self, inner: SqliteD1) -> None:
        super().__init__(inner)
        self.lost = False

    def should_lose(self, statements: Sequence[Statement], results: Sequence[Any]) -> bool:
        return any("RETURNING id, kind" in s.sql for s in statements) and \
            any(r.rows for r in results)

    async def batch(self, statements: Sequence[Statement]) -> Any:
        results = await super().batch(statements)
        if not self.lost and results and self.should_lose(statements, results):
            self.lost = True
            raise D1UnavailableError("the answer was lost")
        return results

    async def execute(self, sql: str, *params: Any) -> Any:
        return await self.inner.execute(sql, *params)  # never lost


async def test_claim_whose_answer_was_lost_is_adopted(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    from deepmox.supervisor import Supervisor
    from tests.unit.conftest import wall

    async with make_harness() as h:
        job = await h.submit("noop")
        d1 = _LoseAnswerOnce(SqliteD1(h.path, in_thread=False))
        sup = Supervisor(h.cfg, d1, h.registry, node="a", wall=wall)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            done = await h.wait_state(sup, job.id, *DONE)
            sup.stop()
        await d1.aclose()
        assert d1.lost
        assert done.state == "completed"
        assert done.attempt == 1, "the adopted claim is the same attempt, not a zombie"
        assert sup.statistics().failed_cycles == 1
        assert await h.types(job.id) == ["submitted", "claimed", "completed"]


async def test_a_first_step_cut_short_by_a_clipped_deadline_is_redone(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # An actor spawned late has its deadline clipped to its lease (here: 2 s
    # of a 3 s budget). Its first step, cut short, did not have the whole
    # budget: redone (no attempt used), not failed as "never fits" -- but
    # only MAX_CUT_SHORT times.
    from deepmox.actors.actor import MAX_CUT_SHORT

    async with make_harness("[kinds.sleep]\nbudget_s = 3") as h:
        job = await h.submit("sleep", {"seconds": 2.5})
        async with h.supervisor() as sup:
            sup.leases["sleep"] = sup.cfg.supervisor.lease_grace_s + 2.0
            done = await h.wait_state(sup, job.id, *DONE)
        events = await h.events(job.id)
        redos = [e for e in events if e.type == "retry_scheduled"]
        assert [e.error_class for e in redos] == ["budget_exceeded"] * (MAX_CUT_SHORT - 1)
        assert (done.state, done.error_class, done.attempt) == ("failed", "permanent", 1)

    async with make_harness("[kinds.sleep]\nbudget_s = 3") as h:
        job = await h.submit("sleep", {"seconds": 2.5})
        async with h.supervisor() as sup:
            whole = sup.leases["sleep"]
            sup.leases["sleep"] = sup.cfg.supervisor.lease_grace_s + 2.0
            await h.wait_event(sup, job.id, "retry_scheduled")
            sup.leases["sleep"] = whole
            done = await h.wait_state(sup, job.id, *DONE)
        assert (done.state, done.attempt) == ("completed", 1)
        assert done.result == {"slept_s": 2.5}


class _Throttled(Kind):
    """One 1.5 s step that first honours a throttle on upstream "up"."""

    name = "throttled"

    def plan(self, payload: Any, outputs: Mapping[str, Any]) -> Sequence[Step]:
        async def call(ctx: StepContext) -> int:
            await ctx.wait_throttle("up")
            await trio.sleep(1.5)
            return 1

        return [Step("call", call, cost_s=1.5)]


@pytest.mark.parametrize(("blocked_s", "waits_in_place"), [(1.0, True), (2.0, False)])
async def test_a_throttle_wait_never_eats_the_steps_budget(
        make_harness: MakeHarness, autojump_clock: MockClock, blocked_s: float,
        waits_in_place: bool) -> None:
    # Under a 3 s budget, a 1 s throttle leaves room for the 1.5 s step: the
    # actor waits. A 2 s one does not: the job runs again when the throttle
    # ends, with a whole budget -- it used to wait 2 s, overrun, and fail as a
    # step that "never fits".
    async with make_harness("[kinds.throttled]\nbudget_s = 3",
                            _registry(_Throttled())) as h:
        until = BASE + trio.current_time() + blocked_s
        await h.d1.execute("INSERT INTO throttles (upstream, blocked_until, reason, "
                           "updated_at) VALUES ('up', ?, 'test', ?)", until, until)
        job = await h.submit("throttled")
        async with h.supervisor() as sup:
            done = await h.wait_state(sup, job.id, *DONE)
        types = await h.types(job.id)
        assert (done.state, done.attempt) == ("completed", 1)
        assert types.count("continued") == (0 if waits_in_place else 1)
        completed = (await h.events(job.id))[-1]
        assert completed.ts == pytest.approx(until + 1.5, abs=0.05)


class _LoseLeaseLostAnswerOnce(_LoseAnswerOnce):
    """A D1 whose first batch with lease_lost notes commits but whose answer is lost."""

    def should_lose(self, statements: Sequence[Statement], results: Sequence[Any]) -> bool:
        return any("'lease_lost'" in s.sql for s in statements)


async def test_a_lease_lost_note_sent_again_is_recorded_once(
        make_harness: MakeHarness, autojump_clock: MockClock) -> None:
    # The notes go out again after a cycle whose answer was lost; the first
    # request had recorded them already (found by the chaos runs with faults).
    from deepmox.supervisor import Supervisor
    from tests.unit.conftest import wall

    cfg = "[supervisor]\nlease_grace_s = 1\n[kinds.sleep]\nbudget_s = 10"
    async with make_harness(cfg) as h:
        job = await h.submit("sleep", {"seconds": 8})
        d1 = _LoseLeaseLostAnswerOnce(SqliteD1(h.path, in_thread=False))
        a = Supervisor(h.cfg, d1, h.registry, node="a", wall=wall)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await h.wait_state(a, job.id, "in_progress")
            await h.d1.execute("UPDATE jobs SET lease_until = ? WHERE id = ?",
                               BASE + trio.current_time() - 1, job.id)
            async with h.supervisor("b") as b:
                await h.wait_state(b, job.id, *DONE)
                while not d1.lost or a.statistics().failed_cycles == 0:
                    await a.wait_cycle()
                for _ in range(3):  # the notes went out again, and took
                    await a.wait_cycle()
            a.stop()
        await d1.aclose()
        lost = [e for e in await h.events(job.id) if e.type == "lease_lost"]
        assert len(lost) == 1, lost
        assert lost[0].node == "a"
