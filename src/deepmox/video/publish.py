"""``video.publish``: ``video.transcode``'s steps, then metadata written by
Claude (or the heuristic), checked, and published in the manifest.

Steps after ``thumbs``:

=====================  ================================================================
``scenes``             scene changes of the first rendition (ffmpeg's scene score,
                       sampled at a few frames a second): chapter hints
``context``            the text by source priority: the input's subtitle track, the
                       payload's ``transcript``, its ``description``, else the file
                       name and probe
``describe:<p>``       one step per provider in ``[ai] providers`` order, until one
                       gives valid metadata (see :mod:`deepmox.actors.describe`)
``manifest``           ``manifest.json`` with ``metadata`` and the AI calls' costs
=====================  ================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec

from ..actors.describe import attempts, context_output, describe_steps, metadata, total_usage
from ..actors.kind import Step, StepContext
from ..bindings import media
from ..bindings.ai.context import Cue, choose
from ..errors import MediaInputError
from .transcode import Transcode, TranscodePayload, first_rendition, local_source, media_limits

log = logging.getLogger("deepmox.video")

SCENE_THRESHOLD = 0.2
SCENE_SAMPLE_FPS = 4.0
_Text = Annotated[str, msgspec.Meta(max_length=200_000)]


class PublishPayload(TranscodePayload, frozen=True, forbid_unknown_fields=True):
    description: _Text | None = None
    transcript: _Text | None = None
    title_hint: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


def _facts(probe: Mapping[str, Any]) -> str:
    fps = probe.get("fps")
    parts = [f"{probe['width']}x{probe['height']}"]
    if fps:
        parts.append(f"{fps:.0f} fps")
    if probe.get("video_codec"):
        parts.append(str(probe["video_codec"]))
    parts.append("with sound" if probe.get("has_audio") else "silent")
    return ", ".join(parts)


class Publish(Transcode):
    name = "video.publish"
    Payload = PublishPayload
    budget_s = 120.0

    def plan(self, payload: TranscodePayload, outputs: Mapping[str, Any]) -> Sequence[Step]:
        steps = self.media_steps(outputs)
        if "plan" not in outputs:
            return steps
        steps += [Step("scenes", self._scenes, 2.0), Step("context", self._context, 1.0),
                  *describe_steps(outputs), Step("manifest", self._manifest, 0.5)]
        return steps

    def result(self, payload: TranscodePayload, outputs: Mapping[str, Any]) -> Any:
        return {**super().result(payload, outputs), "metadata": metadata(outputs)}

    async def _scenes(self, ctx: StepContext) -> Any:
        src, _ = await first_rendition(ctx)
        times = await media.scene_changes(src, SCENE_THRESHOLD, sample_fps=SCENE_SAMPLE_FPS,
                                          limits=media_limits(ctx))
        return {"times": [round(t, 3) for t in times[:1000]]}

    async def _context(self, ctx: StepContext) -> Any:
        payload: PublishPayload = ctx.payload
        probe = ctx.outputs["probe"]
        cues: list[Cue] = []
        try:
            subs = await media.subtitles(await local_source(ctx), limits=media_limits(ctx))
            cues = [Cue(s.start_s, s.text) for s in subs]
        except MediaInputError as exc:
            # a subtitle track ffmpeg cannot read is no reason to fail the video
            log.warning("job %s: subtitles unreadable, not used: %s", ctx.job_id, exc.message,
                        extra={"event": "subtitles_unreadable", "job_id": ctx.job_id})
        context = choose(
            max_chars=ctx.bindings.cfg.ai.max_context_chars, cues=cues,
            transcript=payload.transcript, description=payload.description,
            title_hint=payload.title_hint,
            file_name=ctx.outputs["ingest"]["name"] or None,
            duration_s=float(probe["duration_s"]), scenes=ctx.outputs["scenes"]["times"],
            facts=_facts(probe))
        return context_output(ctx, context)

    def manifest(self, ctx: StepContext) -> dict[str, Any]:
        calls = [c for a in attempts(ctx.outputs) for c in a.calls]
        usage = total_usage(calls)
        return {
            **super().manifest(ctx),
            "metadata": metadata(ctx.outputs),
            "ai": {"calls": msgspec.to_builtins(calls),
                   "usage": {"input_tokens": usage.input_tokens,
                             "output_tokens": usage.output_tokens,
                             "cost_usd": usage.cost_usd}},
        }
