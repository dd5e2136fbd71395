"""A model's answer: decoded into Structs, then checked for meaning.

:func:`parse` finds the JSON object in the answer (bare, or in a fenced code
block, with prose around it) and decodes it into a :class:`Draft`;
:func:`check` lists what is wrong with it in words a model (and an operator
reading ``deepmox events``) can act on. Both return errors rather than raise:
the caller sends them back in the one repair request.
"""

from __future__ import annotations

import math
import re

import msgspec

MAX_TITLE = 100
MAX_SUMMARY = 1000
MAX_TAGS = 15
MAX_TAG = 40
MAX_CHAPTER_TITLE = 100
#: at most this many errors are reported (a model that got everything wrong
#: needs the first ones, not a novel)
MAX_ERRORS = 12

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)


class Chapter(msgspec.Struct, frozen=True):
    start_s: float
    title: str


class Draft(msgspec.Struct, frozen=True):
    """The fields a provider writes; extra fields in its answer are ignored."""

    title: str
    summary: str
    tags: list[str]
    chapters: list[Chapter]


_decode = msgspec.json.Decoder(Draft).decode


def _json_text(answer: str) -> str | None:
    fenced = _FENCE.search(answer)
    if fenced is not None and "{" in fenced.group(1):
        answer = fenced.group(1)
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end <= start:
        return None
    return answer[start:end + 1]


def parse(answer: str) -> tuple[Draft | None, list[str]]:
    """The draft in ``answer``, or the reason there is none."""
    text = _json_text(answer)
    if text is None:
        return None, ["the answer holds no JSON object"]
    try:
        return _decode(text), []
    except msgspec.ValidationError as exc:
        return None, [f"the JSON does not have the required shape: {exc}"]
    except msgspec.DecodeError as exc:
        return None, [f"the answer is not valid JSON: {exc}"]


def _length(errors: list[str], where: str, value: str, low: int, high: int) -> None:
    n = len(value.strip())
    if n < low:
        errors.append(f"{where} is empty")
    elif n > high:
        errors.append(f"{where} has {n} characters, at most {high} are allowed")


def check(draft: Draft, duration_s: float | None) -> list[str]:
    """What is wrong with ``draft`` for a video of ``duration_s`` (``None``: unknown)."""
    errors: list[str] = []
    _length(errors, "title", draft.title, 1, MAX_TITLE)
    _length(errors, "summary", draft.summary, 1, MAX_SUMMARY)
    if not 1 <= len(draft.tags) <= MAX_TAGS:
        errors.append(f"there are {len(draft.tags)} tags, 1 to {MAX_TAGS} are allowed")
    seen: set[str] = set()
    for i, tag in enumerate(draft.tags):
        where = f"tags[{i}] {tag[:60]!r}"
        if not tag.strip():
            errors.append(f"tags[{i}] is empty")
        elif len(tag) > MAX_TAG:
            errors.append(f"{where} has {len(tag)} characters, at most {MAX_TAG} are allowed")
        if tag != tag.lower():
            errors.append(f"{where} is not lowercase")
        if tag in seen:
            errors.append(f"{where} appears twice")
        seen.add(tag)
    if not draft.chapters:
        errors.append("there are no chapters; at least one, starting at 0, is needed")
    previous: float | None = None
    for i, chapter in enumerate(draft.chapters):
        at = chapter.start_s
        where = f"chapters[{i}].start_s {at:g}"
        _length(errors, f"chapters[{i}].title", chapter.title, 1, MAX_CHAPTER_TITLE)
        if not math.isfinite(at) or at < 0:
            errors.append(f"{where} is not a time in the video")
            continue
        if i == 0 and at != 0:
            errors.append(f"{where}: the first chapter must start at 0")
        if previous is not None and at <= previous:
            errors.append(f"{where} is not after the chapter before it ({previous:g}): "
                          "chapters must be sorted")
        if duration_s is not None and at >= duration_s:
            errors.append(f"{where} is past the end of the video ({duration_s:g} s)")
        previous = at
    if len(errors) > MAX_ERRORS:
        errors = [*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more"]
    return errors


def normalized(draft: Draft) -> Draft:
    """``draft`` with surrounding whitespace trimmed (a valid draft stays valid)."""
    return Draft(
        title=draft.title.strip(), summary=draft.summary.strip(),
        tags=[t.strip() for t in draft.tags],
        chapters=[Chapter(float(c.start_s), c.title.strip()) for c in draft.chapters])
