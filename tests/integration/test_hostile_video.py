"""``video.transcode`` on hostile sources, end to end: one real daemon, a
batch of poisoned jobs and one good clip, and a canary file every poisoned
job points at.

The poison: clips cut at random offsets, noise behind real magic numbers,
headers declaring huge frames (a 35-byte GIF of 16000x16000, VP8 frames of
16000x16000, a Y4M header of 60000x60000, an MP4 whose container claims
60000x60000 over small real frames), playlists and manifests (HLS, HLS keys,
ffconcat, ``concat:``, DASH) naming the canary by path and by ``file:`` URL,
and sources that try to leave their place (a symlink out of ``allowed_dirs``,
``..``, a private address, an object key with ``..``).

Rules: one ``deepmox run`` in its own process group, a real SQLite file and
the filesystem store; the offsets and noise come from a seeded
``random.Random`` (the same batch every run; ``tests/contract/
test_fuzz_media.py`` is where hypothesis searches). Checked: every poisoned
job fails ``permanent`` on its first attempt with a readable reason, within
its budget (claim to failure); the lying MP4 and the good clip complete at
their real size; the canary was never read (its access time, set before its
modification time, did not move) and none of its bytes are in any object.
Waiting is :func:`tests.helpers.wait_until` only.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from deepmox.bindings import media
from deepmox.bindings.media import process
from deepmox.testing import media_samples
from tests import media_hostile as hostile
from tests.helpers import query, wait_until
from tests.integration.conftest import Cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

BUDGET_S = 5.0
SUPERVISOR = {"budget_s": BUDGET_S, "lease_grace_s": 2.0, "poll_max_s": 0.2, "max_actors": 6}
SEED = 6


async def test_poisoned_sources_fail_permanent_and_read_nothing(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    canary = await media_samples.make_clip(secret / "canary.mp4", seconds=1.0, size=(64, 48))
    marker = canary.read_bytes()[-4096:]
    canary_atime = hostile.mark_unread(canary)
    good = await media_samples.make_clip(media_dir / "good.mp4", seconds=1.5)
    ivf = media_dir / "vp8.ivf"
    done = await process.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                              "-i", "testsrc2=size=64x48:rate=5:duration=1", "-c:v", "libvpx",
                              "-f", "ivf", str(ivf)], limits=media.NO_LIMITS)
    rng = random.Random(SEED)
    data = good.read_bytes()

    # name -> source; each must fail permanent unless listed in COMPLETE
    sources: dict[str, str] = {}
    for i in range(3):
        cut = media_dir / f"cut{i}.mp4"
        cut.write_bytes(data[: rng.randrange(1, len(data) - 1)])
        sources[f"cut at {cut.stat().st_size}"] = cut.as_uri()
    for magic in (b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3", b"GIF89a"):
        noise = media_dir / f"noise-{magic[-4:].hex()}.bin"
        noise.write_bytes(magic + rng.randbytes(2048))
        sources[f"noise behind {magic!r}"] = noise.as_uri()
    sources["gif 16000x16000"] = hostile.write_gif(media_dir / "big.gif", 16000, 16000).as_uri()
    sources["y4m 60000x60000"] = hostile.write_y4m(media_dir / "big.y4m", 60000, 60000).as_uri()
    if done.returncode == 0:
        sources["vp8 frames 16000x16000"] = hostile.write_ivf_vp8(
            ivf, media_dir / "big.ivf", 16000, 16000, frame_size=(16000, 16000)).as_uri()
    sources["mp4 claiming 60000x60000"] = hostile.patch_mp4_size(
        good, media_dir / "liar.mp4", 60000, 60000).as_uri()
    for form in hostile.PLAYLIST_FORMS:
        for ref, target in (("path", str(canary)), ("url", canary.as_uri())):
            name = f"{form}-{ref}.{'mpd' if form == 'dash' else 'm3u8'}"
            sources[f"{form} naming the canary by {ref}"] = hostile.write_playlist(
                media_dir / name, form, target).as_uri()
    (media_dir / "link.mp4").symlink_to(canary)
    sources["a symlink out of allowed_dirs"] = (media_dir / "link.mp4").as_uri()
    sources["dot-dot out of allowed_dirs"] = f"file://{media_dir}/../secret/canary.mp4"
    sources["an encoded dot-dot"] = f"file://{media_dir}/%2e%2e/secret/canary.mp4"
    sources["a private address"] = "http://127.0.0.1:9/canary.mp4"
    sources["an object key with .."] = "r2://jobs/../secret/canary.mp4"
    sources["the good clip"] = good.as_uri()
    #: what completes: the good clip, and the liar (its stream says 160x120)
    complete = {"the good clip", "mp4 claiming 60000x60000"}
    #: a cut clip may still be whole enough to transcode (its index came first)
    either = {name for name in sources if name.startswith("cut at")}

    await cluster.start_daemon("node-a", supervisor=SUPERVISOR, sections={
        "video": {"allowed_dirs": [str(media_dir)], "thumbnails": 1}})
    names = list(sources)
    ids = await cluster.submit("video.transcode", [{"source": sources[n]} for n in names])
    await wait_until(lambda: sum(cluster.counts().get(s, 0) for s in ("completed", "failed"))
                     == len(names), 120, what="every job to end", explain=cluster.describe)

    by_id = dict(zip(ids, names, strict=True))
    rows = query(cluster.db, "SELECT id, state, error_class, error_message, attempt FROM jobs")
    outcomes = {by_id[r[0]]: r[1:] for r in rows}
    print("\n".join(f"{n}: {o}" for n, o in outcomes.items()))
    for name, (state, error_class, message, attempt) in outcomes.items():
        if name in complete:
            assert state == "completed", (name, state, message)
            continue
        if name in either and state == "completed":
            continue
        assert (state, error_class, attempt) == ("failed", "permanent", 1), (name, state,
                                                                            message)
        assert message, name
        assert "Traceback" not in message, (name, message)
        assert str(secret) not in message or "allowed_dirs" in message, (name, message)

    # each failure came within its budget of its claim
    for job_id, name in by_id.items():
        times = dict(query(cluster.db, "SELECT type, ts FROM job_events WHERE job_id = ? AND "
                                       "type IN ('claimed', 'failed')", job_id))
        if "failed" in times:
            assert times["failed"] - times["claimed"] <= BUDGET_S + 1.0, (name, times)

    # the liar was made at its real size, not the claimed one
    liar = next(i for i, n in by_id.items() if n == "mp4 claiming 60000x60000")
    result = json.loads(query(cluster.db, "SELECT result FROM jobs WHERE id = ?", liar)[0][0])
    r2 = tmp_path / "r2"
    manifest = json.loads((r2 / result["manifest"]).read_text())
    assert (manifest["source"]["probe"]["width"], manifest["source"]["probe"]["height"]) == \
        media_samples.SIZE

    # the canary: never read, and none of it stored anywhere
    if hostile.atime_shows_reads(tmp_path):
        assert not hostile.was_read(canary, canary_atime), "the canary was read"
    for stored in r2.rglob("*"):
        if stored.is_file():
            assert marker not in stored.read_bytes(), stored
