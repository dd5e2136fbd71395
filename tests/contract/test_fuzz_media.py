"""The media binding on hostile input, fuzzed: clips truncated at any offset,
random bytes behind real magic numbers, headers that declare huge frames,
and playlists and manifests pointing at a canary file or URL.

``tests/contract/test_media.py`` holds the fixed list; here hypothesis picks
the offsets, the bytes, the sizes and the references.

Rules: every call ends, within the limits it was given, in success or a
:class:`MediaInputError` (permanent) whose message starts "the input" and
names no path; never a transient error, never a traceback. A success is
only possible for what is really a video within the limits. The canary (a
real MPEG-TS segment, so that a leak would be a working video) must never be
read: its access time is set before its modification time, which any read
updates, and its frame size (64x48) must not show anywhere. Clips are
generated once per module; nothing sleeps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from deepmox.bindings import media
from deepmox.bindings.media import Limits, process
from deepmox.errors import MediaError, MediaInputError
from deepmox.testing import media_samples as samples
from tests import media_hostile as hostile

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

#: the pipeline's limits, small: 640x480 frames at most
LIMITS = Limits(memory_bytes=1024**3, cpu_s=30, max_pixels=640 * 480)
#: any one call: far more than a few-second clip needs, far less than a hang
CALL_TIMEOUT_S = 30.0
FUZZ = settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Clips(msgspec.Struct, frozen=True):
    dir: Path
    mp4: Path  # 2 s, 160x120, H.264 + AAC, index at the end
    mkv: Path  # the same in Matroska: streamable, so cut files still hold frames
    ts: Path  # MPEG-TS
    ivf: Path | None  # VP8 in IVF, 64x48 (None without libvpx)
    mjpeg: Path  # MJPEG in MP4, 160x120
    canary: Path  # a segment nothing may read
    canary_bytes: bytes  # read once, before it was marked
    canary_atime: float

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Clips({self.dir})"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("hostile-media")
    (root / "private").mkdir()

    async def ffmpeg(args: list[str], dst: Path) -> Path | None:
        done = await process.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args,
                                  str(dst)], limits=media.NO_LIMITS)
        return dst if done.returncode == 0 else None

    async def make() -> Clips:
        mp4 = await samples.make_clip(root / "clip.mp4", seconds=2.0)
        mkv = await ffmpeg(["-i", str(mp4), "-c", "copy", "-f", "matroska"], root / "clip.mkv")
        ts = await ffmpeg(["-i", str(mp4), "-c", "copy", "-f", "mpegts"], root / "clip.ts")
        ivf = await ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=5:duration=1",
                            "-c:v", "libvpx", "-f", "ivf"], root / "clip.ivf")
        mjpeg = await ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=5:duration=1",
                              "-c:v", "mjpeg", "-f", "mp4"], root / "mjpeg.mp4")
        canary = await samples.make_segment(root / "private" / "canary.ts", size=(64, 48))
        assert mkv is not None
        assert ts is not None
        assert mjpeg is not None
        data = canary.read_bytes()
        return Clips(dir=root, mp4=mp4, mkv=mkv, ts=ts, ivf=ivf, mjpeg=mjpeg, canary=canary,
                     canary_bytes=data, canary_atime=hostile.mark_unread(canary))

    return trio.run(make)


async def _every_call(path: Path, out: Path, *, encode: bool = False
                      ) -> list[tuple[str, object]]:
    """Run the binding's calls on ``path`` -- probing, reading packets,
    decoding a frame and, with ``encode``, transcoding a second of it; what
    each returned or raised."""
    calls = {
        "probe": lambda: media.probe(path, limits=LIMITS),
        "keyframes": lambda: media.keyframes(path, limits=LIMITS),
        "thumbnail": lambda: media.thumbnail(path, out / "t.jpg", at_s=0, height=48,
                                             limits=LIMITS),
    }
    if encode:
        calls["transcode_chunk"] = lambda: media.transcode_chunk(
            path, out / "c.mp4", start_s=0, duration_s=1, height=48, video_bitrate_k=100,
            limits=LIMITS)
    results: list[tuple[str, object]] = []
    for name, call in calls.items():
        try:
            with trio.fail_after(CALL_TIMEOUT_S):
                results.append((name, await call()))
        except MediaError as exc:
            results.append((name, exc))
    return results


def _check(results: list[tuple[str, object]], clips: Clips, *,
           may_succeed: bool | set[str]) -> None:
    """``may_succeed``: whether (or which of) the calls may return."""
    for name, got in results:
        if isinstance(got, BaseException):
            assert isinstance(got, MediaInputError), (name, type(got).__name__, got)
            message = str(got)
            assert message.startswith("the input"), (name, message)
            assert str(clips.dir) not in message, message
            event(f"{name}: refused")
        else:
            assert may_succeed is True or (may_succeed and name in may_succeed), (name, got)
            event(f"{name}: ok")
        if isinstance(got, media.Probe):
            video = got.video
            assert video is None or (video.width or 0) * (video.height or 0) <= 640 * 480
    assert not hostile.was_read(clips.canary, clips.canary_atime), "the canary was read"


# -- truncated, random ------------------------------------------------------------------


@FUZZ
@given(which=st.sampled_from(["mp4", "mkv", "ts", "mjpeg"]), keep=st.floats(0.0, 0.999))
# a Matroska file cut before its first decodable frame was "transient"
@example(which="mkv", keep=0.0625)
async def test_a_clip_cut_anywhere(clips: Clips, tmp_path: Path, which: str,
                                   keep: float) -> None:
    data = await trio.Path(getattr(clips, which)).read_bytes()
    cut = tmp_path / f"cut.{which}"
    cut.write_bytes(data[: max(1, int(len(data) * keep))])
    # a file cut after its index (or a streamable one) still holds real frames
    _check(await _every_call(cut, tmp_path), clips, may_succeed=True)


MAGIC = [b"", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", b"\x1a\x45\xdf\xa3",
         b"DKIF\x00\x00\x20\x00VP80", b"GIF89a", b"RIFF\x00\x00\x00\x00AVI LIST", b"\x47\x40",
         b"OggS\x00\x02", b"fLaC", b"ID3\x04\x00", b"\x00\x00\x00\x01\x67", b"FLV\x01\x05",
         b"#EXTM3U\n", b"ffconcat version 1.0\n", b"YUV4MPEG2 W8 H8 "]


@FUZZ
@given(magic=st.sampled_from(MAGIC), noise=st.binary(min_size=1, max_size=4096))
async def test_random_bytes_behind_a_real_magic_number(clips: Clips, tmp_path: Path,
                                                       magic: bytes, noise: bytes) -> None:
    bad = tmp_path / "noise.bin"
    bad.write_bytes(magic + noise)
    # noise behind a GIF or MP3 header can be a (tiny, odd) file of that kind
    _check(await _every_call(bad, tmp_path), clips, may_succeed=True)


# -- headers that declare huge frames ----------------------------------------------------

_sizes = st.tuples(st.integers(1, 65535), st.integers(1, 65535))


@FUZZ
@given(form=st.sampled_from(["mp4", "mjpeg", "gif", "y4m", "ivf", "ivf-frames"]),
       size=_sizes)
async def test_headers_that_declare_huge_frames(clips: Clips, tmp_path: Path, form: str,
                                                size: tuple[int, int]) -> None:
    w, h = size
    if form == "mp4":
        bad = hostile.patch_mp4_size(clips.mp4, tmp_path / "big.mp4", w, h)
    elif form == "mjpeg":
        bad = hostile.patch_mp4_size(clips.mjpeg, tmp_path / "big-mjpeg.mp4", w, h)
    elif form == "gif":
        bad = hostile.write_gif(tmp_path / "big.gif", w, h)
    elif form == "y4m":
        bad = hostile.write_y4m(tmp_path / "big.y4m", w, h)
    else:
        if clips.ivf is None:
            pytest.skip("ffmpeg has no libvpx")
        inner = (min(w, 16383), min(h, 16383)) if form == "ivf-frames" else None
        bad = hostile.write_ivf_vp8(clips.ivf, tmp_path / "big.ivf", w, h, frame_size=inner)
    real = form in ("gif", "ivf-frames")  # the frames really are that size
    results = await _every_call(bad, tmp_path, encode=real)
    # what the stream itself says wins over a container's claim: a clip whose
    # real frames are small may work, at their real size; frames that really
    # are that size work only within the limit (reading packets needs no frame)
    small = w * h <= 640 * 480
    _check(results, clips, may_succeed=not real or small or {"keyframes"})


@pytest.mark.parametrize(("make", "says"), [
    # 35 bytes that decoded into a 1 GiB frame; 60000 squared failed "transient"
    (lambda c, d: hostile.write_gif(d / "g.gif", 16000, 16000), "over the limit"),
    (lambda c, d: hostile.write_gif(d / "g.gif", 60000, 60000), "no decoder accepts"),
    (lambda c, d: c.ivf and hostile.write_ivf_vp8(c.ivf, d / "v.ivf", 16000, 16000,
                                                  frame_size=(16000, 16000)),
     "over the limit"),
])
async def test_a_decoder_never_allocates_a_declared_huge_frame(clips: Clips, tmp_path: Path,
                                                               make: object,
                                                               says: str) -> None:
    bad = make(clips, tmp_path)  # type: ignore[operator]
    if not bad:
        pytest.skip("ffmpeg has no libvpx")
    for name, got in await _every_call(bad, tmp_path, encode=True):
        if name == "keyframes":  # reads packets only: no frame is ever allocated
            continue
        assert isinstance(got, MediaInputError), (name, got)
        assert says in str(got), (name, got)


# -- playlists and manifests -------------------------------------------------------------


@FUZZ
@given(form=st.sampled_from(hostile.PLAYLIST_FORMS),
       ref=st.sampled_from(["path", "file-url", "relative", "dotdot", "http", "https", "data"]),
       name=st.sampled_from(["list.m3u8", "list.mpd", "list.txt", "clip.mp4", "list",
                             "x.ffconcat", "a.smil"]))
async def test_playlists_read_nothing_they_point_at(clips: Clips, tmp_path: Path, form: str,
                                                    ref: str, name: str) -> None:
    inside = tmp_path / "in"
    inside.mkdir(exist_ok=True)
    target = {
        "path": str(clips.canary),
        "file-url": clips.canary.as_uri(),
        "relative": "canary.ts",  # a copy lies beside the playlist
        "dotdot": "../../" + clips.canary.relative_to(clips.dir.parent).as_posix(),
        "http": "http://127.0.0.1:9/canary.ts",
        "https": "https://127.0.0.1:9/canary.ts",
        "data": "data:video/mp2t;base64,R0VU",
    }[ref]
    (inside / "canary.ts").write_bytes(clips.canary_bytes)
    beside_atime = hostile.mark_unread(inside / "canary.ts")
    bad = hostile.write_playlist(inside / name, form, target)
    results = await _every_call(bad, tmp_path)
    _check(results, clips, may_succeed=False)
    assert not hostile.was_read(inside / "canary.ts", beside_atime), "the copy beside was read"
    for _, got in results:
        assert "64x48" not in str(got)


def test_the_canary_would_show_a_read(clips: Clips) -> None:
    """The atime proof above means something only where reads show."""
    if not hostile.atime_shows_reads(clips.dir):
        pytest.skip("this filesystem does not record reads (noatime)")
    assert not hostile.was_read(clips.canary, clips.canary_atime)
