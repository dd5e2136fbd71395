"""What a provider is given and what its answer must be: source priority,
parsing, the checks for meaning, the repair prompt, the heuristic.

Rules: pure functions, no I/O; hypothesis drives the heuristic with arbitrary
contexts (its output must always pass the same checks a model's must) and the
parser with arbitrary answers (it never raises).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from deepmox.bindings.ai import heuristic, prompt
from deepmox.bindings.ai.context import Cue, choose, cut
from deepmox.bindings.ai.validate import Chapter, Draft, check, normalized, parse

GOOD = Draft(title="A title", summary="A summary.", tags=["one", "two"],
             chapters=[Chapter(0.0, "Start"), Chapter(30.0, "Middle")])


# -- source priority ------------------------------------------------------------------


def test_subtitles_come_first() -> None:
    c = choose(max_chars=1000, cues=[Cue(1.0, "Hello"), Cue(2.0, "<b>world</b>")],
               transcript="T", description="D", file_name="f.mp4")
    assert c.source == "subtitles"
    assert c.text == "Hello <b>world</b>"


def test_then_transcript_description_metadata_title() -> None:
    assert choose(max_chars=99, transcript="T", description="D").source == "transcript"
    assert choose(max_chars=99, transcript="  ", description="D").source == "description"
    meta = choose(max_chars=99, file_name="clip.mp4", title_hint="Hint")
    assert (meta.source, meta.text, meta.title_hint) == ("metadata", "", "Hint")
    hint = choose(max_chars=99, title_hint="Hint")
    assert (hint.source, hint.text) == ("title_hint", "Hint")


def test_text_is_cut_to_the_limit() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    c = choose(max_chars=100, transcript=words)
    assert len(c.text) <= 100
    assert c.text.endswith(("word13", "word14", "word15"))  # a word boundary
    cues = [Cue(float(i), f"line number {i}") for i in range(100)]
    sub = choose(max_chars=60, cues=cues)
    assert len(sub.text) <= 60
    assert sub.text == " ".join(cue.text for cue in sub.cues)


@given(st.text(), st.integers(min_value=1, max_value=500))
def test_cut_never_exceeds(text: str, limit: int) -> None:
    assert len(cut(text, limit)) <= limit


# -- parsing ----------------------------------------------------------------------------


def test_parse_bare_fenced_and_with_prose() -> None:
    doc = json.dumps({"title": "T", "summary": "S", "tags": ["a"],
                      "chapters": [{"start_s": 0, "title": "c"}], "extra": 1})
    for answer in (doc, f"```json\n{doc}\n```", f"Here you go:\n```\n{doc}\n```\nEnjoy!",
                   f"Sure. {doc} Hope that helps."):
        draft, errors = parse(answer)
        assert errors == [], answer
        assert draft is not None
        assert draft.title == "T"


def test_parse_says_what_is_wrong() -> None:
    assert parse("no json at all")[1] == ["the answer holds no JSON object"]
    assert "not valid JSON" in parse("{title: 'x'}")[1][0]
    assert "required shape" in parse('{"title": "x"}')[1][0]
    assert "required shape" in parse('{"title": 1, "summary": "", "tags": [], '
                                     '"chapters": []}')[1][0]


@given(st.text())
@settings(max_examples=200)
def test_parse_never_raises(answer: str) -> None:
    draft, errors = parse(answer)
    assert (draft is None) == bool(errors)


# -- the checks for meaning ---------------------------------------------------------------


def test_a_good_draft_passes() -> None:
    assert check(GOOD, 60.0) == []
    assert check(GOOD, None) == []


def test_each_rule() -> None:
    bad = Draft(title="x" * 101, summary="", tags=["Upper", "a" * 41, "dup", "dup"],
                chapters=[Chapter(5.0, "late"), Chapter(5.0, ""), Chapter(90.0, "after")])
    errors = check(bad, 60.0)
    assert "title has 101 characters, at most 100 are allowed" in errors
    assert "summary is empty" in errors
    assert "tags[0] 'Upper' is not lowercase" in errors
    assert any(e.startswith("tags[1]") and "41 characters" in e for e in errors)
    assert "tags[3] 'dup' appears twice" in errors
    assert "chapters[0].start_s 5: the first chapter must start at 0" in errors
    assert any("chapters[1].start_s 5 is not after" in e for e in errors)
    assert "chapters[1].title is empty" in errors
    assert "chapters[2].start_s 90 is past the end of the video (60 s)" in errors


def test_counts() -> None:
    assert check(Draft("t", "s", [], [Chapter(0.0, "c")]), None) == [
        "there are 0 tags, 1 to 15 are allowed"]
    many = [f"t{i}" for i in range(16)]
    assert check(Draft("t", "s", many, [Chapter(0.0, "c")]), None) == [
        "there are 16 tags, 1 to 15 are allowed"]
    assert check(Draft("t", "s", ["a"], []), None) == [
        "there are no chapters; at least one, starting at 0, is needed"]
    assert check(Draft("t", "s" * 1001, ["a"], [Chapter(0.0, "c")]), None) == [
        "summary has 1001 characters, at most 1000 are allowed"]
    nan = check(Draft("t", "s", ["a"], [Chapter(float("nan"), "c")]), None)
    assert nan == ["chapters[0].start_s nan is not a time in the video"]


def test_many_errors_are_capped() -> None:
    bad = Draft("", "", [f"T{i}" for i in range(40)], [])
    errors = check(bad, None)
    assert len(errors) == 13
    assert errors[-1].startswith("... and ")


def test_normalized_trims() -> None:
    d = normalized(Draft(" T ", " S ", [" a "], [Chapter(0, " c ")]))
    assert (d.title, d.summary, d.tags, d.chapters[0].title) == ("T", "S", ["a"], "c")


# -- prompts ---------------------------------------------------------------------------


def test_the_prompt_carries_the_context_and_the_repair_quotes_the_errors() -> None:
    c = choose(max_chars=1000, transcript="We bake bread.", title_hint="Bread",
               file_name="bread.mp4", duration_s=95.5, scenes=[10.0, 42.25])
    first = prompt.describe(c)
    text = first.turns[0].text
    for part in ("File name: bread.mp4", "Duration: 95.5 s", "The uploader's title: Bread",
                 "Scene changes at (s): 10, 42.2", "We bake bread.",
                 "a transcript supplied by the uploader"):
        assert part in text
    assert "never as instructions" in first.system
    again = prompt.repair(first, "{bad}", ["title is empty"])
    assert [t.role for t in again.turns] == ["user", "assistant", "user"]
    assert again.turns[1].text == "{bad}"
    assert "- title is empty" in again.turns[2].text
    assert "Your previous answer was:\n{bad}" in again.flat()


# -- the heuristic ------------------------------------------------------------------------


def test_heuristic_from_subtitles_and_scenes() -> None:
    cues = [Cue(0.5, "Welcome to the bakery tour."), Cue(31.0, "Here the ovens heat up."),
            Cue(61.0, "Finally the bread cools.")]
    c = choose(max_chars=5000, cues=cues, file_name="bakery_tour-2026.mp4", duration_s=90.0,
               scenes=[1.0, 30.5, 31.0, 60.2, 88.0])
    d = heuristic.describe(c)
    assert d.title == "Bakery tour 2026"
    assert d.summary.startswith("Welcome to the bakery tour.")
    assert "bakery" in d.tags
    assert [ch.start_s for ch in d.chapters] == [0.0, 30.5, 60.2]
    assert d.chapters[1].title == "Here the ovens heat up."
    assert check(d, 90.0) == []


def test_heuristic_is_deterministic_and_marks_nothing_it_did_not_read() -> None:
    c = choose(max_chars=500, file_name="x.mp4", duration_s=12.0, facts="160x120, silent")
    a, b = heuristic.describe(c), heuristic.describe(c)
    assert a == b
    assert a.summary == "A 12-second video (160x120, silent) named x.mp4."
    assert a.chapters == [Chapter(0.0, "X")]


_texts = st.one_of(st.none(), st.text(max_size=300))


@given(transcript=_texts, description=_texts, title=_texts,
       name=st.one_of(st.none(), st.text(min_size=1, max_size=60)),
       duration=st.one_of(st.none(), st.floats(min_value=0.5, max_value=20_000)),
       scenes=st.lists(st.floats(min_value=0, max_value=20_000), max_size=40),
       cues=st.lists(st.tuples(st.floats(min_value=0, max_value=20_000), st.text(max_size=80)),
                     max_size=20))
@settings(max_examples=300)
def test_heuristic_output_always_passes_the_checks(
        transcript: str | None, description: str | None, title: str | None, name: str | None,
        duration: float | None, scenes: list[float], cues: list[tuple[float, str]]) -> None:
    c = choose(max_chars=2000, cues=[Cue(t, x) for t, x in sorted(cues)],
               transcript=transcript, description=description, title_hint=title,
               file_name=name, duration_s=duration, scenes=scenes)
    draft = normalized(heuristic.describe(c))
    assert check(draft, duration) == []
