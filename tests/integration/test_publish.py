"""``video.publish`` and ``ai.describe`` in real daemons: real ffmpeg on
generated clips with scene cuts and a subtitle track, the anthropic SDK
against the Messages API fake served by this test on loopback, the ``claude``
stand-in as a child of the daemon.

Rules: clips are a few seconds of small frames; progress across processes is
observed with ``wait_until`` (bounded), never by sleeping; every expected
object key is listed exactly; the fake's received requests are asserted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from deepmox.testing import media_samples
from tests.fakes.messages_server import ok, serve_messages
from tests.helpers import query
from tests.integration.conftest import Cluster
from tests.integration.test_video import expected_keys, stored_keys

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

CLAUDE = Path(__file__).resolve().parents[1] / "fakes" / "claude"
SUPERVISOR = {"lease_grace_s": 2.0, "poll_max_s": 0.2, "max_actors": 4}
SCENES = (("red", 2.0), ("blue", 2.0), ("green", 2.0))
CUES = ((0.2, 1.8, "Welcome to the colour tour."), (2.1, 3.9, "Now everything is blue."),
        (4.1, 5.9, "And green to finish."))


def sections(media: Path, *providers: str) -> dict[str, dict[str, object]]:
    return {"video": {"allowed_dirs": [str(media)], "thumbnails": 2},
            "ai": {"providers": list(providers)},
            "ai.claude-cli": {"path": str(CLAUDE)},
            "ai.anthropic": {"requests_per_minute": 0}}


async def publish(cluster: Cluster, tmp_path: Path, providers: tuple[str, ...],
                  payload: dict[str, object] | None = None,
                  env: dict[str, str] | None = None) -> tuple[str, dict[str, object]]:
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    clip = await media_samples.make_story(media / "colour_tour.mp4", scenes=SCENES, cues=CUES)
    await cluster.start_daemon("node-a", supervisor=SUPERVISOR,
                               kinds={"video.publish": {"budget_s": 8.0}},
                               sections=sections(media, *providers), env=env)
    (job_id,) = await cluster.submit("video.publish",
                                     [{"source": clip.as_uri(), **(payload or {})}])
    await cluster.wait_all("completed", 1, timeout=90)
    result = json.loads(query(cluster.db, "SELECT result FROM jobs WHERE id = ?", job_id)[0][0])
    manifest = json.loads((tmp_path / "r2" / result["manifest"]).read_text())
    assert result["metadata"] == manifest["metadata"]
    chunks = manifest["chunks"]["480p"]["count"]
    assert stored_keys(tmp_path / "r2", job_id) == expected_keys(job_id, chunks)
    return job_id, manifest


async def test_publish_with_the_heuristic_reads_subtitles_and_scenes(
        cluster: Cluster, tmp_path: Path) -> None:
    job_id, manifest = await publish(cluster, tmp_path, ("heuristic",))
    meta = manifest["metadata"]
    assert isinstance(meta, dict)
    assert meta["provider"] == "heuristic"
    assert meta["context_source"] == "subtitles"
    assert meta["title"] == "Colour tour"
    assert meta["summary"].startswith("Welcome to the colour tour.")
    starts = [c["start_s"] for c in meta["chapters"]]
    assert starts[0] == 0
    assert all(0 <= t < 6.0 for t in starts)
    assert manifest["ai"] == {"calls": [], "usage": {"input_tokens": 0, "output_tokens": 0,
                                                     "cost_usd": 0.0}}
    steps = [r[0] for r in query(cluster.db, "SELECT step FROM job_events WHERE job_id = ? "
                                             "AND step IS NOT NULL", job_id)]
    assert {"scenes", "context", "describe:heuristic", "manifest"} <= set(steps)


async def test_publish_with_claude_through_the_sdk(cluster: Cluster, tmp_path: Path) -> None:
    answer = {"title": "A tour of colours", "summary": "Three colours, one after another.",
              "tags": ["colour", "tour"],
              "chapters": [{"start_s": 0, "title": "Red"}, {"start_s": 2, "title": "Blue"},
                           {"start_s": 4, "title": "Green"}]}
    async with trio.open_nursery() as nursery:
        fake = await serve_messages(nursery)
        fake.queue(ok(json.dumps(answer), input_tokens=900, output_tokens=120))
        try:
            _, manifest = await publish(
                cluster, tmp_path, ("anthropic", "heuristic"),
                payload={"description": "A short film of colours."},
                env={"ANTHROPIC_BASE_URL": fake.base_url,
                     "ANTHROPIC_API_KEY": "sk-made-up-integration"})
        finally:
            await fake.shutdown()
            nursery.cancel_scope.cancel()
    meta = manifest["metadata"]
    assert isinstance(meta, dict)
    assert meta["provider"] == "anthropic"
    assert meta["context_source"] == "subtitles"
    assert meta["chapters"] == answer["chapters"]
    assert meta["usage"]["input_tokens"] == 900
    assert manifest["ai"]["usage"]["cost_usd"] == pytest.approx(900 * 2e-6 + 120 * 10e-6)
    (sent,) = fake.requests
    text = sent.body["messages"][0]["content"]
    assert "Now everything is blue." in text
    assert "File name: colour_tour.mp4" in text
    assert "Scene changes at (s): 2, 4" in text


async def test_a_hanging_cli_is_killed_at_the_budget(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "claude-calls.log"
    await cluster.start_daemon(
        "node-a", supervisor={**SUPERVISOR, "backoff_base_s": 0.1},
        kinds={"ai.describe": {"budget_s": 2.0}},
        sections={"ai": {"providers": ["claude-cli"]}, "ai.claude-cli": {"path": str(CLAUDE)}},
        env={"CLAUDE_FAKE_MODE": "hang", "CLAUDE_FAKE_LOG": str(log)})
    (job_id,) = await cluster.submit("ai.describe", [{"transcript": "Hello there."}],
                                     max_attempts=2)
    await cluster.wait_all("failed", 1, timeout=60)
    row = query(cluster.db, "SELECT error_class, error_message, attempt FROM jobs WHERE id = ?",
                job_id)[0]
    assert row[0] == "transient"
    assert "attempts exhausted (2/2)" in row[1]
    assert "claude did not answer within" in row[1]
    assert "process group was killed" in row[1]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2
    for call in calls:
        with pytest.raises(ProcessLookupError):
            os.killpg(call["pid"], 0)
    events = query(cluster.db, "SELECT type, ts FROM job_events WHERE job_id = ? ORDER BY id",
                   job_id)
    runs = []
    for (t0, ts0), (t1, ts1) in itertools.pairwise(events):
        if t0 == "claimed" and t1 in ("retry_scheduled", "failed"):
            runs.append(ts1 - ts0)
    assert len(runs) == 2, events
    for seconds in runs:
        assert 1.4 <= seconds <= 2.6, ("killed at the 2 s budget", events)


async def test_describe_fails_readably_when_no_provider_can(cluster: Cluster) -> None:
    await cluster.start_daemon("node-a", supervisor=SUPERVISOR,
                               sections={"ai": {"providers": ["claude-cli", "anthropic"]},
                                         "ai.claude-cli": {"path": "no-claude-here"}},
                               env={"ANTHROPIC_API_KEY": ""})
    (job_id,) = await cluster.submit("ai.describe", [{"title_hint": "Lisbon"}])
    await cluster.wait_all("failed", 1, timeout=30)
    (message,) = query(cluster.db, "SELECT error_message FROM jobs WHERE id = ?", job_id)[0]
    assert message == ("no provider gave valid metadata: claude-cli: skipped (no "
                       "`no-claude-here` on PATH) | anthropic: skipped (no API key: "
                       "$ANTHROPIC_API_KEY is not set (nor a credential of that name))")
