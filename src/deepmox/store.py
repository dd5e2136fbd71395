"""The jobs store: submissions, reads, cancel and retry, over any D1 backend.

Every method is one D1 request (one batch), so a CLI call against the REST API
costs one request from the budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from .bindings.d1 import D1, Result, Statement
from .bindings.d1.queries import Q
from .errors import ConflictError, NotFoundError
from .jobs import TERMINAL_STATES, Event, Job, JobState, dumps, event_from_row, job_from_row

#: runs statements as one atomic batch, like :meth:`D1.batch`
Batch = Callable[[Sequence[Statement]], Awaitable[list[Result]]]


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """A validated submission, ready to insert."""

    id: str
    kind: str
    payload: str  # JSON text
    priority: int
    run_at: float
    max_attempts: int
    idempotency_key: str | None


class JobStore:
    def __init__(self, d1: D1, *, node: str, wall: Callable[[], float]) -> None:
        self.d1 = d1
        self.node = node
        self.wall = wall

    async def submit(self, jobs: Sequence[NewJob], *, batch: Batch | None = None
                     ) -> list[tuple[Job, bool]]:
        """Insert ``jobs``; a repeated idempotency key returns the first job.
        Returns each job as stored, and whether this call created it.
        ``batch`` runs the statements in place of ``d1.batch`` (a daemon's
        own client hands them to its supervisor's next pull cycle)."""
        if not jobs:
            return []
        now = self.wall()
        rows = [
            {"id": j.id, "kind": j.kind, "payload": j.payload, "priority": j.priority,
             "run_at": j.run_at, "max_attempts": j.max_attempts,
             "idempotency_key": j.idempotency_key, "ts": now}
            for j in jobs
        ]
        ids = dumps([j.id for j in jobs])
        keys = dumps([{"id": j.id, "key": j.idempotency_key} for j in jobs])
        results = await (batch or self.d1.batch)([
            Statement(Q["insert_jobs_json"], (dumps(rows),)),
            Statement(Q["submitted_events"], (self.node, ids)),
            Statement(Q["jobs_by_id_or_key"], (keys,)),
        ])
        found = [job_from_row(r) for r in results[2].dicts()]
        by_id = {j.id: j for j in found}
        by_key = {j.idempotency_key: j for j in found if j.idempotency_key}
        out = []
        for j in jobs:
            if j.id in by_id:
                out.append((by_id[j.id], True))
            elif j.idempotency_key and j.idempotency_key in by_key:
                out.append((by_key[j.idempotency_key], False))
            else:  # pragma: no cover - the batch is atomic
                raise NotFoundError(f"job {j.id} vanished right after its submission")
        return out

    async def get(self, job_id: str) -> Job:
        row = (await self.d1.execute(Q["get_job"], job_id)).first()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        return job_from_row(row)

    async def list_jobs(self, *, state: str | None = None, kind: str | None = None,
                   limit: int = 100) -> list[Job]:
        result = await self.d1.execute(
            Q["list_jobs"], state, state, kind, kind, limit if limit > 0 else -1)
        return [job_from_row(r) for r in result.dicts()]

    async def events(self, job_id: str) -> list[Event]:
        result = await self.d1.execute(Q["job_events"], job_id)
        if not result.rows:
            await self.get(job_id)  # NotFoundError when the job does not exist
        return [event_from_row(r) for r in result.dicts()]

    async def counts(self) -> dict[str, int]:
        result = await self.d1.execute(Q["count_by_state"])
        counts = {s.value: 0 for s in JobState}
        counts.update({row[0]: int(row[1]) for row in result.rows})
        return counts

    async def cancel(self, job_id: str, *, reason: str = "cancelled by request") -> Job:
        now = self.wall()
        results = await self.d1.batch([
            Statement(Q["cancel_events"], (now, reason, self.node, job_id)),
            Statement(Q["cancel"], (now, now, job_id)),
            Statement(Q["get_job"], (job_id,)),
        ])
        return self._changed_or_raise(job_id, results[1].changes, results[2].first(),
                                      "cancel", "it is already")

    async def retry(self, job_id: str) -> Job:
        now = self.wall()
        results = await self.d1.batch([
            Statement(Q["retry_events"], (now, "retried by request", self.node, job_id)),
            Statement(Q["retry"], (now, now, job_id)),
            Statement(Q["get_job"], (job_id,)),
        ])
        return self._changed_or_raise(job_id, results[1].changes, results[2].first(),
                                      "retry", "it is")

    @staticmethod
    def _changed_or_raise(job_id: str, changes: int, row: dict[str, Any] | None,
                          verb: str, phrase: str) -> Job:
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        job = job_from_row(row)
        if not changes:
            allowed = "failed or cancelled" if verb == "retry" else "pending or in_progress"
            raise ConflictError(
                f"cannot {verb} job {job_id}: {phrase} {job.state} (only {allowed} jobs)")
        return job


__all__ = ["TERMINAL_STATES", "Batch", "JobStore", "NewJob"]
