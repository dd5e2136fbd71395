"""ffprobe and ffmpeg for the video pipeline: probe, transcode a time range,
encode the audio, concatenate, thumbnails, scene changes.

Every call is one child process run by :func:`.process.run`: arguments as a
list (no shell), ``-nostdin -hide_banner``, its own process group, the memory
and CPU limits of ``limits``, killed with its group when the caller's cancel
scope fires. Failures become the media families of :mod:`deepmox.errors`
(see :mod:`.errors_map`); bad media never surfaces as a traceback.

How an input is opened -- the rule that keeps a crafted file from making ffmpeg
read anything else:

1. Paths are passed as ``file:`` + the absolute path, so no file name is read
   as another protocol (``concat:``, ``subfile:``, ``http:``) or as an option.
2. ``-protocol_whitelist file,pipe`` before every ``-i``: no network, no
   ``data:``/``concat:``/``subfile:``/``crypto:`` protocols, whatever the file
   says inside.
3. ``-format_whitelist`` before every ``-i``: the demuxer ffmpeg detects must be
   one of :data:`INPUT_FORMATS`, containers and elementary streams that never
   open anything but the file they were given. The protocol whitelist alone is
   not enough: ``file`` still lets an HLS playlist, a concat list, a DASH or IMF
   manifest or an image-sequence pattern open *other local files*. libavformat
   checks the whitelist after probing and before the demuxer reads its header,
   so a refused playlist has opened nothing when it fails, as
   :class:`~deepmox.errors.MediaInputError`. A denylist of the demuxers known to
   open files would silently admit the next one ffmpeg adds; the allowlist
   fails closed.
4. The mov demuxer's external data references stay off (``enable_drefs``,
   ffmpeg's default).
5. The only list deepmox hands the concat demuxer is one :func:`concat` writes
   itself, naming symlinks in a private directory, under ``-safe 1`` and the
   format whitelist ``concat,mov``.

Outputs are written under a temporary name beside ``dst`` and renamed when
complete, so a step redone after a kill never finds half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec
import trio

from ...errors import MediaInputError
from .errors_map import FfmpegLog, Line, classify, frame_size_error
from .process import DEFAULT_LIMITS, Completed, Limits, run

FFMPEG: Final = "ffmpeg"
FFPROBE: Final = "ffprobe"

#: the demuxers a user's input may be read with (libavformat names; an entry
#: matches any of a demuxer's names, so "mov" admits "mov,mp4,m4a,3gp,3g2,mj2")
INPUT_FORMATS: Final = (
    "mov", "matroska", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "mxf", "dv",
    "nut", "ivf", "gif", "h264", "hevc", "m4v", "mpegvideo",
    "wav", "mp3", "aac", "flac",
)
PROTOCOLS: Final = "file,pipe"
#: what transcode_chunk writes; concat reads them back with this demuxer
CHUNK_FORMAT: Final = "mov"
#: a keyframe this often (seconds of output) within a chunk; one always starts it
KEYFRAME_EVERY_S: Final = 2
#: at most this many scene changes are reported
MAX_SCENES: Final = 10_000

_COMMON: Final = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-y")
#: what was written, as key=value lines on stdout, at the end (and every 30 s)
_PROGRESS: Final = ("-progress", "pipe:1", "-stats_period", "30")
_PTS_TIME = re.compile(r"\bpts_time:\s*(-?\d+(?:\.\d+)?)")
_WRITTEN = re.compile(rb"^(frame|out_time_us)=(\d+)\s*$", re.MULTILINE)


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One stream of a probed file."""

    index: int
    #: "video", "audio", "subtitle", "data", "attachment"
    codec_type: str
    codec_name: str | None = None
    width: int | None = None
    height: int | None = None
    #: frames per second (the average rate, else the base rate)
    fps: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    #: the stream's language tag ("eng", "und"), if any
    language: str | None = None
    #: a cover image in an audio file, not a video
    attached_pic: bool = False


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """What ffprobe says about a file."""

    #: the demuxer's names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    format_name: str
    size_bytes: int
    #: 0.0 when ffprobe cannot tell (a stream that carries no duration)
    duration_s: float = 0.0
    #: bits per second over the whole file
    bit_rate: int | None = None
    streams: tuple[StreamInfo, ...] = ()

    @property
    def video(self) -> StreamInfo | None:
        """The first real video stream (cover images do not count)."""
        return next((s for s in self.streams
                     if s.codec_type == "video" and not s.attached_pic), None)

    @property
    def audio(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.codec_type == "audio"), None)

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_subtitles(self) -> bool:
        return any(s.codec_type == "subtitle" for s in self.streams)


async def probe(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS,
                timeout_s: float | None = None) -> Probe:
    """Probe ``path``: its container, duration and streams.

    Raises :class:`~deepmox.errors.MediaInputError` for a missing or empty file,
    one ffmpeg cannot read or may not open (see the rule above), and one with
    neither audio nor video.
    """
    size = await _check_input(path)
    argv = [FFPROBE, "-hide_banner", "-loglevel", "level+warning",
            *_input(path, limits), "-of", "json", "-show_format", "-show_streams"]
    done, log = await _run(argv, [path], limits=limits, timeout_s=timeout_s)
    try:
        # a crafted file's tags reach ffprobe's JSON as they are, UTF-8 or not
        raw = _decode_probe(done.stdout.decode("utf-8", "replace"))
    except msgspec.DecodeError as exc:
        raise MediaInputError(f"ffprobe's description of the input is unreadable: {exc}") from exc
    if raw.format is None:
        raise MediaInputError("the input is not a video ffmpeg can read")
    result = _to_probe(raw, size)
    if any(s.codec_type == "video" and not s.width for s in result.streams):
        # ffprobe succeeds on a stream whose frames its decoder refused to
        # allocate; say so rather than report a video without a size
        refused = frame_size_error(log)
        if refused is not None:
            raise refused
    if not (result.has_video or result.has_audio):
        raise MediaInputError("the input has no audio or video stream")
    return result


async def keyframes(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS,
                    timeout_s: float | None = None) -> list[float]:
    """The times (seconds, sorted) of the first video stream's key frames, read
    from the packets without decoding: chunks cut there need no frames decoded
    and thrown away before their start."""
    await _check_input(path)
    argv = [FFPROBE, "-hide_banner", "-loglevel", "level+warning", *_input(path, limits),
            "-select_streams", "V:0", "-show_entries", "packet=pts_time,flags",
            "-of", "csv=p=0"]
    done, _ = await _run(argv, [path], limits=limits, timeout_s=timeout_s)
    times = []
    for line in done.stdout.decode("ascii", "replace").splitlines():
        fields = line.split(",")
        if len(fields) >= 2 and "K" in fields[1]:
            value = _float(fields[0])
            if value is not None:
                times.append(value)
    return sorted(times)


async def transcode_chunk(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                          start_s: float, duration_s: float, height: int,
                          video_bitrate_k: int, limits: Limits = DEFAULT_LIMITS,
                          timeout_s: float | None = None) -> Path:
    """Encode ``duration_s`` seconds of ``src``'s video from ``start_s`` into
    ``dst``: H.264 (libx264, veryfast, yuv420p) at ``height`` (width follows the
    aspect ratio, rounded to even), an MP4 without audio that starts on a
    keyframe.

    Seeking is exact (``-ss``/``-t`` before ``-i`` decode from the previous
    keyframe and drop what lies before ``start_s``): a frame belongs to the
    chunk whose ``[start_s, start_s + duration_s)`` holds its timestamp, so
    chunks cut at the same boundaries add up to the source's frames, and
    :func:`concat` joins them without re-encoding.
    """
    if start_s < 0 or duration_s <= 0:
        raise ValueError(f"a chunk needs start_s >= 0 and duration_s > 0, not "
                         f"{start_s!r}, {duration_s!r}")
    _check_height(height)
    await _check_input(src)
    k = int(video_bitrate_k)
    end = start_s + duration_s
    args = [
        *_input(src, limits, before=["-ss", _seconds(start_s), "-t", _seconds(duration_s)]),
        "-map", "0:V:0", "-an", "-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1",
        # the chunk starts at its first frame, whatever fraction of a frame lay
        # between start_s and that frame: CFR output would otherwise fill it with
        # a duplicate, and the chunks would not add up
        "-vf", f"setpts=PTS-STARTPTS,scale=-2:{height},format=yuv420p",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-b:v", f"{k}k", "-maxrate", f"{k}k", "-bufsize", f"{2 * k}k",
        "-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_EVERY_S})",
        "-f", "mp4",
    ]
    return await _write(args, src, dst, limits=limits, timeout_s=timeout_s,
                        empty=f"the input has no video between {start_s:g} s and {end:g} s")


async def encode_audio(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                       bitrate_k: int, copy: bool = False, limits: Limits = DEFAULT_LIMITS,
                       timeout_s: float | None = None) -> Path | None:
    """Encode ``src``'s first audio stream into ``dst`` as AAC in an MP4
    (``.m4a``) container; None, writing nothing, when ``src`` has no audio.
    ``copy``: the stream is AAC already and is copied as it is."""
    if not (await probe(src, limits=limits, timeout_s=timeout_s)).has_audio:
        return None
    codec = ["-c:a", "copy"] if copy else ["-c:a", "aac", "-b:a", f"{int(bitrate_k)}k"]
    args = [
        *_input(src, limits),
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1",
        *codec,
        "-f", "mp4",
    ]
    return await _write(args, src, dst, limits=limits, timeout_s=timeout_s,
                        empty="the input's audio stream holds no sound")


async def concat(chunks: Sequence[str | os.PathLike[str]], audio: str | os.PathLike[str] | None,
                 dst: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS,
                 timeout_s: float | None = None) -> Path:
    """Join the video ``chunks`` (from :func:`transcode_chunk`, in order) and
    ``audio`` (from :func:`encode_audio`, or None) into one MP4 at ``dst``,
    without re-encoding, with the index at the front (``+faststart``)."""
    if not chunks:
        raise ValueError("concat needs at least one chunk")
    workdir, listing = await trio.to_thread.run_sync(_write_concat_list, chunks, Path(dst))
    try:
        args = ["-f", "concat", "-safe", "1",
                *_input(listing, limits, formats=("concat", CHUNK_FORMAT))]
        if audio is not None:
            args += _input(audio, limits, formats=(CHUNK_FORMAT,))
        args += ["-map", "0:v:0"]
        if audio is not None:
            args += ["-map", "1:a:0"]
        args += ["-c", "copy", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4"]
        return await _write(args, listing, dst, limits=limits, timeout_s=timeout_s,
                            empty="the chunks hold no video", more=[*chunks, audio])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def thumbnail(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, at_s: float,
                    height: int, limits: Limits = DEFAULT_LIMITS,
                    timeout_s: float | None = None) -> Path:
    """Write the frame of ``src`` at ``at_s`` seconds to ``dst`` as a JPEG,
    ``height`` pixels high."""
    if at_s < 0:
        raise ValueError(f"at_s must be >= 0, not {at_s!r}")
    _check_height(height)
    await _check_input(src)
    args = [
        *_input(src, limits, before=["-ss", _seconds(at_s)]),
        "-map", "0:V:0", "-an", "-sn", "-dn", "-frames:v", "1",
        "-vf", f"scale=-2:{height}", "-c:v", "mjpeg", "-q:v", "3",
        "-f", "image2", "-update", "1",
    ]
    return await _write(args, src, dst, limits=limits, timeout_s=timeout_s,
                        empty=f"the input has no frame at {at_s:g} s")


async def thumbnails(src: str | os.PathLike[str], shots: Sequence[tuple[str | os.PathLike[str],
                                                                        float]], *,
                     height: int, limits: Limits = DEFAULT_LIMITS,
                     timeout_s: float | None = None) -> list[Path]:
    """Several thumbnails in one ffmpeg run: ``shots`` are (dst, at_s) pairs.
    Each shot opens the input once, seeking straight to its time."""
    if not shots:
        return []
    if len(shots) == 1:
        dst, at = shots[0]
        return [await thumbnail(src, dst, at_s=at, height=height, limits=limits,
                                timeout_s=timeout_s)]
    _check_height(height)
    await _check_input(src)
    args: list[str] = []
    for _, at in shots:
        if at < 0:
            raise ValueError(f"at_s must be >= 0, not {at!r}")
        args += _input(src, limits, before=["-ss", _seconds(at)])
    outs = []
    for i, (dst, at) in enumerate(shots[:-1]):
        part = Path(dst).with_name(f".{Path(dst).name}.part")
        args += ["-map", f"{i}:V:0", "-frames:v", "1", "-vf", f"scale=-2:{height}",
                 "-c:v", "mjpeg", "-q:v", "3", "-f", "image2", "-update", "1",
                 _url(part)]
        outs.append((part, Path(dst), at))
    last_dst, last_at = shots[-1]
    args += ["-map", f"{len(shots) - 1}:V:0", "-frames:v", "1", "-vf", f"scale=-2:{height}",
             "-c:v", "mjpeg", "-q:v", "3", "-f", "image2", "-update", "1"]
    try:
        await _write(args, src, last_dst, limits=limits, timeout_s=timeout_s,
                     empty=f"the input has no frame at {last_at:g} s",
                     more=[p for p, _, _ in outs])
        for part, dst, at in outs:
            if not await _nonempty(part):
                raise MediaInputError(f"the input has no frame at {at:g} s")
            await trio.Path(part).replace(dst)
    finally:
        for part, _, _ in outs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
    return [Path(dst) for dst, _ in shots]


async def scene_changes(src: str | os.PathLike[str], threshold: float = 0.4, *,
                        sample_fps: float | None = None, limits: Limits = DEFAULT_LIMITS,
                        timeout_s: float | None = None) -> list[float]:
    """The times (seconds from the start of the video) of the frames whose
    scene score is above ``threshold`` (0..1; ffmpeg's ``select='gt(scene,T)'``),
    in order; at most :data:`MAX_SCENES`. ``sample_fps`` scores only that many
    frames a second (cheaper; a cut is then found within 1/``sample_fps`` s)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold!r}")
    if sample_fps is not None and not 0 < sample_fps <= 1000:
        raise ValueError(f"sample_fps must be in (0, 1000], not {sample_fps!r}")
    await _check_input(src)
    times: list[float] = []

    def on_line(line: Line) -> None:
        if (line.context or "").startswith("Parsed_showinfo") and len(times) < MAX_SCENES:
            m = _PTS_TIME.search(line.message)
            if m is not None:
                times.append(float(m[1]))

    argv = [FFMPEG, *_COMMON, *_input(src, limits),
            "-map", "0:V:0", "-an", "-sn", "-dn",
            "-vf", ("setpts=PTS-STARTPTS,"
                    + (f"fps={sample_fps:g}," if sample_fps else "")
                    + f"select='gt(scene,{threshold:.6f})',showinfo"),
            "-f", "null", "-"]
    await _run(argv, [src], limits=limits, timeout_s=timeout_s, also=on_line)
    return times


class Subtitle(msgspec.Struct, frozen=True, array_like=True):
    """One subtitle cue: its start (seconds) and its text, markup removed."""

    start_s: float
    text: str


#: subtitle codecs that hold text (bitmap subtitles, DVD or PGS, hold pictures)
TEXT_SUBTITLES: Final = frozenset({"mov_text", "subrip", "srt", "ass", "ssa", "webvtt",
                                   "text", "microdvd", "subviewer", "jacosub"})
#: subtitle text beyond this is not read
MAX_SUBTITLE_BYTES: Final = 4 * 1024 * 1024
_SRT_TIME = re.compile(r"(\d+):(\d{2}):(\d{2})[,.](\d{3})\s*-->")
_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}")


def parse_srt(text: str) -> list[Subtitle]:
    """The cues of an SRT document, in order of their start."""
    cues = []
    for block in re.split(r"\r?\n\s*\r?\n", text):
        lines = block.strip().splitlines()
        for i, line in enumerate(lines):
            m = _SRT_TIME.search(line)
            if m is None:
                continue
            h, mi, sec, ms = (int(g) for g in m.groups())
            body = " ".join(_MARKUP.sub("", x).strip() for x in lines[i + 1:])
            body = " ".join(body.split())
            if body:
                cues.append(Subtitle(h * 3600 + mi * 60 + sec + ms / 1000, body))
            break
    return sorted(cues, key=lambda c: c.start_s)


async def subtitles(src: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS,
                    timeout_s: float | None = None) -> list[Subtitle]:
    """The cues of ``src``'s first text subtitle track ([] when it has none),
    read under the same input rule as everything else."""
    found = await probe(src, limits=limits, timeout_s=timeout_s)
    tracks = [st for st in found.streams if st.codec_type == "subtitle"]
    text_tracks = [n for n, st in enumerate(tracks) if st.codec_name in TEXT_SUBTITLES]
    if not text_tracks:
        return []
    argv = [FFMPEG, *_COMMON, *_input(src, limits), "-map", f"0:s:{text_tracks[0]}",
            "-c:s", "srt", "-f", "srt", "pipe:1"]
    done, _ = await _run(argv, [src], limits=limits, timeout_s=timeout_s)
    return parse_srt(done.stdout[:MAX_SUBTITLE_BYTES].decode("utf-8", "replace"))


# -- the pieces ---------------------------------------------------------------------


def _url(path: str | os.PathLike[str]) -> str:
    return "file:" + os.path.abspath(os.fspath(path))


def _input(path: str | os.PathLike[str], limits: Limits, *,
           formats: Sequence[str] = INPUT_FORMATS, before: Sequence[str] = ()) -> list[str]:
    """The options that open ``path`` as an input, under the rule above, its
    decoders held to ``limits.max_pixels``."""
    pixels = [] if limits.max_pixels is None else ["-max_pixels", str(limits.max_pixels)]
    return ["-protocol_whitelist", PROTOCOLS, "-format_whitelist", ",".join(formats),
            *pixels, *before, "-i", _url(path)]


def _spellings(paths: Sequence[str | os.PathLike[str] | None]) -> list[str]:
    """How ``paths`` can appear in ffmpeg's messages."""
    shown: list[str] = []
    for p in paths:
        if p is not None:
            shown += [_url(p), os.path.abspath(os.fspath(p))]
    return shown


def _seconds(value: float) -> str:
    return f"{value:.6f}"


def _check_height(height: int) -> None:
    if height < 2 or height % 2:
        raise ValueError(f"height must be even and at least 2 (yuv420p), not {height!r}")


async def _run(argv: list[str], paths: Sequence[str | os.PathLike[str] | None], *,
               limits: Limits, timeout_s: float | None,
               also: Callable[[Line], None] | None = None) -> tuple[Completed, FfmpegLog]:
    """Run one tool; raise what :func:`.errors_map.classify` makes of a failure.
    ``paths[0]`` is the input (the one a user gave); the rest are outputs and
    the binding's own files."""
    log = FfmpegLog(_spellings(paths), also, inputs=_spellings(paths[:1]))
    done = await run(argv, limits=limits, timeout_s=timeout_s, on_stderr_line=log.feed)
    error = classify(os.path.basename(argv[0]), done, log, limits=limits)
    if error is not None:
        raise error
    return done, log


async def _write(args: list[str], src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 limits: Limits, timeout_s: float | None, empty: str,
                 more: Sequence[str | os.PathLike[str] | None] = ()) -> Path:
    """Run ffmpeg with ``args`` writing to a temporary name beside ``dst``;
    rename it to ``dst`` once complete. ``empty`` says why an empty output is
    the input's fault."""
    final = Path(dst)
    part = final.with_name(f".{final.name}.part")
    try:
        done, log = await _run([FFMPEG, *_COMMON, *_PROGRESS, *args, _url(part)],
                               [src, part, *more], limits=limits, timeout_s=timeout_s)
        if log.empty_output or not _wrote_something(done.stdout) or not await _nonempty(part):
            raise MediaInputError(empty)
        await trio.Path(part).replace(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
    return final


def _wrote_something(progress: bytes) -> bool:
    """Whether ffmpeg's last ``-progress`` report counts a frame or a moment of
    output: an input cut before ``-ss`` still makes a valid, empty MP4."""
    last = {key: int(value) for key, value in _WRITTEN.findall(progress)}
    return last.get(b"frame", 0) > 0 or last.get(b"out_time_us", 0) > 0


async def _check_input(path: str | os.PathLike[str]) -> int:
    """The input's size; a missing or empty input is refused before ffmpeg runs."""
    try:
        size = (await trio.Path(path).stat()).st_size
    except FileNotFoundError as exc:
        raise MediaInputError(f"the input {Path(path).name} does not exist") from exc
    if size == 0:
        raise MediaInputError("the input is empty (0 bytes)")
    return size


async def _nonempty(path: Path) -> bool:
    try:
        return (await trio.Path(path).stat()).st_size > 0
    except FileNotFoundError:
        return False


def _write_concat_list(chunks: Sequence[str | os.PathLike[str]], dst: Path) -> tuple[str, Path]:
    """A private directory beside ``dst`` holding symlinks to the chunks and an
    ffconcat list naming them: names the binding chose, relative and plain, as
    ``-safe 1`` requires, whatever the chunks' own paths look like."""
    workdir = tempfile.mkdtemp(prefix=".concat-", dir=dst.parent)
    lines = ["ffconcat version 1.0"]
    for i, chunk in enumerate(chunks):
        name = f"c{i:05d}.mp4"
        os.symlink(os.path.abspath(os.fspath(chunk)), os.path.join(workdir, name))
        lines.append(f"file {name}")
    listing = Path(workdir, "list.ffconcat")
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return workdir, listing


# -- ffprobe's JSON -------------------------------------------------------------------


class _Disposition(msgspec.Struct):
    attached_pic: int = 0


class _RawStream(msgspec.Struct):
    index: int
    codec_type: str = "unknown"
    codec_name: str | None = None
    width: int | None = None
    height: int | None = None
    avg_frame_rate: str | None = None
    r_frame_rate: str | None = None
    sample_rate: str | None = None
    channels: int | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    disposition: _Disposition = msgspec.field(default_factory=_Disposition)


class _RawFormat(msgspec.Struct):
    format_name: str = ""
    duration: str | None = None
    size: str | None = None
    bit_rate: str | None = None


class _RawProbe(msgspec.Struct):
    streams: list[_RawStream] = msgspec.field(default_factory=list)
    format: _RawFormat | None = None


_decode_probe = msgspec.json.Decoder(_RawProbe).decode


def _to_probe(raw: _RawProbe, size: int) -> Probe:
    assert raw.format is not None
    fmt = raw.format
    return Probe(
        format_name=fmt.format_name,
        size_bytes=_int(fmt.size) or size,
        duration_s=_float(fmt.duration) or 0.0,
        bit_rate=_int(fmt.bit_rate),
        streams=tuple(
            StreamInfo(
                index=s.index,
                codec_type=s.codec_type,
                codec_name=s.codec_name,
                width=s.width or None,
                height=s.height or None,
                fps=_rate(s.avg_frame_rate) or _rate(s.r_frame_rate),
                sample_rate=_int(s.sample_rate),
                channels=s.channels or None,
                language=s.tags.get("language"),
                attached_pic=bool(s.disposition.attached_pic),
            )
            for s in raw.streams
        ),
    )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:  # "N/A"
        return None


def _int(text: str | None) -> int | None:
    value = _float(text)
    return int(value) if value is not None else None


def _rate(text: str | None) -> float | None:
    """"25/1" -> 25.0; "0/0" and nonsense -> None."""
    if not text:
        return None
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None
