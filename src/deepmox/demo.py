"""``deepmox demo`` (what ``make run`` runs): a daemon on the embedded defaults,
live, on a job that shows what deepmox is for.

- ``demo video`` (the default): generates a 60 s 720p clip with sound and
  subtitles from ffmpeg's test sources, submits ``video.publish`` on it, shows
  the job's progress and prints its manifest and the metadata written for it
  (by Claude when a provider is usable here, else by the offline heuristic,
  and it says so);
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
from typing import Any

import msgspec
import trio
from rich.live import Live

from .client import JobSpec
from .config import Config, KindConfig, ServerConfig
from .daemon import Daemon, serve
from .jobs import TERMINAL_STATES, Job
from .render import console, job_table, timeline
from .video.publish import Publish

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


#: the demo clip's scenes: a lavfi source each, TOUR_SCENE_S seconds long
TOUR_SOURCES = ("testsrc2", "smptehdbars", "life=mold=10:ratio=0.3:death_color=#000030",
                "rgbtestsrc")
TOUR_SCENE_S = 15
TOUR_CUES = (
    (0.5, 4.5, "Welcome to a short tour of the test patterns ffmpeg can draw."),
    (5.0, 9.5, "First, a moving test card with a clock, a gradient and colour bars."),
    (15.5, 20.0, "Next, the high-definition SMPTE colour bars that calibrate monitors."),
    (30.5, 35.0, "Then Conway's Game of Life: cells are born and die on a grid."),
    (45.5, 50.0, "Finally, plain red, green and blue stripes."),
    (55.0, 59.5, "That is the end of the tour. Thanks for watching."),
)
TOUR_DESCRIPTION = "A one-minute tour of ffmpeg's built-in test patterns, with subtitles."


def make_tour(path: Path) -> None:
    """A 60 s 720p H.264/AAC clip: four test patterns of 15 s each (three scene
    cuts), a tone, and an English subtitle track narrating the tour."""
    from .testing.media_samples import srt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    subs = path.with_suffix(".srt")
    subs.write_text(srt(TOUR_CUES))
    size = "size=1280x720:rate=30"
    graph = ""
    for i, src in enumerate(TOUR_SOURCES):
        name, _, options = src.partition("=")
        graph += (f"{name}={size}{':' + options if options else ''},"
                  f"trim=duration={TOUR_SCENE_S},setpts=PTS-STARTPTS,format=yuv420p,"
                  f"setsar=1[v{i}];")
    graph += "".join(f"[v{i}]" for i in range(len(TOUR_SOURCES)))
    graph += f"concat=n={len(TOUR_SOURCES)}:v=1:a=0[out]"
    seconds = TOUR_SCENE_S * len(TOUR_SOURCES)
    try:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
             "-filter_complex", graph,
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
             "-i", str(subs), "-map", "[out]", "-map", "0:a", "-map", "1:s",
             "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "128k", "-c:s", "mov_text",
             "-metadata:s:s:0", "language=eng", str(tmp)],
            check=True)
        tmp.rename(path)
    finally:
        subs.unlink(missing_ok=True)


def show_metadata(meta: dict[str, Any], providers: list[str]) -> None:
    """The metadata a ``video.publish`` job wrote, and who wrote it."""
    console.print(f"[bold]metadata[/] (provider [bold]{meta['provider']}[/], text from "
                  f"{meta['context_source']}):")
    console.print(f"  title    {meta['title']}")
    console.print(f"  summary  {meta['summary']}")
    console.print(f"  tags     {', '.join(meta['tags'])}")
    for c in meta["chapters"]:
        console.print(f"  {int(c['start_s']) // 60:02}:{int(c['start_s']) % 60:02}    "
                      f"{c['title']}")
    usage = meta["usage"]
    cost = "unknown" if usage["cost_usd"] is None else f"${usage['cost_usd']:.4f}"
    console.print(f"  cost     {usage['input_tokens']} input and {usage['output_tokens']} "
                  f"output tokens, {cost}")
    if meta["provider"] == "heuristic" and providers[-1:] == ["heuristic"] \
            and len(providers) > 1:
        console.print("[yellow]Written by the offline heuristic[/]: no model provider is "
                      "usable here (no `claude` on PATH, no ANTHROPIC_API_KEY; "
                      "`deepmox doctor` says which). With either, Claude writes it.")


async def run_video(cfg: Config) -> int:
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        console.print("[red]ffmpeg and ffprobe are needed for the video demo[/] "
                      "(apt-get install ffmpeg); `deepmox demo core` runs without them.")
        return 1
    clip = Path(os.path.join(os.getcwd(), "var", "demo", "test-pattern-tour.mp4"))
    if not await trio.Path(clip).exists():
        console.print(f"generating a {CLIP_SECONDS} s 720p test clip with sound and subtitles "
                      f"at {clip} ...")
        try:
            await trio.to_thread.run_sync(make_tour, clip)
        except (subprocess.CalledProcessError, OSError) as exc:
            console.print(f"[red]ffmpeg could not make the demo clip[/]: {exc}")
            return 1
    video = msgspec.structs.replace(
        cfg.video, allowed_dirs=[*cfg.video.allowed_dirs, str(clip.parent)])
    cfg = msgspec.structs.replace(cfg, video=video, server=_any_port(cfg))
    budget = cfg.budget_for(Publish.name, Publish.budget_s)
    console.print(f"[bold]deepmox demo[/]: SQLite at {cfg.d1.path}, objects under "
                  f"{cfg.r2.path}; video.publish with a {budget:g} s budget per actor: "
                  "transcoded in budget-sized chunks, then described by the first usable of "
                  f"{', '.join(cfg.ai.providers)}.")
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, cfg)
        if daemon.api_address:
            console.print(f"status page: http://{daemon.api_address}/  (live while the "
                          "demo runs)")
        job, _ = await daemon.client.submit(JobSpec(kind=Publish.name, payload={
            "source": clip.as_uri(), "description": TOUR_DESCRIPTION}))
        (done,) = await _follow(daemon, [job.id])
        timeline(f"{done.id} ({done.kind}: {done.state})", await daemon.client.events(done.id))
        if done.state == "completed" and isinstance(done.result, dict):
            r2 = daemon.supervisor.bindings.require_r2()
            manifest = msgspec.json.decode(await r2.get_bytes(done.result["manifest"]))
            renditions = ", ".join(f"{r['key']} ({r['width']}x{r['height']}, "
                                   f"{r['duration_s']:.1f} s)" for r in manifest["renditions"])
            console.print(f"[bold]manifest[/] {done.result['manifest']}: {renditions}; "
                          f"{len(manifest['thumbnails'])} thumbnails and a poster")
            show_metadata(manifest["metadata"], list(cfg.ai.providers))
        daemon.stop()
    return 0 if done.state == "completed" else 1
