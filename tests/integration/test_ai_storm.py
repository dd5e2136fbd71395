"""The retry storm, short mode: ``bench/ai_storm.py --quick`` (200
``ai.describe`` jobs across two daemons against a Messages API fake that
allows 200 requests per window, fails every request for a while, then answers
429 over its limit; time compressed six times), once with the API's
rate-limit headers and once without.

Rules: the storm runs as the bench runs it (real daemon processes, the fake in
the bench's process); this test only reads the figures it prints and holds
them to the targets: every job completed, at most 1.5 requests per job, at
most the limit plus 10% in any window, and the outage actually happened.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ai_storm.py"


@pytest.mark.parametrize("headers", [True, False], ids=["rate-headers", "no-rate-headers"])
async def test_no_retry_storm(headers: bool) -> None:
    argv = [sys.executable, str(BENCH), "--quick", "--json"]
    if not headers:
        argv.append("--no-rate-headers")
    with trio.fail_after(240):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                      check=False)
    assert done.returncode in (0, 1), done.stderr.decode()[-2000:]
    figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert figures["rate_headers"] is headers
    assert figures["states"] == {"completed": 200}, figures
    assert figures["statuses"].get("503", 0) > 0, "the outage must have been met"
    assert figures["requests_per_job"] <= 1.5, figures
    assert figures["most_in_window"] <= 220, figures
    assert figures["ok"] is True
    assert done.returncode == 0
