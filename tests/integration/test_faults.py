"""Regressions for defects that runs with faults at the wire exposed (see
docs/RELIABILITY.md): each test reproduces one fault exactly and checks that
deepmox rides it out.

Rules: the D1 REST fake in-process with faults queued for its next requests
(deterministic, no rates); the daemon in-process (``daemon.serve``) on it;
progress is awaited through the daemon's own objects or ``wait_until``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from deepmox import config
from deepmox.client import JobSpec
from deepmox.daemon import Daemon, serve
from tests.conftest import TOKEN
from tests.fakes.d1_server import D1Fake
from tests.helpers import toml

pytestmark = pytest.mark.slow


def rest_config(tmp_path: Path, fake: D1Fake) -> config.Config:
    return config.decode(toml({
        "d1": {"backend": "http", "api_base": fake.api_base, "account_id": fake.account_id,
               "database_id": fake.database_id, "requests_per_5min": 100_000},
        "r2": {"path": str(tmp_path / "r2")},
        "server": {"listen": ""},
        "video": {"scratch_dir": str(tmp_path / "scratch")},
        "supervisor": {"node": "start-test", "poll_max_s": 0.1},
    }))


async def test_a_start_waits_out_an_unavailable_or_throttling_d1(
        tmp_path: Path, d1_fake: D1Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault on the first requests used to end the start with exit 1."""
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    monkeypatch.setattr("deepmox.daemon.START_RETRY_MIN_S", 0.05)
    d1_fake.inject("network_lost")
    d1_fake.inject("http429")  # retry-after: 2
    d1_fake.inject("drop")
    cfg = rest_config(tmp_path, d1_fake)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve(cfg, handle_signals=False, task_status=task_status))
        assert d1_fake.pending_faults == 0
        (job, _), = await daemon.client.submit_many([(JobSpec(kind="noop"), None)])
        with trio.fail_after(10):
            while (await daemon.client.get(job.id)).state != "completed":
                await daemon.supervisor.wait_cycle()
        daemon.stop()


async def test_a_start_with_a_refused_token_still_fails_at_once(
        tmp_path: Path, d1_fake: D1Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepmox.errors import D1QueryError

    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "not-the-token")
    with trio.fail_after(10), pytest.raises(D1QueryError, match="credentials"):
        await serve(rest_config(tmp_path, d1_fake), handle_signals=False)


async def test_video_steps_honour_a_throttle_on_the_object_store(tmp_path: Path) -> None:
    """An S3/R2 429 or 503 records a throttle on ``r2`` for the fleet; video
    steps used to go on calling the store until each found out by itself."""
    media = tmp_path / "media"
    media.mkdir()
    cfg = config.decode(toml({
        "d1": {"path": str(tmp_path / "deepmox.db")},
        "r2": {"path": str(tmp_path / "r2")},
        "server": {"listen": ""},
        "video": {"allowed_dirs": [str(media)], "scratch_dir": str(tmp_path / "scratch")},
        "supervisor": {"node": "throttle-test", "poll_max_s": 0.05, "budget_s": 5.0},
    }))
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: serve(cfg, handle_signals=False, task_status=task_status))
        until = daemon.supervisor.wall() + 60
        await daemon.d1.execute(
            "INSERT INTO throttles (upstream, blocked_until, reason, updated_at) "
            "VALUES ('r2', ?, 'R2 is throttling: SlowDown (HTTP 503)', ?)", until, until - 60)
        with trio.fail_after(10):
            while daemon.supervisor.throttle_until("r2") is None:
                await daemon.supervisor.wait_cycle()
        # the file does not exist: a step that went on to ingest would fail the job
        (job, _), = await daemon.client.submit_many([(JobSpec(
            kind="video.transcode", payload={"source": (media / "clip.mp4").as_uri()}), None)])
        with trio.fail_after(10):
            while not any(e.type == "continued" for e in await daemon.client.events(job.id)):
                await daemon.supervisor.wait_cycle()
        row = await daemon.client.get(job.id)
        assert (row.state, row.attempt, row.error_class) == ("pending", 0, None)
        assert row.run_at == pytest.approx(until)
        types = [e.type for e in await daemon.client.events(job.id)]
        assert "step_completed" not in types
        assert not (tmp_path / "r2" / "jobs").exists()
        daemon.stop()
