"""A job kind for the benchmarks, loaded through ``[supervisor] kind_modules``
(the bench scripts put this folder on the daemon's PYTHONPATH).

``bench.mark`` appends ``"<i> <time.time()>"`` to ``path``, as the peer
harness's latency job does in every other queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from deepmox import Kind, Step, StepContext, register


class MarkPayload(msgspec.Struct, forbid_unknown_fields=True):
    i: int
    path: str


@register
class Mark(Kind):
    name = "bench.mark"
    Payload = MarkPayload

    def plan(self, payload: MarkPayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        async def run(ctx: StepContext) -> None:
            with open(payload.path, "a") as f:  # noqa: ASYNC230 - one short append
                f.write(f"{payload.i} {time.time()}\n")

        return [Step("mark", run)]
