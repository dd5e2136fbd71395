"""The offline provider: deterministic metadata without a model.

- title: the supplied title, else the first sentence of the supplied
  description, else the file name made readable, else the first sentence of
  the text;
- summary: the first sentences of the chosen text (or, with none, a sentence
  made from what ffprobe says);
- tags: the chosen text's most frequent content words (ties: first seen);
- chapters: at the video's scene changes (ffmpeg's scene detection), at most
  :data:`MAX_CHAPTERS`, none shorter than :data:`MIN_CHAPTER_S`; titled by the
  subtitle spoken there when there are subtitles.

Its output says ``provider: "heuristic"``: a reader can tell it from a model's.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import PurePosixPath

from .context import Context, Cue, cut
from .validate import MAX_CHAPTER_TITLE, MAX_SUMMARY, MAX_TAG, MAX_TITLE, Chapter, Draft

NAME = "heuristic"
MAX_CHAPTERS = 10
MIN_CHAPTER_S = 5.0
TAGS = 8
SUMMARY_CHARS = 400

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)
_STOPWORDS = """
a about above after again against all also am an and any are aren't as at be because been
before being below between both but by can can't cannot could couldn't did didn't do does
doesn't doing don't down during each few for from further get gets got had hadn't has hasn't
have haven't having he he'd he'll he's her here here's hers herself him himself his how how's
i i'd i'll i'm i've if in into is isn't it it's its itself just let's like me more most
mustn't my myself no nor not now of off on once one only or other ought our ours ourselves
out over own really same shan't she she'd she'll she's should shouldn't so some such than that
that's the their theirs them themselves then there there's these they they'd they'll they're
they've this those through to too under until up us very was wasn't we we'd we'll we're we've
were weren't what what's when when's where where's which while who who's whom why why's will
with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def _readable_name(file_name: str) -> str:
    stem = PurePosixPath(file_name).stem
    words = re.sub(r"[_.\-]+", " ", stem).split()
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _title(c: Context) -> str:
    for candidate in (c.title_hint,
                      _sentences(c.description)[0] if c.description and c.description.strip()
                      else None,
                      _readable_name(c.file_name) if c.file_name else None,
                      _sentences(c.text)[0] if c.text.strip() else None):
        if candidate and candidate.strip():
            title = cut(candidate, MAX_TITLE)
            return title[:-1] if title.endswith(".") and len(title) > 1 else title
    return "Untitled video"


def _summary(c: Context) -> str:
    out = ""
    for sentence in _sentences(c.text):
        if out and len(out) + 1 + len(sentence) > SUMMARY_CHARS:
            break
        out = f"{out} {sentence}".strip()
    if out:
        return cut(out, MAX_SUMMARY)
    parts = []
    if c.duration_s is not None:
        parts.append(f"{c.duration_s:.0f}-second")
    what = "video" + (f" ({c.facts})" if c.facts else "")
    name = f" named {c.file_name}" if c.file_name else ""
    return cut(f"A {' '.join([*parts, what])}{name}.", MAX_SUMMARY)


def _tags(c: Context) -> list[str]:
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    sources = [c.text, c.description or "", c.title_hint or "",
               _readable_name(c.file_name) if c.file_name else ""]
    for text in sources:
        for word in _WORD.findall(text.lower()):
            word = word.strip("'-")
            if len(word) < 3 or word in STOPWORDS or len(word) > MAX_TAG:
                continue
            counts[word] += 1
            first.setdefault(word, len(first))
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return ranked[:TAGS] or ["video"]


def _cue_at(cues: tuple[Cue, ...], at: float) -> str | None:
    for cue in cues:
        if cue.start_s >= at - 0.5:
            words = cue.text.split()
            return " ".join(words[:8]) + ("..." if len(words) > 8 else "")
    return None


def _chapters(c: Context, title: str) -> list[Chapter]:
    starts = [0.0]
    duration = c.duration_s
    if duration is not None:
        gap = max(MIN_CHAPTER_S, duration / (MAX_CHAPTERS * 2))
        for at in sorted(c.scenes):
            if at - starts[-1] >= gap and duration - at >= gap / 2:
                starts.append(round(at, 3))
        if len(starts) > MAX_CHAPTERS:  # keep an even spread
            step = (len(starts) - 1) / (MAX_CHAPTERS - 1)
            starts = [starts[round(i * step)] for i in range(MAX_CHAPTERS)]
    if len(starts) == 1:
        return [Chapter(0.0, cut(title, MAX_CHAPTER_TITLE))]
    out = []
    for i, at in enumerate(starts):
        spoken = _cue_at(c.cues, at) if c.cues else None
        out.append(Chapter(at, cut(spoken or f"Part {i + 1}", MAX_CHAPTER_TITLE)))
    return out


def describe(context: Context) -> Draft:
    """The heuristic's draft for ``context``: the same for the same context."""
    title = _title(context)
    return Draft(title=title, summary=_summary(context), tags=_tags(context),
                 chapters=_chapters(context, title))
