"""``video.transcode`` end to end: real daemons, real ffmpeg on small generated
clips, a real SQLite file and the filesystem object store.

Rules: clips are a few seconds of small frames so the suite stays fast;
budgets are small so that the job runs as several chunks and continuations.
Progress across processes is observed with ``wait_until`` (bounded), never by
sleeping. Every expected object key is listed exactly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from deepmox.testing import media_samples
from tests.helpers import query, wait_until
from tests.integration.conftest import Cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

SUPERVISOR = {"budget_s": 3.0, "lease_grace_s": 1.0, "poll_max_s": 0.2, "max_actors": 4}


def video_sections(media_dir: Path) -> dict[str, dict[str, object]]:
    return {"video": {"allowed_dirs": [str(media_dir)], "thumbnails": 2}}


def expected_keys(job_id: str, chunks: int, audio: bool = True) -> set[str]:
    p = f"jobs/{job_id}"
    keys = {f"{p}/source", f"{p}/480p.mp4", f"{p}/manifest.json", f"{p}/thumbs/00.jpg",
            f"{p}/thumbs/01.jpg", f"{p}/thumbs/poster.jpg"}
    keys |= {f"{p}/chunks/480p/{n:05}.mp4" for n in range(chunks)}
    if audio:
        keys.add(f"{p}/audio.m4a")
    return keys


def stored_keys(r2: Path, job_id: str) -> set[str]:
    base = r2 / "jobs" / job_id
    return {f"jobs/{job_id}/{p.relative_to(base).as_posix()}"
            for p in base.rglob("*") if p.is_file()}


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_format",
                          "-show_streams", str(path)], capture_output=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


async def test_transcode_in_chunks_and_continuations(cluster: Cluster, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = await media_samples.make_clip(media / "clip.mp4", seconds=6.0, size=(320, 240))
    await cluster.start_daemon("node-a", supervisor=SUPERVISOR,
                               sections=video_sections(media))
    (job_id,) = await cluster.submit("video.transcode", [{"source": clip.as_uri()}])
    await cluster.wait_all("completed", 1, timeout=60)

    events = query(cluster.db, "SELECT type, step FROM job_events WHERE job_id = ? "
                               "ORDER BY id", job_id)
    types = [e[0] for e in events]
    assert types.count("continued") >= 1, types
    assert types.count("completed") == 1
    result = json.loads(query(cluster.db, "SELECT result FROM jobs WHERE id = ?", job_id)[0][0])
    r2 = tmp_path / "r2"
    manifest = json.loads((r2 / result["manifest"]).read_text())
    chunks = manifest["chunks"]["480p"]["count"]
    assert chunks >= 3, manifest["chunks"]
    assert stored_keys(r2, job_id) == expected_keys(job_id, chunks)

    rendition = manifest["renditions"][0]
    probe = ffprobe(r2 / rendition["key"])
    duration = float(probe["format"]["duration"])  # type: ignore[index]
    assert abs(duration - 6.0) <= 0.5
    kinds = sorted(s["codec_type"] for s in probe["streams"])  # type: ignore[attr-defined]
    assert kinds == ["audio", "video"]
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")  # type: ignore[attr-defined]
    assert video["height"] == 240, "no upscaling past the source"
    assert manifest["source"]["probe"]["width"] == 320
    assert set(manifest["steps"]) >= {"ingest", "probe", "plan", "audio", "assemble:480p"}
    assert (r2 / manifest["poster"]["key"]).read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.parametrize("bad", ["truncated", "random", "empty", "text", "hls"])
async def test_bad_media_fails_permanent_with_a_reason(cluster: Cluster, tmp_path: Path,
                                                      bad: str) -> None:
    media = tmp_path / "media"
    media.mkdir()
    secret = tmp_path / "secret" / "private.mp4"
    secret.parent.mkdir()
    await media_samples.make_clip(secret, seconds=1.0)
    marker = secret.read_bytes()[-4096:]
    path = media / f"bad-{bad}.mp4"
    if bad == "truncated":
        good = await media_samples.make_clip(tmp_path / "good.mp4", seconds=2.0)
        media_samples.write_truncated(good, path)
    elif bad == "random":
        media_samples.write_random_bytes(path)
    elif bad == "empty":
        media_samples.write_empty(path)
    elif bad == "text":
        media_samples.write_text(path)
    else:
        path = media_samples.write_hls_playlist(media / "bad.m3u8", str(secret))
    await cluster.start_daemon("node-a", supervisor=SUPERVISOR,
                               sections=video_sections(media))
    (job_id,) = await cluster.submit("video.transcode", [{"source": path.as_uri()}])
    await cluster.wait_all("failed", 1, timeout=30)
    row = query(cluster.db, "SELECT error_class, error_message, attempt FROM jobs WHERE id = ?",
                job_id)[0]
    assert row[0] == "permanent", row
    assert row[2] == 1, "a permanent failure is not retried"
    assert "Traceback" not in row[1]
    assert len(row[1]) > 10
    failed = query(cluster.db, "SELECT detail FROM job_events WHERE job_id = ? AND "
                               "type = 'failed'", job_id)
    assert failed == [(row[1],)]
    r2 = tmp_path / "r2"
    for stored in r2.rglob("*"):
        if stored.is_file() and stored.name != "source":
            assert marker not in stored.read_bytes(), stored
    assert not any(p.name.endswith(".mp4") for p in (r2 / "jobs" / job_id).rglob("*")
                   if (r2 / "jobs" / job_id).exists())


async def test_limits_are_checked_before_heavy_work(cluster: Cluster, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = await media_samples.make_clip(media / "clip.mp4", seconds=2.0, size=(320, 240))
    await cluster.start_daemon("node-a", supervisor=SUPERVISOR,
                               sections={**video_sections(media), "limits": {"max_width": 200}})
    (job_id,) = await cluster.submit("video.transcode", [{"source": clip.as_uri()}])
    await cluster.wait_all("failed", 1, timeout=30)
    message = query(cluster.db, "SELECT error_message FROM jobs WHERE id = ?", job_id)[0][0]
    assert "max_width" in message
    steps = {r[0] for r in query(cluster.db, "SELECT step FROM job_events WHERE job_id = ? "
                                             "AND step IS NOT NULL", job_id)}
    assert not any(s.startswith("transcode") for s in steps)


async def test_kill_9_mid_transcode_another_daemon_finishes(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = await media_samples.make_clip(media / "clip.mp4", seconds=12.0, size=(320, 240))
    # a 2 s budget makes 1 s chunks: twelve transcode steps
    sup = {**SUPERVISOR, "budget_s": 2.0}
    a = await cluster.start_daemon("node-a", supervisor=sup, sections=video_sections(media))
    (job_id,) = await cluster.submit("video.transcode", [{"source": clip.as_uri()}])

    def a_mid_transcode() -> bool:
        done = query(cluster.db, "SELECT count(*) FROM job_events WHERE job_id = ? AND "
                                 "step LIKE 'transcode:%' AND node = 'node-a'", job_id)[0][0]
        return bool(done >= 1)

    await wait_until(a_mid_transcode, 60, what="node-a to transcode a chunk",
                     explain=cluster.describe)
    assert await a.proc.kill() == -signal.SIGKILL
    assert query(cluster.db, "SELECT state FROM jobs WHERE id = ?", job_id)[0][0] != "completed"
    await cluster.start_daemon("node-b", supervisor=sup, sections=video_sections(media))
    await cluster.wait_all("completed", 1, timeout=90)
    r2 = tmp_path / "r2"
    result = json.loads(query(cluster.db, "SELECT result FROM jobs WHERE id = ?", job_id)[0][0])
    manifest = json.loads((r2 / result["manifest"]).read_text())
    assert stored_keys(r2, job_id) == expected_keys(job_id, manifest["chunks"]["480p"]["count"])
    probe = ffprobe(r2 / manifest["renditions"][0]["key"])
    assert abs(float(probe["format"]["duration"]) - 12.0) <= 0.5  # type: ignore[index]
    completed = query(cluster.db, "SELECT node FROM job_events WHERE job_id = ? AND "
                                  "type = 'completed'", job_id)
    assert completed == [("node-b",)]
