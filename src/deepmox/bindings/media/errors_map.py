"""How an ffmpeg or ffprobe run that went wrong becomes one of deepmox's errors.

Both tools run with ``-loglevel level+...``, so every stderr line says its
level (``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5583...] [error] moov atom not found``).
:class:`FfmpegLog` reads those lines as they arrive and keeps the few that can
explain a failure; :func:`classify` maps the exit status and those lines to a
class, first matching row wins:

=====================================  ====================================  =====================
what happened                          how it shows                          class
=====================================  ====================================  =====================
the CPU-time limit (RLIMIT_CPU)        SIGXCPU; ffmpeg's "received signal    MediaBudgetError
                                       24"; its hard exit after repeated
                                       signals
out of memory                          "Cannot allocate memory",             MediaUnavailableError
                                       std::bad_alloc, "malloc of size",
                                       a shared library that cannot be
                                       mapped (even at exit status 0)
the scratch disk is full               "No space left on device", "Disk      MediaUnavailableError
                                       quota exceeded" (even at status 0)
the machine failed an I/O              "Input/output error", "Too many open  MediaUnavailableError
                                       files" (even at status 0)
killed from outside                    SIGKILL: the OOM killer               MediaUnavailableError
a crash under a memory limit           SIGSEGV, SIGABRT, SIGBUS              MediaUnavailableError
a crash without one                    SIGSEGV, SIGABRT, SIGBUS              MediaInputError
stopped by someone else                any other signal                      MediaUnavailableError
a playlist, list or non-video file     "Format not on whitelist"             MediaInputError
a reference to another file or URL     "Protocol ... not on whitelist"       MediaInputError
no stream of the kind asked for        "matches no streams"                  MediaInputError
truncated, undecodable, unsupported    "moov atom not found", "Invalid       MediaInputError
                                       data found ...", decoder not found
frames larger than can be decoded      "Picture size WxH is invalid",        MediaInputError
                                       "... exceeds specified max pixel
                                       count" (``Limits.max_pixels``)
the input itself failed to open/read   an error line "<the input>: why"      MediaInputError
ffprobe failed any other way           it reads only the input               MediaInputError
anything else that failed              a non-zero exit status                MediaUnavailableError
=====================================  ====================================  =====================

The last row follows ``docs/decisions.md``: a failure nobody recognised is
retried a bounded number of times rather than failing the job for what may be
a passing fault. ffmpeg sometimes exits 0 after an allocation failure, hence
"even at status 0". SIGKILL is read as memory because the CPU limit's SIGKILL
comes :data:`~.process.CPU_GRACE_S` CPU-seconds after SIGXCPU, and ffmpeg exits
on SIGXCPU well before. Cancellation is not here at all: a cancel from the
actor's scope propagates as :class:`trio.Cancelled`.

Messages are plain words with ffmpeg's own reason after a colon; paths the
binding passed are shortened to their file names.
"""

from __future__ import annotations

import re
import signal
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from ...errors import MediaBudgetError, MediaError, MediaInputError, MediaUnavailableError
from .process import Completed, Limits

#: how many lines that could explain a failure are kept
KEEP_LINES: Final = 32

_LINE = re.compile(
    r"^(?:\[(?P<ctx>[^\]]+?) @ 0x[0-9a-fA-F]+\] )?"
    # a helper's own context may follow: "[gif @ 0x..] [IMGUTILS @ 0x..] [error] ..."
    r"(?:\[[^\]]+? @ 0x[0-9a-fA-F]+\] )*"
    r"\[(?P<level>panic|fatal|error|warning|info|verbose|debug|trace)\] (?P<msg>.*)$"
)
_SIGNAL = re.compile(r"received signal (\d+)", re.IGNORECASE)
_HARD_EXIT = "Received > 3 system signals"
_EMPTY_OUTPUT = "Output file is empty, nothing was encoded"
_SIGNIFICANT = frozenset({"panic", "fatal", "error", "warning", None})
_CRASHES = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS})
_STREAM_SPEC = re.compile(r"Stream (?:map|specifier) '[^']*?:?(?P<kind>[vVaAs])(?::\d+)?\??'")

_MEMORY = (
    "cannot allocate memory",
    "out of memory",
    "std::bad_alloc",
    "malloc of size",
    "failed to map segment from shared object",
    "cannot allocate memory in static tls block",
    "pthread_create",
)
_DISK = ("no space left on device", "disk quota exceeded", "file too large")
#: the machine failing to read, not the input being bad
_MACHINE = ("input/output error", "too many open files", "resource temporarily unavailable",
            "interrupted system call", "stale file handle")
_UNDECODABLE = (
    "moov atom not found",
    "invalid data found when processing input",
    "could not find codec parameters",
    "decoder (codec",
    "unsupported codec",
    "unknown codec",
    "no decoder",
    "error while opening decoder",
    "invalid nal unit",
    "ebml header parsing failed",
    "truncating packet",
    "end of file",
    # a stream cut before its first decodable frame (a Matroska file cut short)
    "cannot determine format of input stream",
)

#: what the demuxers refused by the format whitelist are, in plain words
_FORMATS: Final = {
    "hls": "an HLS playlist",
    "dash": "a DASH manifest",
    "concat": "a concat list",
    "ffconcat": "a concat list",
    "imf": "an IMF composition",
    "tee": "a tee list",
    "tty": "a text file",
    "image2": "an image sequence",
    "lavfi": "a filter graph",
    "srt": "a subtitle file",
    "ass": "a subtitle file",
    "webvtt": "a subtitle file",
}


class Line(NamedTuple):
    level: str | None  # None: a line without a level tag (the loader, x264's own)
    context: str | None  # "mov,mp4,m4a,3gp,3g2,mj2", "hls", "libx264", ...
    message: str


class FfmpegLog:
    """The parts of an ffmpeg/ffprobe stderr that explain how it ended.

    Feed it lines (it is the runner's ``on_stderr_line``); ``paths`` maps each
    path the binding passed (as it appears in argv) to the short name messages
    use instead.
    """

    def __init__(self, paths: Iterable[str] = (),
                 also: Callable[[Line], None] | None = None, *,
                 inputs: Iterable[str] = ()) -> None:
        self.lines: deque[Line] = deque(maxlen=KEEP_LINES)
        self.received_signal: int | None = None
        self.hard_exit = False
        self.empty_output = False
        #: why opening or reading the input failed, when a line said so with
        #: the input's own name in front ("file:/x/in.mp4: End of file")
        self.input_failed: str | None = None
        self._also = also
        # longest first, so "file:/a/b.mp4" is replaced before "/a/b.mp4"
        self._paths = sorted(set(paths), key=len, reverse=True)
        self._inputs = tuple(f"{i}: " for i in inputs)

    def feed(self, raw: str) -> None:
        m = _LINE.match(raw)
        line = (Line(m["level"], m["ctx"], m["msg"]) if m else Line(None, None, raw.strip()))
        if self._also is not None:
            self._also(line)
        if not line.message or line.message.startswith("Last message repeated"):
            return
        if (s := _SIGNAL.search(line.message)) is not None:
            self.received_signal = int(s[1])
        if _HARD_EXIT in line.message:
            self.hard_exit = True
        if _EMPTY_OUTPUT in line.message:
            self.empty_output = True
        if line.level in _SIGNIFICANT:
            scrubbed = self.scrub(line.message)
            if line.level != "warning" and line.message.startswith(self._inputs):
                self.input_failed = scrubbed
            self.lines.append(line._replace(message=scrubbed))

    def scrub(self, message: str) -> str:
        for path in self._paths:
            # "file:/tmp/x/in.mp4: Invalid data found ..." says nothing more
            # than "Invalid data found ..."; elsewhere, the name is enough
            message = message.removeprefix(f"{path}: ")
            if path in message:
                message = message.replace(path, path.rstrip("/").rsplit("/", 1)[-1])
        return message

    def errors(self) -> list[Line]:
        """The error-level lines (and untagged ones), oldest first."""
        return [ln for ln in self.lines if ln.level != "warning"]

    def reason(self) -> str:
        """The last error lines, joined: the best short "why" there is."""
        found = [ln.message for ln in self.errors() if ln.message != "Conversion failed!"]
        return "; ".join(dict.fromkeys(found[-2:])) or "no reason given"


def classify(prog: str, done: Completed, log: FfmpegLog, *, limits: Limits) -> MediaError | None:
    """The error for a run of ``prog`` that ended as ``done``, or None if it
    did what was asked (as far as its exit status and log can tell)."""
    sig = done.signal
    if (sig == signal.SIGXCPU or log.received_signal == signal.SIGXCPU
            or (log.hard_exit and limits.cpu_s is not None)):
        return MediaBudgetError(f"{prog} used up its CPU-time limit of {limits.cpu_s} s")
    # before memory: a frame refused for its size was never allocated, and
    # what failed after it is the input's fault too
    if done.returncode != 0 and (refused := frame_size_error(log)) is not None:
        return refused
    every = [ln.message for ln in log.lines]
    if (msg := _first(every, _MEMORY)) is not None:
        return MediaUnavailableError(f"{prog} ran out of memory{_limit(limits)}: {msg}")
    if (msg := _first(every, _DISK)) is not None:
        return MediaUnavailableError(f"the scratch disk is full: {msg}")
    if (msg := _first(every, _MACHINE)) is not None:
        return MediaUnavailableError(f"{prog} could not read or write its files: {msg}")
    if done.returncode == 0:
        return None
    if sig == signal.SIGKILL:
        return MediaUnavailableError(
            f"{prog} was killed (SIGKILL), most likely for using too much memory{_limit(limits)}"
        )
    if sig in _CRASHES:
        name = signal.Signals(sig).name
        if limits.memory_bytes is not None:
            return MediaUnavailableError(
                f"{prog} crashed ({name}) under its memory limit{_limit(limits)}"
            )
        return MediaInputError(f"{prog} crashed ({name}) reading the input")
    if sig is not None or log.received_signal is not None:
        name = _signal_name(sig if sig is not None else log.received_signal)
        return MediaUnavailableError(f"{prog} was stopped by {name}")
    found = _input_error(log)
    if found is not None:
        return found
    if log.input_failed is not None or prog == "ffprobe":
        # ffmpeg named the input as what failed; or ffprobe failed, which
        # reads nothing but the input (a local file already complete) and
        # writes nothing: memory, disk and signals were ruled out above
        return MediaInputError(f"the input is not a video ffmpeg can read: {log.reason()}")
    return MediaUnavailableError(f"{prog} failed (exit status {done.returncode}): {log.reason()}")


_FRAME_SIZE = re.compile(r"Picture size (?P<size>\d+x\d+) (?P<why>is invalid|exceeds specified "
                         r"max pixel count (?P<max>\d+))")


def frame_size_error(log: FfmpegLog) -> MediaInputError | None:
    """The input declares frames a decoder refused to allocate: larger than
    ffmpeg allows at all, or than ``Limits.max_pixels``."""
    for line in log.errors():
        m = _FRAME_SIZE.search(line.message)
        if m is None:
            continue
        if m["max"] is not None:
            return MediaInputError(
                f"the input's frames are {m['size']}, over the limit of {int(m['max']):,} "
                "pixels ([limits] max_width x max_height)")
        return MediaInputError(f"the input declares frames of {m['size']}, a size no "
                               "decoder accepts")
    return None


def _input_error(log: FfmpegLog) -> MediaInputError | None:
    for line in log.errors():
        text = line.message.lower()
        if "format not on whitelist" in text:
            what = _FORMATS.get(line.context or "", f"a {line.context or 'kind of'} file")
            return MediaInputError(
                f"the input is {what} ({line.context}), not a video file deepmox reads: "
                "it may refer to other files or URLs, which deepmox never opens"
            )
        if "not on whitelist" in text:  # "Protocol 'http' not on whitelist 'file,pipe'!"
            return MediaInputError(
                f"the input refers to another file or a URL, which deepmox never opens: "
                f"{line.message}"
            )
        if "matches no streams" in text or "does not contain any stream" in text:
            kind = _STREAM_SPEC.search(line.message)
            what = {"v": "video", "a": "audio", "s": "subtitle"}.get(
                kind["kind"].lower() if kind else "", "usable")
            return MediaInputError(f"the input has no {what} stream")
        if "not divisible by 2" in text or "invalid width x height" in text:
            # an aspect ratio so extreme that the scaled width is 1 or 16416
            return MediaInputError(
                f"the input's frames are too narrow or too flat to encode: {line.message}")
        if "moov atom not found" in text:
            return MediaInputError(
                "the input is not a video ffmpeg can read: moov atom not found "
                "(the file is truncated or was never finished)"
            )
        if any(p in text for p in _UNDECODABLE):
            return MediaInputError(f"the input is not a video ffmpeg can read: {line.message}")
    return None


def _first(messages: Iterable[str], needles: Iterable[str]) -> str | None:
    needles = tuple(needles)
    for message in messages:
        if any(n in message.lower() for n in needles):
            return message
    return None


def _limit(limits: Limits) -> str:
    if limits.memory_bytes is None:
        return ""
    return f" (limit {limits.memory_bytes / 2**20:.0f} MiB)"


def _signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number or 0).name
    except ValueError:
        return f"signal {number}"
