"""``video.transcode``: a video in, renditions, thumbnails and a manifest out.

Steps, each its own budgeted unit with deterministic object keys under
``jobs/{id}/`` (a redone step overwrites, never duplicates):

=======================  ==========================================================
``ingest``               fetch the source (file, http(s), r2), store it once at
                         ``source`` with its sha256
``probe``                ffprobe; limits checked before any heavy work
``plan``                 chunk length per rendition from the learned encode speed,
                         so that one chunk takes about half the budget
``audio``                the audio track, encoded once (``audio.m4a``)
``transcode:{r}:{n}``    chunk n of rendition r (``chunks/{r}/{n:05}.mp4``)
``assemble:{r}``         chunks + audio concatenated without re-encoding into
                         ``{r}.mp4``; its duration must match the source's within
                         0.5 s
``thumbs``               ``thumbs/NN.jpg`` and ``thumbs/poster.jpg``
``manifest``             ``manifest.json``: source, renditions, thumbnails, step times
=======================  ==========================================================

Every actor starts with an empty scratch folder; a step that needs the source
fetches it from the store once per actor run. Every use of the store goes
through :func:`store`, which first honours a throttle on ``r2`` that any
actor on any daemon recorded (an S3/R2 429 or 503): the fleet backs off
together instead of every actor finding out by itself.
"""

from __future__ import annotations

import functools
import math
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio

from .. import config
from ..actors.kind import Kind, Step, StepContext
from ..bindings import media
from ..bindings.r2 import R2
from ..bindings.r2.s3 import UPSTREAM as R2_UPSTREAM
from ..errors import PermanentError
from . import ingest, speed

#: the same rules as ``[[video.renditions]]``
NAME_PATTERN = config.RENDITION_NAME
DURATION_TOLERANCE_S = 0.5
#: the widest (or tallest) frame shape accepted: beyond it a rendition's width
#: rounds to under 2 pixels or over the encoder's limit
MAX_ASPECT = 16
_HEIGHT, _VIDEO_K, _AUDIO_K = (config.RENDITION_HEIGHT, config.RENDITION_VIDEO_KBPS,
                               config.RENDITION_AUDIO_KBPS)


class RenditionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    height: Annotated[int, msgspec.Meta(ge=_HEIGHT[0], le=_HEIGHT[1])]
    video_bitrate_k: Annotated[int, msgspec.Meta(ge=_VIDEO_K[0], le=_VIDEO_K[1])] = 1000
    audio_bitrate_k: Annotated[int, msgspec.Meta(ge=_AUDIO_K[0], le=_AUDIO_K[1])] = 128


class TranscodePayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: no control characters: a NUL or a newline is never part of a real path or URL
    source: Annotated[str, msgspec.Meta(pattern=r"^(file|https?|r2)://[^\x00-\x1f\x7f]*$",
                                        max_length=4096)]
    renditions: Annotated[list[RenditionSpec],
                          msgspec.Meta(min_length=1, max_length=config.MAX_RENDITIONS)] | None \
        = None
    thumbnails: Annotated[int, msgspec.Meta(ge=0, le=config.MAX_THUMBNAILS)] | None = None

    def __post_init__(self) -> None:
        names = [r.name for r in self.renditions or []]
        if len(set(names)) != len(names):
            raise ValueError("rendition names must be unique")


def prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def chunk_key(job_id: str, rendition: str, n: int) -> str:
    return f"{prefix(job_id)}/chunks/{rendition}/{n:05}.mp4"


def _renditions(ctx: StepContext, payload: TranscodePayload) -> list[RenditionSpec]:
    if payload.renditions:
        return list(payload.renditions)
    return [RenditionSpec(name=r.name, height=r.height, video_bitrate_k=r.video_bitrate_k,
                          audio_bitrate_k=r.audio_bitrate_k)
            for r in ctx.bindings.cfg.video.renditions]


async def store(ctx: StepContext) -> R2:
    """The object store, once no throttle on it is in force (waits, or hands
    the job back to run when the throttle ends: no attempt used)."""
    await ctx.wait_throttle(R2_UPSTREAM)
    return ctx.bindings.require_r2()


async def local_source(ctx: StepContext) -> Path:
    """The source in this actor's scratch folder, fetched once per actor run."""
    path = ctx.scratch.path / "source"
    if not path.exists():
        r2 = await store(ctx)
        key = f"{prefix(ctx.job_id)}/source"
        info = await r2.head(key)
        if info is None:
            raise PermanentError(f"the ingested source {key} is missing from the store")
        ctx.scratch.ensure_room(info.size)
        await r2.get(key, path)
    return path


async def first_rendition(ctx: StepContext) -> tuple[Path, dict[str, Any]]:
    """The first assembled rendition in this actor's scratch folder, and its
    step output. Smaller than the source, so cheaper to seek and decode, and
    the same input whichever actor runs the step."""
    first = ctx.outputs[f"assemble:{ctx.outputs['plan']['renditions'][0]['name']}"]
    src = ctx.scratch.path / f"assemble-{first['name']}" / f"{first['name']}.mp4"
    if not await trio.Path(src).exists():
        src = ctx.scratch.path / "first-rendition.mp4"
        if not await trio.Path(src).exists():
            ctx.scratch.ensure_room(int(first["size"]))
            await (await store(ctx)).get(first["key"], src)
    return src, first


def media_limits(ctx: StepContext) -> media.Limits:
    return media.Limits.from_config(ctx.bindings.cfg.limits)


class Transcode(Kind):
    name = "video.transcode"
    Payload = TranscodePayload

    def plan(self, payload: TranscodePayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        steps = self.media_steps(outputs)
        if "plan" in outputs:
            steps.append(Step("manifest", self._manifest, 0.5))
        return steps

    def media_steps(self, outputs: Mapping[str, Any]) -> list[Step]:
        """The steps from ``ingest`` to ``thumbs``: all of them once ``plan`` ran."""
        steps = [Step("ingest", self._ingest, cost_s=5.0), Step("probe", self._probe, 2.0),
                 Step("plan", self._plan, 0.5)]
        plan = outputs.get("plan")
        if plan is None:
            return steps
        if outputs["probe"]["has_audio"]:
            steps.append(Step("audio", self._audio, plan["audio_cost_s"]))
        for r in plan["renditions"]:
            name = r["name"]
            for n in range(r["chunks"]):
                steps.append(Step(f"transcode:{name}:{n}",
                                  functools.partial(self._transcode, name=name, n=n),
                                  r["chunk_cost_s"]))
            steps.append(Step(f"assemble:{name}", functools.partial(self._assemble, name=name),
                              5.0))
        steps.append(Step("thumbs", self._thumbs, 3.0))
        return steps

    def result(self, payload: TranscodePayload, outputs: Mapping[str, Any]) -> Any:
        return {
            "manifest": outputs["manifest"]["key"],
            "renditions": {v["name"]: v["key"] for k, v in outputs.items()
                           if k.startswith("assemble:")},
        }

    # -- steps -------------------------------------------------------------------

    async def _ingest(self, ctx: StepContext) -> Any:
        payload: TranscodePayload = ctx.payload
        cfg = ctx.bindings.cfg
        r2 = await store(ctx)
        dest = ctx.scratch.path / "source"
        room = ctx.scratch.quota_bytes - ctx.scratch.used_bytes()
        fetched = await ingest.fetch(
            payload.source, dest, r2=r2, max_bytes=min(cfg.limits.max_input_bytes, room),
            allowed_dirs=cfg.video.allowed_dirs,
            allow_private=cfg.video.allow_private_networks, allow_hosts=cfg.video.allow_hosts)
        key = f"{prefix(ctx.job_id)}/source"
        existing = await r2.head(key)
        if existing is None or existing.metadata.get("sha256") != fetched.sha256:
            await r2.put(key, dest, content_type="application/octet-stream",
                         # metadata travels as HTTP headers: ASCII only
                         metadata={"sha256": fetched.sha256,
                                   "name": urllib.parse.quote(fetched.name[:200])})
        return {"key": key, "sha256": fetched.sha256, "size": fetched.size,
                "name": fetched.name}

    async def _probe(self, ctx: StepContext) -> Any:
        limits = ctx.bindings.cfg.limits
        probe = await media.probe(await local_source(ctx), limits=media_limits(ctx))
        video = probe.video
        if video is None:
            raise PermanentError("the input has no video stream")
        if not video.width or not video.height:
            raise PermanentError("the input's video stream has no frame size ffprobe can read")
        if max(video.width / video.height, video.height / video.width) > MAX_ASPECT:
            raise PermanentError(
                f"the input's frames are {video.width}x{video.height}: an aspect ratio beyond "
                f"{MAX_ASPECT}:1 cannot be scaled to a rendition")
        if probe.duration_s <= 0:
            raise PermanentError("the input has no duration ffprobe can read")
        for value, limit, key, unit in (
                (probe.duration_s, limits.max_duration_s, "max_duration_s", " s"),
                (video.width, limits.max_width, "max_width", " px"),
                (video.height, limits.max_height, "max_height", " px")):
            if value > limit:
                raise PermanentError(
                    f"the input is over a limit: {value:g}{unit}, the limit is {limit:g}{unit} "
                    f"([limits] {key})")
        audio = probe.audio
        return {
            "duration_s": probe.duration_s, "size": probe.size_bytes,
            "format": probe.format_name, "bit_rate": probe.bit_rate,
            "width": video.width, "height": video.height, "fps": video.fps,
            "video_codec": video.codec_name, "has_audio": audio is not None,
            "audio_codec": audio.codec_name if audio else None,
        }

    async def _plan(self, ctx: StepContext) -> Any:
        payload: TranscodePayload = ctx.payload
        probe = ctx.outputs["probe"]
        duration = float(probe["duration_s"])
        budget = ctx.bindings.cfg.budget_for(self.name, self.budget_s)
        keys = await media.keyframes(await local_source(ctx), limits=media_limits(ctx))
        out: list[dict[str, Any]] = []
        for r in _renditions(ctx, payload):
            known = await speed.known_speed(ctx.bindings.d1, self.name, r.name)
            s = known or speed.DEFAULT_SPEED
            bounds = cut_points(duration, speed.chunk_seconds(s, budget), keys)
            height = min(r.height, int(probe["height"]))
            height -= height % 2
            out.append({"name": r.name, "height": height, "video_bitrate_k": r.video_bitrate_k,
                        "audio_bitrate_k": r.audio_bitrate_k, "chunks": len(bounds),
                        "bounds": bounds, "chunk_cost_s": max(b[1] for b in bounds) / s,
                        "speed": s, "speed_known": known is not None})
        return {"renditions": out, "duration_s": duration,
                "audio_bitrate_k": max(r["audio_bitrate_k"] for r in out),
                "audio_copy": probe.get("audio_codec") == "aac",
                "audio_cost_s": max(1.0, duration / 50)}

    async def _audio(self, ctx: StepContext) -> Any:
        r2 = await store(ctx)
        src = await local_source(ctx)
        out = ctx.scratch.path / "audio.m4a"
        plan = ctx.outputs["plan"]
        await media.encode_audio(src, out, bitrate_k=plan["audio_bitrate_k"],
                                 copy=plan["audio_copy"], limits=media_limits(ctx))
        key = f"{prefix(ctx.job_id)}/audio.m4a"
        await r2.put(key, out, content_type="audio/mp4")
        return {"key": key, "size": out.stat().st_size}

    async def _transcode(self, ctx: StepContext, *, name: str, n: int) -> Any:
        plan = ctx.outputs["plan"]
        r = next(x for x in plan["renditions"] if x["name"] == name)
        start, length = r["bounds"][n]
        src = await local_source(ctx)
        out = ctx.scratch.path / f"chunk-{name}-{n:05}.mp4"
        began = trio.current_time()
        await media.transcode_chunk(src, out, start_s=start, duration_s=length,
                                    height=r["height"], video_bitrate_k=r["video_bitrate_k"],
                                    limits=media_limits(ctx))
        took = trio.current_time() - began
        key = chunk_key(ctx.job_id, name, n)
        result = await (await store(ctx)).put(key, out, content_type="video/mp4")
        size = out.stat().st_size
        out.unlink()
        if took > 0:
            await speed.observe(ctx.bindings.d1, self.name, name, length / took, time.time())
        return {"key": key, "size": size, "etag": result.etag, "seconds": round(took, 3)}

    async def _assemble(self, ctx: StepContext, *, name: str) -> Any:
        plan = ctx.outputs["plan"]
        r = next(x for x in plan["renditions"] if x["name"] == name)
        r2 = await store(ctx)
        folder = ctx.scratch.path / f"assemble-{name}"
        folder.mkdir(exist_ok=True)
        parts = []
        for n in range(r["chunks"]):
            key = chunk_key(ctx.job_id, name, n)
            info = await r2.head(key)
            if info is None:
                raise PermanentError(f"chunk {key} is missing from the store")
            ctx.scratch.ensure_room(info.size)
            path = folder / f"{n:05}.mp4"
            await r2.get(key, path)
            parts.append(path)
        audio = None
        if "audio" in ctx.outputs:
            audio = folder / "audio.m4a"
            await r2.get(ctx.outputs["audio"]["key"], audio)
        out = folder / f"{name}.mp4"
        await media.concat(parts, audio, out, limits=media_limits(ctx))
        probe = await media.probe(out, limits=media_limits(ctx))
        expected = float(plan["duration_s"])
        if abs(probe.duration_s - expected) > DURATION_TOLERANCE_S:
            raise PermanentError(
                f"the assembled {name} lasts {probe.duration_s:.2f} s, the source "
                f"{expected:.2f} s (more than {DURATION_TOLERANCE_S} s apart)")
        video = probe.video
        if video is None:
            raise PermanentError(f"the assembled {name} has no video stream")
        size, digest = await trio.to_thread.run_sync(ingest.sha256_file, out)
        key = f"{prefix(ctx.job_id)}/{name}.mp4"
        await r2.put(key, out, content_type="video/mp4", metadata={"sha256": digest})
        return {"name": name, "key": key, "size": size, "sha256": digest,
                "width": video.width, "height": video.height,
                "duration_s": probe.duration_s, "bitrate": probe.bit_rate,
                "has_audio": probe.has_audio}

    async def _thumbs(self, ctx: StepContext) -> Any:
        payload: TranscodePayload = ctx.payload
        count = payload.thumbnails
        if count is None:
            count = ctx.bindings.cfg.video.thumbnails
        duration = float(ctx.outputs["plan"]["duration_s"])
        src, first = await first_rendition(ctx)
        height = min(360, int(first["height"]))
        r2 = await store(ctx)
        shots = [(f"{i:02}.jpg", duration * (i + 1) / (count + 1)) for i in range(count)]
        shots.append(("poster.jpg", min(duration * 0.1, 5.0)))
        files = [(ctx.scratch.path / f"thumb-{name}", at) for name, at in shots]
        await media.thumbnails(src, files, height=height - height % 2, limits=media_limits(ctx))
        keys = []
        for (name, at), (path, _) in zip(shots, files, strict=True):
            key = f"{prefix(ctx.job_id)}/thumbs/{name}"
            await r2.put(key, path, content_type="image/jpeg")
            keys.append({"key": key, "at_s": round(at, 3)})
        return {"thumbnails": keys[:-1], "poster": keys[-1]}

    def manifest(self, ctx: StepContext) -> dict[str, Any]:
        """What ``manifest.json`` holds."""
        return build_manifest(ctx.job_id, self.name, ctx.outputs, ctx.step_times)

    async def _manifest(self, ctx: StepContext) -> Any:
        manifest = self.manifest(ctx)
        key = f"{prefix(ctx.job_id)}/manifest.json"
        body = msgspec.json.format(msgspec.json.encode(manifest), indent=2)
        await (await store(ctx)).put(key, body, content_type="application/json")
        return {"key": key}


def cut_points(duration: float, chunk_s: float, keyframes: Sequence[float]
               ) -> list[list[float]]:
    """Chunks as [start, length] pairs about ``chunk_s`` long, each starting on
    a key frame when the source has one nearby (within a third of a chunk), so
    no chunk decodes frames only to throw them away."""
    count = max(1, math.ceil(duration / chunk_s - 1e-9))
    step = duration / count
    starts = [0.0]
    for k in range(1, count):
        ideal = k * step
        near = [t for t in keyframes if abs(t - ideal) <= step / 3 and t > starts[-1] + 0.5]
        cut = min(near, key=lambda t: abs(t - ideal)) if near else ideal
        if cut < duration - 0.5:
            starts.append(round(cut, 6))
    ends = [*starts[1:], duration]
    return [[s, round(e - s, 6)] for s, e in zip(starts, ends, strict=True)]


def build_manifest(job_id: str, kind: str, outputs: Mapping[str, Any],
                   times: Mapping[str, float]) -> dict[str, Any]:
    ingest_out = outputs["ingest"]
    return {
        "job_id": job_id,
        "kind": kind,
        "source": {"key": ingest_out["key"], "sha256": ingest_out["sha256"],
                   "size": ingest_out["size"], "name": ingest_out["name"],
                   "probe": outputs["probe"]},
        "renditions": [v for k, v in outputs.items() if k.startswith("assemble:")],
        "thumbnails": outputs["thumbs"]["thumbnails"],
        "poster": outputs["thumbs"]["poster"],
        "chunks": {r["name"]: {"count": r["chunks"], "bounds": r["bounds"]}
                   for r in outputs["plan"]["renditions"]},
        "steps": {name: round(t, 3) for name, t in times.items()},
    }


__all__ = ["R2", "Transcode", "TranscodePayload"]
