"""Small media files for tests, made with ffmpeg's lavfi sources.

Good clips come from ``testsrc2`` (a moving test pattern), ``sine`` and
``color``: a few seconds of small frames, so each takes ffmpeg a fraction of a
second to make and to process. Bad inputs are written directly: a truncated
clip, random bytes, an empty file, a text file, playlists and concat lists that
point somewhere else.

These commands are the tests' own, trusted: they open lavfi graphs, which the
binding never lets a user's input do.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..bindings.media.process import NO_LIMITS, run
from ..errors import MediaError

SIZE: Final = (160, 120)
FPS: Final = 25
SAMPLE_RATE: Final = 48_000

_QUIET: Final = ("ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y")


async def make_clip(dst: str | os.PathLike[str], *, seconds: float = 3.0,
                    size: tuple[int, int] = SIZE, fps: int = FPS, audio: bool = True,
                    video: bool = True) -> Path:
    """An MP4 of ``seconds``: testsrc2 as H.264 (a keyframe every second) and,
    with ``audio``, a 440 Hz mono sine as AAC. ``video=False`` makes an M4A."""
    if not (audio or video):
        raise ValueError("a clip needs audio or video")
    w, h = size
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i",
                 f"sine=frequency=440:sample_rate={SAMPLE_RATE}:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                 "-g", str(fps)]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    return await _ffmpeg([*args, "-f", "mp4"], dst)


async def make_two_scenes(dst: str | os.PathLike[str], *, seconds_each: float = 2.0,
                          size: tuple[int, int] = SIZE, fps: int = FPS,
                          colors: tuple[str, str] = ("red", "blue")) -> Path:
    """A video-only MP4: ``seconds_each`` of one solid colour, then of another;
    the cut is at ``seconds_each``."""
    w, h = size
    a, b = colors
    graph = (f"color=c={a}:size={w}x{h}:rate={fps}:duration={seconds_each}[a];"
             f"color=c={b}:size={w}x{h}:rate={fps}:duration={seconds_each}[b];"
             "[a][b]concat=n=2:v=1:a=0[out]")
    return await _ffmpeg(["-filter_complex", graph, "-map", "[out]",
                          "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                          "-f", "mp4"], dst)


def srt(cues: Sequence[tuple[float, float, str]]) -> str:
    """An SRT document of ``(start_s, end_s, text)`` cues."""
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02},{ms % 1000:03}"

    return "\n".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n"
                     for i, (a, b, text) in enumerate(cues, 1))


async def make_story(dst: str | os.PathLike[str], *,
                     scenes: Sequence[tuple[str, float]] = (("red", 2.0), ("blue", 2.0)),
                     cues: Sequence[tuple[float, float, str]] = (), audio: bool = True,
                     size: tuple[int, int] = SIZE, fps: int = FPS) -> Path:
    """An MP4 of solid-colour scenes ``(colour, seconds)`` -- each colour change
    is a scene cut -- with a sine tone, and with ``cues`` as a subtitle track
    (mov_text) when there are any."""
    w, h = size
    graph = "".join(f"color=c={c}:size={w}x{h}:rate={fps}:duration={t}[v{i}];"
                    for i, (c, t) in enumerate(scenes))
    graph += "".join(f"[v{i}]" for i in range(len(scenes)))
    graph += f"concat=n={len(scenes)}:v=1:a=0[out]"
    total = sum(t for _, t in scenes)
    args = ["-filter_complex", graph]
    subs_path = Path(dst).with_suffix(".srt")
    if audio:
        args += ["-f", "lavfi", "-i",
                 f"sine=frequency=440:sample_rate={SAMPLE_RATE}:duration={total}"]
    if cues:
        subs_path.write_text(srt(cues))
        args += ["-i", str(subs_path)]
    args += ["-map", "[out]"]
    n = 0
    if audio:
        args += ["-map", "0:a"]
        n += 1
    if cues:
        args += ["-map", f"{n}:s", "-c:s", "mov_text"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    try:
        return await _ffmpeg([*args, "-f", "mp4"], dst)
    finally:
        subs_path.unlink(missing_ok=True)


async def make_segment(dst: str | os.PathLike[str], *, seconds: float = 1.0,
                       size: tuple[int, int] = (64, 48)) -> Path:
    """An MPEG-TS segment, the kind an HLS playlist lists (a "secret" in tests)."""
    w, h = size
    return await _ffmpeg(["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={FPS}:"
                          f"duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                          "-pix_fmt", "yuv420p", "-f", "mpegts"], dst)


def endless_encode_argv(size: tuple[int, int] = SIZE, *, loglevel: str = "error") -> list[str]:
    """An ffmpeg command that encodes an hour of testsrc2 to nowhere: it runs
    until it is stopped. (``loglevel="level+info"`` logs as the binding does.)"""
    w, h = size
    return ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", loglevel,
            "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={FPS}:duration=3600",
            "-c:v", "libx264", "-preset", "veryfast", "-f", "null", "-"]


def write_truncated(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    keep: float = 0.3) -> Path:
    """The first ``keep`` of ``src``: an MP4 cut before its index (``moov``)."""
    data = Path(src).read_bytes()
    return _write(dst, data[: int(len(data) * keep)])


def write_random_bytes(dst: str | os.PathLike[str], *, size: int = 64 * 1024,
                       seed: int = 7) -> Path:
    """``size`` bytes of noise, the same for the same seed."""
    return _write(dst, random.Random(seed).randbytes(size))


def write_empty(dst: str | os.PathLike[str]) -> Path:
    return _write(dst, b"")


def write_text(dst: str | os.PathLike[str]) -> Path:
    return _write(dst, b"This is a shopping list, not a video.\n- eggs\n- milk\n")


def write_hls_playlist(dst: str | os.PathLike[str], *targets: str) -> Path:
    """An HLS playlist (name it ``.m3u8``) whose segments are ``targets``:
    paths or URLs anywhere."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10",
             "#EXT-X-MEDIA-SEQUENCE:0"]
    for target in targets:
        lines += ["#EXTINF:1.0,", target]
    lines.append("#EXT-X-ENDLIST")
    return _write(dst, ("\n".join(lines) + "\n").encode())


def write_concat_list(dst: str | os.PathLike[str], *targets: str) -> Path:
    """An ffconcat list naming ``targets``."""
    lines = ["ffconcat version 1.0", *(f"file '{t}'" for t in targets)]
    return _write(dst, ("\n".join(lines) + "\n").encode())


async def _ffmpeg(args: list[str], dst: str | os.PathLike[str]) -> Path:
    done = await run([*_QUIET, *args, _url(dst)], limits=NO_LIMITS)
    if done.returncode != 0:
        raise MediaError(f"making a sample failed: {done.stderr_tail.strip()}")
    return Path(dst)


def _url(path: str | os.PathLike[str]) -> str:
    return "file:" + os.path.abspath(path)


def _write(dst: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(dst)
    path.write_bytes(data)
    return path
