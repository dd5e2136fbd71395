"""``deepmox demo`` (what ``make run`` runs): a daemon on the embedded defaults,
live, on a job that shows what deepmox is for.

- ``demo video`` (the default): generates a 60 s 720p clip with sound with
  ffmpeg's test sources, submits ``video.transcode`` on it, shows the job's
  progress and prints its manifest;
- ``demo core``: a batch that shows every restart policy: noop jobs, a
  ``sleep`` that needs several continuations (its kind gets a 2 s budget for
  the demo), a ``fail`` that recovers after two transient errors, one that is
  rate limited once, one that fails permanently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import trio
from rich.live import Live

from .client import JobSpec
from .config import Config, KindConfig, ServerConfig
from .daemon import Daemon, serve
from .jobs import TERMINAL_STATES, Job
from .render import console, job_table, timeline

CORE_BATCH = [
    JobSpec(kind="noop", payload={"value": "hello"}),
    JobSpec(kind="noop"),
    JobSpec(kind="noop"),
    JobSpec(kind="sleep", payload={"seconds": 6, "steps": 6}),
    JobSpec(kind="fail", payload={"error_class": "transient", "times": 2}),
    JobSpec(kind="fail", payload={"error_class": "rate_limited", "times": 1,
                                  "retry_after": 2, "upstream": "demo-api"}),
    JobSpec(kind="fail", payload={"error_class": "permanent"}, max_attempts=3),
]

CLIP_SECONDS = 60


async def _follow(daemon: Daemon, ids: list[str]) -> list[Job]:
    jobs: list[Job] = []
    with Live(job_table([], title="jobs"), console=console, refresh_per_second=8) as live:
        while True:
            jobs = [await daemon.client.get(i) for i in ids]
            live.update(job_table(jobs, title="jobs"))
            if all(j.state in TERMINAL_STATES for j in jobs):
                return jobs
            await trio.sleep(0.2)


async def run_core(cfg: Config) -> int:
    kinds = dict(cfg.kinds)
    kinds.setdefault("sleep", KindConfig(budget_s=2.0))
    sup = msgspec.structs.replace(cfg.supervisor, backoff_base_s=0.5, drain_s=2.0)
    cfg = msgspec.structs.replace(cfg, kinds=kinds, supervisor=sup, server=_any_port(cfg))
    console.print(f"[bold]deepmox demo core[/]: SQLite at {cfg.d1.path}; the sleep kind gets a "
                  f"{cfg.budget_for('sleep'):g} s budget, so its 6 s job needs continuations.")
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, cfg)
        submitted = await daemon.client.submit_many([(s, None) for s in CORE_BATCH])
        jobs = await _follow(daemon, [job.id for job, _ in submitted])
        for job in jobs:
            timeline(f"{job.id} ({job.kind}: {job.state})", await daemon.client.events(job.id))
        stats = daemon.supervisor.statistics()
        console.print(
            f"[bold]done[/]: claimed {stats.claimed} times, {stats.completed} completed, "
            f"{stats.failed} failed, {stats.retried} retries, {stats.continued} continuations.")
        daemon.stop()
    return 0


def _any_port(cfg: Config) -> ServerConfig:
    """The demo's daemon listens on a free loopback port, so that it runs
    beside a daemon already on the configured one."""
    if not cfg.server.listen:
        return cfg.server
    return msgspec.structs.replace(cfg.server, listen="127.0.0.1:0")


def make_clip(path: Path, seconds: int = CLIP_SECONDS) -> None:
    """A 720p H.264/AAC clip from ffmpeg's test sources."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-shortest", str(tmp)],
        check=True)
    tmp.rename(path)


async def run_video(cfg: Config) -> int:
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        console.print("[red]ffmpeg and ffprobe are needed for the video demo[/] "
                      "(apt-get install ffmpeg); `deepmox demo core` runs without them.")
        return 1
    clip = Path(os.path.join(os.getcwd(), "var", "demo", "clip-720p-60s.mp4"))
    if not await trio.Path(clip).exists():
        console.print(f"generating a {CLIP_SECONDS} s 720p test clip with sound at {clip} ...")
        await trio.to_thread.run_sync(make_clip, clip)
    video = msgspec.structs.replace(
        cfg.video, allowed_dirs=[*cfg.video.allowed_dirs, str(clip.parent)])
    cfg = msgspec.structs.replace(cfg, video=video, server=_any_port(cfg))
    console.print(f"[bold]deepmox demo[/]: SQLite at {cfg.d1.path}, objects under "
                  f"{cfg.r2.path}; video.transcode with a {cfg.budget_for('video.transcode'):g} "
                  "s budget per actor, in budget-sized chunks.")
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, cfg)
        if daemon.api_address:
            console.print(f"status page: http://{daemon.api_address}/  (live while the "
                          "demo runs)")
        job, _ = await daemon.client.submit(
            JobSpec(kind="video.transcode", payload={"source": clip.as_uri()}))
        (done,) = await _follow(daemon, [job.id])
        timeline(f"{done.id} ({done.kind}: {done.state})", await daemon.client.events(done.id))
        if done.state == "completed" and isinstance(done.result, dict):
            r2 = daemon.supervisor.bindings.require_r2()
            manifest = await r2.get_bytes(done.result["manifest"])
            console.print(f"[bold]manifest[/] {done.result['manifest']}:")
            console.print_json(manifest.decode())
        daemon.stop()
    return 0 if done.state == "completed" else 1
