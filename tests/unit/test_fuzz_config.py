"""Hostile configuration files: hypothesis writes TOML documents that are
valid but for one planted fault -- an unknown key at any level, a wrong type,
a number out of range (negative, NaN, infinite, huge, a duration over a
year), a control character in a string -- and broken TOML (cut, spliced,
garbage, not UTF-8).

Rules: every document is decoded with :func:`deepmox.config.decode`; the
only exception allowed out is :class:`ConfigError`. A planted fault must be
refused with a message naming its exact key path (``$.supervisor.budget_s``);
the same document without its fault must decode. The fields come from the
Config structs themselves (``msgspec.inspect``), so a field added there is
fuzzed here without a change. No file is written, nothing sleeps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmox import config
from deepmox.errors import ConfigError

Doc = dict[str, Any]

# -- the schema, read from the structs ---------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    type: Any
    default: Any


def _fields(struct: type[msgspec.Struct]) -> list[Field]:
    """The struct's fields by the names the file uses (``claude-cli``)."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    out = []
    for f in info.fields:
        if f.default is not msgspec.NODEFAULT:
            default = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        else:
            default = None  # required (a rendition's name and height)
        out.append(Field(f.encode_name, f.type, msgspec.to_builtins(default)))
    return out


Section = tuple[str, ...]


def _sections(struct: type[msgspec.Struct], at: Section = ()) -> dict[Section, list[Field]]:
    """Every table, nested ones too (``("ai", "anthropic")``), with the fields
    that are not tables themselves; ``kinds`` and renditions are apart."""
    out: dict[Section, list[Field]] = {}
    own = []
    for f in _fields(struct):
        if isinstance(f.type, msgspec.inspect.StructType):
            out.update(_sections(f.type.cls, (*at, f.name)))
        elif (*at, f.name) not in (("kinds",), ("video", "renditions")):
            own.append(f)
    if at:
        out[at] = own
    return out


SECTIONS = _sections(config.Config)
KIND_FIELDS = _fields(config.KindConfig)
RENDITION_FIELDS = _fields(config.RenditionConfig)
#: values that must be kept as they are for the rest of the document to be valid
FIXED = {("d1", "backend"), ("r2", "backend"), ("d1", "synchronous"), ("d1", "api_base"),
         ("r2", "endpoint_url"), ("supervisor", "kind_modules"), ("server", "listen"),
         ("ai", "providers")}


def _base(t: Any) -> Any:
    """``int | None`` -> IntType."""
    if isinstance(t, msgspec.inspect.UnionType):
        (inner,) = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        return inner
    return t


def _is(t: Any, *kinds: type) -> bool:
    return isinstance(_base(t), kinds)


NUMBER = (msgspec.inspect.IntType, msgspec.inspect.FloatType)

# -- values -----------------------------------------------------------------------------

_safe_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=12)
_kind_names = st.sampled_from(["noop", "sleep", "video.transcode", "my-kind", "a b", "ü"]) | \
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=8)
_rendition_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,5}", fullmatch=True)


def _valid(section: Section, f: Field) -> st.SearchStrategy[Any]:
    """A value the field accepts: its default, or (numbers) up to twice it,
    which keeps every cross-field rule (poll_min_s <= poll_max_s, 5 MiB parts)."""
    t = _base(f.type)
    if isinstance(t, msgspec.inspect.BoolType):
        return st.booleans()
    if isinstance(t, msgspec.inspect.IntType):
        return st.integers(f.default, 2 * f.default)
    if isinstance(t, msgspec.inspect.FloatType):
        return st.floats(f.default, 2 * f.default)
    if (*section, f.name) in FIXED:
        return st.just(f.default)
    if isinstance(t, msgspec.inspect.StrType):
        return st.just(f.default) | _safe_text
    if isinstance(t, msgspec.inspect.ListType) and isinstance(t.item_type,
                                                              msgspec.inspect.StrType):
        return st.lists(_safe_text.filter(bool), max_size=3)
    return st.just(f.default)


def _kind_values() -> st.SearchStrategy[Doc]:
    return st.fixed_dictionaries({}, optional={
        "budget_s": st.floats(0.5, 100), "max_actors": st.integers(1, 50),
        "max_attempts": st.integers(1, 10)})


_renditions = st.lists(
    st.fixed_dictionaries({"name": _rendition_names, "height": st.integers(16, 4320)},
                          optional={"video_bitrate_k": st.integers(50, 100_000),
                                    "audio_bitrate_k": st.integers(16, 512)}),
    min_size=1, max_size=3, unique_by=lambda r: r["name"])


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    """A valid configuration as TOML-shaped builtins."""
    doc: Doc = {}
    for section, fields in SECTIONS.items():
        if not fields or not draw(st.booleans()):
            continue
        chosen = draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.name))
        table = doc
        for key in section:
            table = table.setdefault(key, {})
        table.update({f.name: draw(_valid(section, f)) for f in chosen})
    if draw(st.booleans()):
        doc.setdefault("video", {})["renditions"] = draw(_renditions)
    if draw(st.booleans()):
        doc["kinds"] = draw(st.dictionaries(_kind_names, _kind_values(), max_size=3))
    return doc


# -- faults -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    keys: tuple[str | int, ...]
    value: Any
    #: what the message must say besides the path
    says: str = ""
    #: the fault is a key that should not be there at all
    unknown: bool = False

    @property
    def path(self) -> str:
        return config.key_path(*self.keys)


_WRONG_FOR_NUMBER = st.sampled_from(["3", "", True, [1], {"a": 1}])
_WRONG_FOR_STR = st.sampled_from([1, 2.5, False, ["x"], {"a": "b"}])
_BAD_NUMBER = st.sampled_from([-1, -0.5, math.nan, math.inf, -math.inf, 2**53, 2**62, -(2**40)])
_CONTROL = st.sampled_from(["a\x00b", "\x01", "x\ny", "\x7f", "tab\there"])


def _field_fault(keys: tuple[str | int, ...], f: Field) -> st.SearchStrategy[Fault]:
    t = _base(f.type)
    if isinstance(t, msgspec.inspect.BoolType):
        return st.builds(Fault, st.just(keys), st.sampled_from([1, "yes", 0.5]))
    if isinstance(t, NUMBER):
        wrong = _WRONG_FOR_NUMBER
        if isinstance(t, msgspec.inspect.IntType):
            wrong = wrong | st.sampled_from([2.5, 1.0])  # floats are not ints
        bad = _BAD_NUMBER
        if str(keys[-1]).endswith("_s"):
            bad = bad | st.just(config.MAX_SECONDS * 2)
        return st.builds(Fault, st.just(keys), wrong | bad)
    if isinstance(t, msgspec.inspect.LiteralType):
        return st.builds(Fault, st.just(keys), st.sampled_from(["postgres", "", 1]))
    if isinstance(t, msgspec.inspect.StrType):
        return st.builds(Fault, st.just(keys), _WRONG_FOR_STR | _CONTROL)
    if isinstance(t, msgspec.inspect.ListType):
        return st.builds(Fault, st.just(keys), st.sampled_from(["a", 1, {"a": 1}]))
    if isinstance(t, msgspec.inspect.DictType):
        return st.builds(Fault, st.just(keys), st.sampled_from(["a", 1, [1]]))
    raise AssertionError(f"no fault for {keys}: {t}")


@st.composite
def faults(draw: st.DrawFn, doc: Doc) -> Fault:
    """One fault for ``doc``: a field, a section or a kind set wrong, or an
    unknown key anywhere."""
    where = draw(st.sampled_from(["field", "unknown", "section", "kind", "rendition"]))
    unknown_key = draw(st.sampled_from(["budget", "budget_sec", "x", "Max_Actors", "ünï",
                                        "two words", ""]))
    if where == "section":
        section = draw(st.sampled_from([*SECTIONS, ("kinds",)]))
        return Fault(section, draw(st.sampled_from([1, "x", [1], True])))
    if where == "unknown":
        parent: Section = draw(st.sampled_from([(), *SECTIONS]))
        taken = {f.name for f in SECTIONS.get(parent, [])} | {
            s[len(parent)] for s in SECTIONS if len(s) > len(parent) and s[:len(parent)] == parent}
        if unknown_key in taken:
            unknown_key += "_x"
        return Fault((*parent, unknown_key), 1, "unknown key", unknown=True)
    if where == "kind":
        name = draw(_kind_names)
        if draw(st.booleans()):
            return Fault(("kinds", name, unknown_key), 1, "unknown key", unknown=True)
        f = draw(st.sampled_from(KIND_FIELDS))
        return draw(_field_fault(("kinds", name, f.name), f))
    if where == "rendition":
        f = draw(st.sampled_from([f for f in RENDITION_FIELDS if f.default is not None]))
        if draw(st.booleans()):
            return Fault(("video", "renditions", 0, unknown_key), 1, "unknown key",
                         unknown=True)
        return draw(_field_fault(("video", "renditions", 0, f.name), f))
    section = draw(st.sampled_from([s for s, fields in SECTIONS.items() if fields]))
    f = draw(st.sampled_from(SECTIONS[section]))
    return draw(_field_fault((*section, f.name), f))


def plant(doc: Doc, fault: Fault) -> Doc:
    """A copy of ``doc`` with ``fault`` in it."""
    out = json.loads(json.dumps(doc, allow_nan=True))
    node: Any = out
    *parents, last = fault.keys
    for i, key in enumerate(parents):
        if isinstance(key, int):
            while len(node) <= key:
                node.append({"name": f"r{len(node)}", "height": 240})
            node = node[key]
            continue
        nxt = fault.keys[i + 1]
        if not isinstance(node.get(key), dict | list):
            node[key] = [] if isinstance(nxt, int) else {}
        node = node[key]
    if isinstance(last, int):
        raise AssertionError("faults end in a key")
    node[last] = fault.value
    return out


# -- TOML -------------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also refuses a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) \
        else _toml_str(key)


def toml(value: Any) -> str:
    """``value`` as a TOML value (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def document(doc: Doc) -> str:
    return "".join(f"{_toml_key(k)} = {toml(v)}\n" for k, v in doc.items())


def decode_or_refuse(text: str | bytes) -> config.Config | ConfigError:
    """The decoded config, or the ConfigError: nothing else may come out."""
    try:
        return config.decode(text, source="fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml: "), message
        assert "\n" not in message.strip(), message
        return exc


# -- the tests --------------------------------------------------------------------------


@settings(max_examples=100)
@given(documents())
def test_valid_documents_decode(doc: Doc) -> None:
    got = decode_or_refuse(document(doc))
    assert isinstance(got, config.Config), (document(doc), got)


@settings(max_examples=300)
@given(st.data())
def test_a_planted_fault_is_refused_naming_its_key(data: st.DataObject) -> None:
    doc = data.draw(documents(), label="doc")
    fault = data.draw(faults(doc), label="fault")
    text = document(plant(doc, fault))
    got = decode_or_refuse(text)
    assert isinstance(got, ConfigError), f"accepted:\n{text}"
    message = str(got)
    assert f"- at `{fault.path}`" in message, (fault, message)
    assert fault.says in message


_mutations = st.sampled_from(["cut", "splice", "duplicate", "garbage", "bytes"])


@settings(max_examples=200)
@given(documents(), _mutations, st.integers(0, 10_000), st.text(max_size=8),
       st.binary(max_size=64))
def test_broken_toml_is_a_config_error(doc: Doc, how: str, at: int, insert: str,
                                       junk: bytes) -> None:
    text = document(doc) or "[supervisor]\nbudget_s = 1\n"
    at %= len(text)
    broken: str | bytes
    if how == "cut":
        broken = text[:at]
    elif how == "splice":
        broken = text[:at] + insert + text[at:]
    elif how == "duplicate":
        line = text.splitlines(keepends=True)[at % len(text.splitlines())]
        broken = text + line
    elif how == "garbage":
        broken = insert + junk.decode("latin-1")
    else:
        broken = text.encode()[:at] + junk + text.encode()[at:]
    got = decode_or_refuse(broken)
    if how == "duplicate":
        assert isinstance(got, ConfigError)
        assert "not valid TOML" in str(got)


@pytest.mark.parametrize(("text", "path"), [
    # each of these once reached the OS or the database before failing
    ('[d1]\npath = "a\\u0000b"', "$.d1.path"),
    ("[d1]\nbusy_timeout_s = nan", "$.d1.busy_timeout_s"),
    ("[supervisor]\nmax_actors = 100000000000000000000", "$.supervisor.max_actors"),
    ("[supervisor]\nbudget_s = inf", "$.supervisor.budget_s"),
    ("[supervisor]\nlease_grace_s = nan", "$.supervisor.lease_grace_s"),
    ("[limits]\ncpu_s = 9223372036854775807", "$.limits.cpu_s"),
    ("[video]\nthumbnails = 100000000", "$.video.thumbnails"),
    ("[video]\nrenditions = []", "$.video.renditions"),
    ('[[video.renditions]]\nname = "../x"\nheight = 240', "$.video.renditions[0]"),
    ('[[video.renditions]]\nname = "a"\nheight = 240\n[[video.renditions]]\nname = "a"\n'
     "height = 360", "$.video.renditions[1]"),
    ('[[video.renditions]]\nname = "a"\nheight = 240\nvideo_bitrate_k = 1',
     "$.video.renditions[0].video_bitrate_k"),
    ("[server]\nmax_body_bytes = 0", "$.server.max_body_bytes"),
    ('[d1]\napi_base = "ftp://x"', "$.d1.api_base"),
    ("[kinds.sleep]\nmax_attempts = 5000", "$.kinds.sleep.max_attempts"),
])
def test_values_that_broke_the_daemon_later_are_refused_now(text: str, path: str) -> None:
    got = decode_or_refuse(text)
    assert isinstance(got, ConfigError)
    assert f"- at `{path}`" in str(got)


def test_a_file_that_is_not_utf8_is_a_config_error() -> None:
    got = decode_or_refuse(b"[d1]\npath = \"\xff\xfe\"\n")
    assert isinstance(got, ConfigError)
    assert "not UTF-8" in str(got)


@pytest.mark.parametrize("module", ["", ".relative", "no_such_module_xyz", "json.decoder.x"])
def test_a_kind_module_that_cannot_be_imported_is_a_config_error(module: str) -> None:
    from deepmox.actors.registry import Registry

    with pytest.raises(ConfigError, match=r"- at `\$\.supervisor\.kind_modules\[1\]`"):
        Registry.load(["json", module])


def test_a_file_that_is_far_too_large_is_refused(tmp_path: Path) -> None:
    # --config /dev/zero read until memory ran out
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * config.MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError, match="is it the right file"):
        config.load(big)


def test_a_path_that_is_not_printable_stays_on_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "a\nb.toml")
    assert "\n" not in str(info.value)
    assert "a\\nb.toml" in str(info.value)
