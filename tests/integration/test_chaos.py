"""CI's short chaos runs: ``bench/chaos.py --quick``, run as the bench runs.

Rules: the bench starts real ``deepmox run`` processes (SIGKILLed at random
and restarted), the D1 REST fake and moto's S3 server as processes, and the
fault proxy between them; it checks every job, event, lease and object itself
and exits non-zero when any check fails. These tests fail with its report. The
quick mode checks correctness only (nothing lost, nothing duplicated, no
overlapping leases, exact object keys, clean exits, every killed daemon's
job run again): its recovery time is printed, never asserted.
The seeds are fixed so that a failure names the kills and fault draws it saw
(timing still varies from run to run, as it does in production).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
#: a quick run takes about 20 s on an idle 2-core machine
TIMEOUT_S = 300


async def run_chaos(*args: str) -> str:
    with trio.fail_after(TIMEOUT_S):
        done = await trio.run_process([sys.executable, str(CHAOS), "--quick", *args],
                                      capture_stdout=True, stderr=subprocess.STDOUT,
                                      check=False)
    out: str = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"bench/chaos.py --quick {' '.join(args)} failed:\n{out}"
    return out


async def test_chaos_quick_sqlite() -> None:
    out = await run_chaos("--seed", "1")
    assert "FAIL" not in out
    assert "chaos: all checks passed" in out


async def test_chaos_quick_d1_rest_and_s3_with_faults() -> None:
    out = await run_chaos("--seed", "2", "--backend", "http", "--r2", "s3", "--faults", "0.1",
                          "--ai")
    assert "FAIL" not in out
    assert "d1 faults:" in out
    assert "s3 faults:" in out
    assert "messages faults:" in out
    assert "PASS  AI requests within the API's limit" in out
