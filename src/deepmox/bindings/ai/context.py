"""What a provider is given to describe, chosen by source priority.

The text comes from the best source there is, in this order:

1. ``subtitles``: the input's own subtitle track (extracted by ffmpeg);
2. ``transcript``: a transcript supplied with the job;
3. ``description``: a description supplied with the job;
4. ``metadata`` (a video: its file name and probe) or ``title_hint`` (text
   jobs: the title supplied).

The chosen text is cut to ``[ai] max_context_chars``. Which one was used is
recorded in the output as ``context_source``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

ContextSource = Literal["subtitles", "transcript", "description", "metadata", "title_hint"]
_LABELS = {
    "subtitles": "the video's subtitle track",
    "transcript": "a transcript supplied by the uploader",
    "description": "a description supplied by the uploader",
    "metadata": "no text: only the file name and what ffprobe says",
    "title_hint": "only the uploader's title",
}


class Cue(msgspec.Struct, frozen=True, array_like=True):
    """One subtitle: when it starts (seconds) and what it says."""

    start_s: float
    text: str


class Context(msgspec.Struct, frozen=True, kw_only=True):
    source: ContextSource
    #: the chosen text, cut to the configured length
    text: str
    #: subtitle cues when the text came from them (for chapter titles), cut alike
    cues: tuple[Cue, ...] = ()
    title_hint: str | None = None
    description: str | None = None
    file_name: str | None = None
    duration_s: float | None = None
    #: scene changes (seconds), hints for chapter boundaries
    scenes: tuple[float, ...] = ()
    #: one line of what ffprobe says ("1280x720, 30 fps, h264, with sound")
    facts: str | None = None

    def source_label(self) -> str:
        return _LABELS[self.source]


def cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long, cut at a word boundary when
    one lies in the last tenth."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return head[:space] if space >= limit * 0.9 else head


def _cut_cues(cues: Sequence[Cue], limit: int) -> tuple[Cue, ...]:
    kept: list[Cue] = []
    used = 0
    for cue in cues:
        text = " ".join(cue.text.split())
        if not text:
            continue
        room = limit - used - (1 if kept else 0)
        if room <= 0:
            break
        text = cut(text, room)
        if not text:
            break
        kept.append(Cue(cue.start_s, text))
        used += len(text) + (1 if len(kept) > 1 else 0)
    return tuple(kept)


def choose(*, max_chars: int, cues: Sequence[Cue] = (), transcript: str | None = None,
           description: str | None = None, title_hint: str | None = None,
           file_name: str | None = None, duration_s: float | None = None,
           scenes: Sequence[float] = (), facts: str | None = None) -> Context:
    """The context by source priority (see the module docstring)."""
    source: ContextSource
    text = ""
    kept = _cut_cues(cues, max_chars)
    if kept:
        source, text = "subtitles", " ".join(c.text for c in kept)
    elif transcript and transcript.strip():
        source, text = "transcript", cut(transcript, max_chars)
    elif description and description.strip():
        source, text = "description", cut(description, max_chars)
    elif file_name is not None or facts is not None:
        source = "metadata"
    else:
        source, text = "title_hint", cut(title_hint or "", max_chars)
    return Context(source=source, text=text, cues=kept, title_hint=title_hint or None,
                   description=description or None, file_name=file_name,
                   duration_s=duration_s, scenes=tuple(scenes), facts=facts)
