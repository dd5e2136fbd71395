"""The video pipeline's overhead: a 60 s 720p clip with sound to 480p, as a
``video.transcode`` job (filesystem R2, a budget small enough for at least 4
chunks) against one bare ffmpeg command with the same encoder settings.
Target: job wall time at most 1.15 times ffmpeg's on 2 cores.

    .venv/bin/python bench/transcode.py [--reps 3] [--budget 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from _harness import Daemon, prepare, record, sqlite_config, workdir, write_config
from deepmox.demo import make_clip

BARE = ["-map", "0:V:0", "-map", "0:a:0?", "-vf", "scale=-2:480,format=yuv420p",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-b:v", "1000k", "-maxrate", "1000k", "-bufsize", "2000k",
        "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]


def bare(clip: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                    "-i", str(clip), *BARE, str(out)], check=True)
    return time.perf_counter() - t


def job(clip: Path, budget: float) -> tuple[float, int]:
    import sqlite3

    d = workdir("transcode")
    db = d / "deepmox.db"
    cfg_path = write_config(d / "deepmox.toml", sqlite_config(db, (
        f'[r2]\npath = "{d / "r2"}"\n[video]\nallowed_dirs = ["{clip.parent}"]\n'
        f'[kinds."video.transcode"]\nbudget_s = {budget}\n')))
    cfg = prepare(cfg_path)
    daemon = Daemon(cfg_path)
    daemon.start()
    try:
        import trio

        from deepmox.client import JobSpec, open_client

        time.sleep(1.0)  # let the daemon start: its start-up is not the pipeline's cost

        async def submit() -> str:
            async with open_client(cfg) as client:
                j, _ = await client.submit(JobSpec(kind="video.transcode",
                                                   payload={"source": clip.as_uri()}))
                return j.id

        t = time.perf_counter()
        job_id = trio.run(submit)
        conn = sqlite3.connect(db)
        while True:
            state, result = conn.execute("SELECT state, result FROM jobs WHERE id = ?",
                                         (job_id,)).fetchone()
            if state in ("completed", "failed"):
                break
            time.sleep(0.01)
        took = time.perf_counter() - t
        assert state == "completed", result
        import json

        manifest = json.loads((d / "r2" / json.loads(result)["manifest"]).read_text())
        return took, manifest["chunks"]["480p"]["count"]
    finally:
        daemon.stop()
        shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0)
    args = ap.parse_args()
    d = workdir("clip")
    clip = d / "clip-720p-60s.mp4"
    make_clip(clip)
    bare_s, job_s, chunks = [], [], 0
    try:
        for _ in range(args.reps):  # interleaved
            bare_s.append(bare(clip, d / "bare.mp4"))
            took, chunks = job(clip, args.budget)
            job_s.append(took)
    finally:
        shutil.rmtree(d)
    b, j = statistics.median(bare_s), statistics.median(job_s)
    print(f"bare ffmpeg {b:.2f} s, video.transcode job {j:.2f} s ({chunks} chunks): "
          f"ratio {j / b:.2f} (median of {args.reps})")
    record("Video: a video.transcode job against bare ffmpeg", "\n".join([
        f"`.venv/bin/python bench/transcode.py --reps {args.reps} --budget {args.budget:g}` "
        "(60 s 1280x720 H.264/AAC test clip to 480p H.264 1000k/AAC 128k, libx264 veryfast; "
        "filesystem R2; target ratio ≤ 1.15)\n",
        "| bare ffmpeg s | job s | chunks | ratio |", "|---:|---:|---:|---:|",
        f"| {b:.2f} | {j:.2f} | {chunks} | {j / b:.2f} |",
        "\nThe job time runs from submission to the completed row, with the daemon already "
        "up; it includes ingest (copy and sha256), probe, the audio encode, every chunk, "
        "assembly, thumbnails and the manifest. All runs: bare "
        + ", ".join(f"{x:.2f}" for x in bare_s) + " s; job "
        + ", ".join(f"{x:.2f}" for x in job_s) + " s.",
    ]))


if __name__ == "__main__":
    main()
