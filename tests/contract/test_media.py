"""The media binding against real ffmpeg and ffprobe, on clips made by
:mod:`deepmox.testing.media_samples` (a few seconds, 160x120 or 320x240).

Rules: every clip is generated once per module with ffmpeg's lavfi sources;
bad inputs are written by hand. Budgets are real cancel scopes around the
product call (the one place wall-clock time is fine); nothing sleeps to wait
except ``_within``, which polls a process group for at most a second. Every
failure must be one of deepmox's media errors with a reason in plain words,
never a traceback.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio

from deepmox.bindings import media
from deepmox.bindings.media import Limits, process
from deepmox.bindings.media.errors_map import FfmpegLog, classify
from deepmox.errors import (
    BudgetExceededError,
    MediaBudgetError,
    MediaError,
    MediaInputError,
    MediaUnavailableError,
    PermanentError,
    TransientError,
)
from deepmox.testing import media_samples as samples

SECRET_SIZE = (64, 48)  # nothing else in this module has frames this size
LONG_S = 6.0  # the pipeline's source


class Clips(msgspec.Struct, frozen=True):
    dir: Path
    av: Path  # 3 s, 160x120, 25 fps, with a 48 kHz mono sine
    silent: Path  # 3 s, 160x120, no audio
    long: Path  # 6 s, 320x240, with audio
    two_scenes: Path  # 2 s red, then 2 s blue
    audio_only: Path  # 3 s of sine in an M4A
    secret: Path  # an MPEG-TS segment kept away from the inputs' folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("media")
    (root / "private").mkdir()

    async def make() -> Clips:
        return Clips(
            dir=root,
            av=await samples.make_clip(root / "av.mp4"),
            silent=await samples.make_clip(root / "silent.mp4", audio=False),
            long=await samples.make_clip(root / "long.mp4", seconds=LONG_S, size=(320, 240)),
            two_scenes=await samples.make_two_scenes(root / "two.mp4"),
            audio_only=await samples.make_clip(root / "sine.m4a", video=False),
            secret=await samples.make_segment(root / "private" / "secret.ts",
                                              size=SECRET_SIZE),
        )

    return trio.run(make)


# -- probe ------------------------------------------------------------------------------


async def test_probe_a_clip_with_audio(clips: Clips) -> None:
    p = await media.probe(clips.av)
    assert "mp4" in p.format_name
    assert p.size_bytes == clips.av.stat().st_size
    assert p.duration_s == pytest.approx(3.0, abs=0.1)
    assert p.bit_rate is not None
    assert p.bit_rate > 0
    assert (p.has_video, p.has_audio, p.has_subtitles) == (True, True, False)
    v, a = p.video, p.audio
    assert v is not None
    assert a is not None
    assert (v.codec_name, v.width, v.height, v.fps) == ("h264", 160, 120, 25.0)
    assert (a.codec_name, a.sample_rate, a.channels) == ("aac", 48_000, 1)
    assert v.language == "und"
    # a frozen record that survives a checkpoint
    assert msgspec.json.decode(msgspec.json.encode(p), type=media.Probe) == p


async def test_probe_a_clip_without_audio(clips: Clips) -> None:
    p = await media.probe(clips.silent)
    assert (p.has_video, p.has_audio) == (True, False)
    assert [s.codec_type for s in p.streams] == ["video"]


async def test_probe_an_audio_file(clips: Clips) -> None:
    p = await media.probe(clips.audio_only)
    assert (p.has_video, p.has_audio) == (False, True)


# -- the chunked pipeline's pieces ------------------------------------------------------


async def test_chunks_audio_and_concat_add_up_to_the_source(clips: Clips, tmp_path: Path) -> None:
    # boundaries that fall between frames: each frame still lands in one chunk
    cuts = [0.0, 2.3, 4.1, LONG_S]
    chunks = [
        await media.transcode_chunk(clips.long, tmp_path / f"chunk{i}.mp4", start_s=start,
                                    duration_s=end - start, height=120, video_bitrate_k=200)
        for i, (start, end) in enumerate(itertools.pairwise(cuts))
    ]
    for chunk in chunks:
        first = await _first_frame_type(chunk)
        assert first == "I"  # every chunk starts on a keyframe
    audio = await media.encode_audio(clips.long, tmp_path / "audio.m4a", bitrate_k=64)
    assert audio == tmp_path / "audio.m4a"
    out = await media.concat(chunks, audio, tmp_path / "out.mp4")

    p = await media.probe(out)
    assert p.duration_s == pytest.approx(LONG_S, abs=0.5)
    assert p.video is not None
    assert (p.video.codec_name, p.video.width, p.video.height) == ("h264", 160, 120)
    assert p.audio is not None
    assert p.audio.codec_name == "aac"
    assert await _count_frames(out) == int(LONG_S * samples.FPS)
    # nothing but the outputs is left behind: no part files, no concat list
    assert _names(tmp_path) == [
        "audio.m4a", "chunk0.mp4", "chunk1.mp4", "chunk2.mp4", "out.mp4"]


async def test_no_audio_means_no_audio_file(clips: Clips, tmp_path: Path) -> None:
    assert await media.encode_audio(clips.silent, tmp_path / "a.m4a", bitrate_k=64) is None
    assert not _names(tmp_path)
    chunk = await media.transcode_chunk(clips.silent, tmp_path / "c.mp4", start_s=0,
                                        duration_s=3, height=60, video_bitrate_k=100)
    out = await media.concat([chunk], None, tmp_path / "out.mp4")
    p = await media.probe(out)
    assert (p.has_video, p.has_audio) == (True, False)


async def test_thumbnails_are_jpeg(clips: Clips, tmp_path: Path) -> None:
    for at_s in (0.0, 1.5, 2.9):
        jpg = await media.thumbnail(clips.av, tmp_path / f"t{at_s}.jpg", at_s=at_s, height=90)
        assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
        assert await _dimensions(jpg) == (120, 90)
    with pytest.raises(MediaInputError, match="no frame at 10 s"):
        await media.thumbnail(clips.av, tmp_path / "late.jpg", at_s=10, height=90)
    assert not (tmp_path / "late.jpg").exists()


async def test_scene_changes_finds_the_cut(clips: Clips) -> None:
    changes = await media.scene_changes(clips.two_scenes)
    assert len(changes) == 1
    assert changes[0] == pytest.approx(2.0, abs=0.1)
    assert await media.scene_changes(clips.silent, threshold=0.9) == []


# -- bad media ---------------------------------------------------------------------------

BAD: dict[str, tuple[Callable[[Clips], Path], str]] = {
    "truncated": (lambda c: samples.write_truncated(c.av, c.dir / "truncated.mp4"),
                  "moov atom not found"),
    "random bytes": (lambda c: samples.write_random_bytes(c.dir / "noise.bin"),
                     "Invalid data found when processing input"),
    "random bytes named mp4": (lambda c: samples.write_random_bytes(c.dir / "noise.mp4"),
                               "not a video ffmpeg can read"),
    "zero-length": (lambda c: samples.write_empty(c.dir / "empty.mp4"), "empty"),
    "text": (lambda c: samples.write_text(c.dir / "notes.txt"), "not a video ffmpeg can read"),
    "hls to a local file": (
        lambda c: samples.write_hls_playlist(c.dir / "local.m3u8", str(c.secret)),
        "HLS playlist"),
    "hls to a url": (
        lambda c: samples.write_hls_playlist(c.dir / "url.m3u8", "http://127.0.0.1:1/x"),
        "HLS playlist"),
    "concat list": (lambda c: samples.write_concat_list(c.dir / "list.txt", str(c.secret)),
                    "concat list"),
    "missing": (lambda c: c.dir / "nowhere.mp4", "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_media_is_a_readable_input_error(case: str, clips: Clips,
                                                   tmp_path: Path) -> None:
    make, reason = BAD[case]
    bad = make(clips)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "probe": partial(media.probe, bad),
        "transcode_chunk": partial(media.transcode_chunk, bad, tmp_path / "c.mp4", start_s=0,
                                   duration_s=1, height=60, video_bitrate_k=100),
        "thumbnail": partial(media.thumbnail, bad, tmp_path / "t.jpg", at_s=0, height=60),
        "scene_changes": partial(media.scene_changes, bad),
        "encode_audio": partial(media.encode_audio, bad, tmp_path / "a.m4a", bitrate_k=64),
    }
    for name, call in calls.items():
        with pytest.raises(MediaInputError) as info:
            await call()
        message = str(info.value)
        assert message.startswith("the input"), (name, message)
        assert "Traceback" not in message
        assert str(clips.dir) not in message  # paths are shortened to names
        if name == "probe":
            assert reason in message
        assert isinstance(info.value, PermanentError)
    assert not _names(tmp_path)  # no output, not even part of one


async def test_a_playlist_reads_nothing_it_points_at(clips: Clips, tmp_path: Path) -> None:
    playlist = samples.write_hls_playlist(tmp_path / "evil.m3u8", str(clips.secret))
    # the threat is real: with the protocol whitelist alone, the playlist
    # opens the secret file through the "file" protocol
    leaky = await process.run(
        ["ffprobe", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file,pipe",
         "-of", "json", "-show_streams", f"file:{playlist}"], limits=media.NO_LIMITS)
    assert leaky.returncode == 0
    assert b'"width": 64' in leaky.stdout
    # the binding refuses the playlist before its demuxer runs
    with pytest.raises(MediaInputError, match="HLS playlist") as info:
        await media.probe(playlist)
    assert "64" not in str(info.value)
    assert "secret" not in str(info.value)
    for call in (
        media.transcode_chunk(playlist, tmp_path / "out.mp4", start_s=0, duration_s=1,
                              height=48, video_bitrate_k=100),
        media.thumbnail(playlist, tmp_path / "out.jpg", at_s=0, height=48),
    ):
        with pytest.raises(MediaInputError):
            await call
    assert _names(tmp_path) == ["evil.m3u8"]


async def test_no_video_stream(clips: Clips, tmp_path: Path) -> None:
    with pytest.raises(MediaInputError, match="the input has no video stream"):
        await media.transcode_chunk(clips.audio_only, tmp_path / "c.mp4", start_s=0,
                                    duration_s=1, height=60, video_bitrate_k=100)
    with pytest.raises(MediaInputError, match=r"no video between 10 s and 11 s"):
        await media.transcode_chunk(clips.av, tmp_path / "c.mp4", start_s=10,
                                    duration_s=1, height=60, video_bitrate_k=100)
    assert not _names(tmp_path)


# -- budgets and limits -----------------------------------------------------------------


async def test_cancel_kills_the_process_group(tmp_path: Path) -> None:
    with trio.move_on_after(1) as budget:  # wall-clock: the product call's budget
        async with trio.open_nursery() as nursery:
            pgid = await nursery.start(partial(process.run, samples.endless_encode_argv()))
            assert _members(pgid) == {pgid}
    assert budget.cancelled_caught
    assert await _within(1.0, lambda: not _members(pgid)), _members(pgid)
    with pytest.raises(ProcessLookupError):
        os.kill(pgid, 0)  # reaped, not a zombie


async def test_cancel_kills_grandchildren_too() -> None:
    shell = ["sh", "-c", shlex.join(samples.endless_encode_argv()) + " & wait"]
    seen: set[int] = set()
    with trio.move_on_after(1) as budget:  # wall-clock: the product call's budget
        async with trio.open_nursery() as nursery:
            pgid = await nursery.start(partial(process.run, shell))
            assert await _within(1.0, lambda: len(_members(pgid)) >= 2)
            seen = _members(pgid) - {pgid}  # ffmpeg, a child of the shell
    assert budget.cancelled_caught
    assert seen
    assert await _within(1.0, lambda: not _members(pgid)), _members(pgid)
    assert not any(_alive(pid) for pid in seen)


async def test_timeout_s_is_a_budget_error() -> None:
    pgid = 0

    async def go(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal pgid
        async with trio.open_nursery() as nursery:
            pgid = await nursery.start(partial(process.run, samples.endless_encode_argv(),
                                               timeout_s=0.3))
            task_status.started()

    with pytest.RaisesGroup(MediaBudgetError, flatten_subgroups=True) as info:
        await go()
    error = info.value.exceptions[0]
    assert isinstance(error, BudgetExceededError)
    assert "ran past its time limit of 0.3 s" in str(error)
    assert await _within(1.0, lambda: not _members(pgid))


async def test_cpu_limit_is_a_budget_error() -> None:
    limits = Limits(cpu_s=1, memory_bytes=None)
    log = FfmpegLog()
    done = await process.run(samples.endless_encode_argv(loglevel="level+info"),
                             limits=limits, on_stderr_line=log.feed)
    error = classify("ffmpeg", done, log, limits=limits)
    assert isinstance(error, MediaBudgetError)
    assert str(error) == "ffmpeg used up its CPU-time limit of 1 s"


async def test_memory_limit_is_transient(clips: Clips, tmp_path: Path) -> None:
    tiny = Limits(memory_bytes=50_000_000, cpu_s=None)
    with pytest.raises(MediaUnavailableError, match="ran out of memory") as info:
        await media.probe(clips.av, limits=tiny)
    assert isinstance(info.value, TransientError)
    with pytest.raises(MediaUnavailableError, match="ran out of memory"):
        await media.transcode_chunk(clips.av, tmp_path / "c.mp4", start_s=0, duration_s=1,
                                    height=60, video_bitrate_k=100, limits=tiny)
    # enough to start, not enough for an encoder working on 5334x4000 frames
    small = Limits(memory_bytes=400_000_000, cpu_s=None)
    with pytest.raises(MediaUnavailableError):
        await media.transcode_chunk(clips.av, tmp_path / "c.mp4", start_s=0, duration_s=1,
                                    height=4000, video_bitrate_k=100, limits=small)
    assert not _names(tmp_path)


# -- the runner ------------------------------------------------------------------------


async def test_run_feeds_stdin_and_bounds_its_outputs() -> None:
    done = await process.run(["cat"], stdin=b"hello\n" * 1000, stdout_max_bytes=60)
    assert (done.returncode, done.stdout, done.stdout_truncated) == (0, b"hello\n" * 10, True)
    lines: list[str] = []
    script = "i=0; while [ $i -lt 2000 ]; do echo line $i >&2; i=$((i+1)); done; exit 3"
    done = await process.run(["sh", "-c", script], on_stderr_line=lines.append)
    assert done.returncode == 3
    assert len(lines) == 2000
    assert lines[-1] == "line 1999"
    assert len(done.stderr_tail.encode()) == process.STDERR_TAIL_BYTES
    assert done.stderr_tail.endswith("line 1999\n")


async def test_run_reports_a_signal_and_a_missing_program() -> None:
    done = await process.run(["sh", "-c", "kill -SEGV $$"])
    assert done.signal == signal.SIGSEGV
    with pytest.raises(MediaUnavailableError, match="cannot start no-such-ffmpeg"):
        await process.run(["no-such-ffmpeg", "-version"])


# -- the exit mapping, row by row --------------------------------------------------------

Row = tuple[int, list[str], Limits, type[MediaError] | None, str]
ROWS: dict[str, Row] = {
    "sigxcpu": (-signal.SIGXCPU, [], Limits(), MediaBudgetError, "CPU-time limit"),
    "ffmpeg caught sigxcpu": (255, ["[info] Exiting normally, received signal 24."], Limits(),
                              MediaBudgetError, "CPU-time limit"),
    "bad_alloc": (-signal.SIGABRT, ["terminate called after throwing an instance of "
                                    "'std::bad_alloc'"], Limits(), MediaUnavailableError,
                  "ran out of memory"),
    "enomem at exit 0": (0, ["[error] in.mp4: Cannot allocate memory"], Limits(),
                         MediaUnavailableError, "ran out of memory"),
    "oom killer": (-signal.SIGKILL, [], Limits(), MediaUnavailableError, "killed (SIGKILL)"),
    "segv under a limit": (-signal.SIGSEGV, [], Limits(), MediaUnavailableError,
                           "crashed (SIGSEGV) under its memory limit"),
    "segv without one": (-signal.SIGSEGV, [], media.NO_LIMITS, MediaInputError,
                         "crashed (SIGSEGV) reading the input"),
    "disk full": (1, ["[error] Error writing trailer of out.mp4: No space left on device"],
                  Limits(), MediaUnavailableError, "scratch disk is full"),
    "protocol": (1, ["[error] Protocol 'http' not on whitelist 'file,pipe'!"], Limits(),
                 MediaInputError, "refers to another file or a URL"),
    "no audio": (1, ["[fatal] Stream map '0:a:0' matches no streams."], Limits(),
                 MediaInputError, "has no audio stream"),
    "decoder": (1, ["[error] Decoder (codec hevc) not found for input stream #0:0"], Limits(),
                MediaInputError, "not a video ffmpeg can read: Decoder (codec hevc)"),
    "unknown": (1, ["[error] Something new went wrong"], Limits(), MediaUnavailableError,
                "failed (exit status 1): Something new went wrong"),
    # found by tests/contract/test_fuzz_media.py: each was retried as transient
    "frame too large": (1, ["[gif @ 0x55] [IMGUTILS @ 0x7f] [error] Picture size "
                            "60000x60000 is invalid", "[error] Error configuring filter graph"],
                        Limits(), MediaInputError, "declares frames of 60000x60000"),
    "over max_pixels": (1, ["[vp8 @ 0x55] [IMGUTILS @ 0x7f] [error] Picture size 16000x16000 "
                            "exceeds specified max pixel count 8294400, see the documentation",
                            "[error] Error while decoding stream #0:0: Cannot allocate memory"],
                        Limits(), MediaInputError, "over the limit of 8,294,400 pixels"),
    "the input failed to open": (1, ["[error] Failed to read frame size: Could not seek to 9.",
                                     "[error] file:/x/in.mp4: Invalid argument"], Limits(),
                                 MediaInputError, "not a video ffmpeg can read"),
    "io error": (1, ["[error] file:/x/in.mp4: Input/output error"], Limits(),
                 MediaUnavailableError, "could not read or write"),
    "success": (0, ["[warning] deprecated pixel format used"], Limits(), None, ""),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_exit_mapping(row: str) -> None:
    returncode, lines, limits, expected, words = ROWS[row]
    log = FfmpegLog(["file:/x/in.mp4"], inputs=["file:/x/in.mp4"])
    for line in lines:
        log.feed(line)
    done = process.Completed(pid=1, returncode=returncode, stdout=b"")
    error = classify("ffmpeg", done, log, limits=limits)
    if expected is None:
        assert error is None
    else:
        assert type(error) is expected
        assert words in str(error)


def test_ffprobe_failing_unrecognised_is_the_inputs_fault() -> None:
    # ffprobe reads only the input and writes nothing: what ffmpeg would
    # retry (an unknown failure) is the input's fault when ffprobe says it
    log = FfmpegLog()
    log.feed("[error] Failed to read frame size: Could not seek to 1029.")
    done = process.Completed(pid=1, returncode=1, stdout=b"")
    assert type(classify("ffprobe", done, log, limits=Limits())) is MediaInputError
    assert type(classify("ffmpeg", done, log, limits=Limits())) is MediaUnavailableError


# -- helpers ------------------------------------------------------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir())



async def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within ``seconds`` (another process's
    progress can only be observed)."""
    deadline = trio.current_time() + seconds
    while not condition():
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(0.005)  # wall-clock: polling a process group
    return True


def _members(pgid: int) -> set[int]:
    """The live (not zombie) processes in group ``pgid``, from /proc."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return set()
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            state, group = _stat(int(entry.name))
            if group == pgid and state not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    state, _ = _stat(pid)
    return state not in ("", "Z", "X")


def _stat(pid: int) -> tuple[str, int]:
    """(state, process group) of ``pid``; ("", 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)"
    return fields[0], int(fields[2])


async def _ffprobe_json(path: Path, *args: str) -> dict[str, list[dict[str, object]]]:
    done = await process.run(["ffprobe", "-v", "error", *args, "-of", "json", f"file:{path}"])
    assert done.returncode == 0, done.stderr_tail
    result: dict[str, list[dict[str, object]]] = msgspec.json.decode(done.stdout)
    return result


async def _count_frames(path: Path) -> int:
    info = await _ffprobe_json(path, "-select_streams", "v:0", "-count_frames",
                               "-show_entries", "stream=nb_read_frames")
    return int(str(info["streams"][0]["nb_read_frames"]))


async def _first_frame_type(path: Path) -> str:
    info = await _ffprobe_json(path, "-select_streams", "v:0", "-read_intervals", "%+#1",
                               "-show_entries", "frame=pict_type")
    return str(info["frames"][0]["pict_type"])


async def _dimensions(path: Path) -> tuple[int, int]:
    info = await _ffprobe_json(path, "-show_entries", "stream=width,height")
    stream = info["streams"][0]
    return int(str(stream["width"])), int(str(stream["height"]))
