"""Hostile media for tests, crafted byte by byte: headers that declare huge
frames, playlists and manifests that point at other files or URLs, and the
canary they point at.

Good clips come from :mod:`deepmox.testing.media_samples`; these functions
take one and lie about it, or write a playlist from scratch. Each returns the
path it wrote.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path


def patch_mp4_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """``src`` (an MP4) with its track header (``tkhd``) and its visual sample
    entry (``avc1``, ``jpeg``) claiming ``width`` x ``height`` (each < 65536)."""
    data = bytearray(src.read_bytes())
    i = data.find(b"tkhd")
    size = struct.unpack(">I", data[i - 4:i])[0]
    struct.pack_into(">II", data, i - 4 + size - 8, width << 16, height << 16)
    stsd = data.find(b"stsd")
    for fourcc in (b"avc1", b"jpeg", b"mp4v"):
        j = data.find(fourcc, stsd)
        if j > 0:
            # size, type, 6 reserved, data ref index, 16 bytes of pre-defined: then w, h
            struct.pack_into(">HH", data, j + 4 + 6 + 2 + 16, width, height)
    dst.write_bytes(data)
    return dst


def write_ivf_vp8(src: Path, dst: Path, width: int, height: int, *,
                  frame_size: tuple[int, int] | None = None) -> Path:
    """``src`` (an IVF of VP8, see :func:`make_ivf`) with its file header
    claiming ``width`` x ``height`` and, with ``frame_size``, every key frame's
    own header claiming that (each at most 16383, VP8's limit)."""
    data = bytearray(src.read_bytes())
    struct.pack_into("<HH", data, 12, width, height)
    if frame_size is not None:
        at = 32
        while at + 12 <= len(data):
            length = struct.unpack_from("<I", data, at)[0]
            frame = at + 12
            if not data[frame] & 1 and data[frame + 3:frame + 6] == b"\x9d\x01\x2a":
                struct.pack_into("<HH", data, frame + 6, *frame_size)
            at = frame + length
    dst.write_bytes(data)
    return dst


def write_gif(dst: Path, width: int, height: int) -> Path:
    """A 35-byte GIF whose one frame is ``width`` x ``height`` (< 65536):
    decoding it costs width * height * 4 bytes."""
    data = (b"GIF89a" + struct.pack("<HH", width, height) + bytes([0x80, 0, 0])
            + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
            + b"\x02\x02\x4c\x01\x00" + b"\x3b")
    dst.write_bytes(data)
    return dst


def write_y4m(dst: Path, width: int, height: int) -> Path:
    """A YUV4MPEG2 header declaring ``width`` x ``height`` frames, and one frame's
    worth of nothing."""
    dst.write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode()
                    + b"\x80" * 64)
    return dst


def write_playlist(dst: Path, form: str, target: str) -> Path:
    """A playlist or manifest of ``form`` naming ``target`` (a path or URL):
    ``hls``, ``hls-key``, ``hls-map``, ``ffconcat``, ``concat-protocol``, ``dash``,
    ``smil``."""
    if form == "hls":
        text = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
                f"#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n")
    elif form == "hls-key":
        text = ("#EXTM3U\n#EXT-X-TARGETDURATION:10\n"
                f'#EXT-X-KEY:METHOD=AES-128,URI="{target}"\n#EXTINF:1.0,\n{target}\n'
                "#EXT-X-ENDLIST\n")
    elif form == "hls-map":
        text = (f'#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MAP:URI="{target}"\n'
                f"#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n")
    elif form == "ffconcat":
        text = f"ffconcat version 1.0\nfile '{target}'\n"
    elif form == "concat-protocol":
        text = f"concat:{target}|{target}\n"
    elif form == "dash":
        text = ('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" '
                'type="static" mediaPresentationDuration="PT1S" minBufferTime="PT1S" '
                'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">\n'
                f"<BaseURL>{target}</BaseURL>\n<Period><AdaptationSet mimeType=\"video/mp2t\">"
                '<Representation id="1" bandwidth="1000"><SegmentBase/></Representation>'
                "</AdaptationSet></Period></MPD>\n")
    elif form == "smil":
        text = f'<smil><body><video src="{target}"/></body></smil>\n'
    else:
        raise ValueError(f"unknown playlist form {form!r}")
    dst.write_text(text)
    return dst


PLAYLIST_FORMS = ("hls", "hls-key", "hls-map", "ffconcat", "concat-protocol", "dash", "smil")


def mark_unread(path: Path) -> float:
    """Set ``path``'s access time well before its modification time, so that
    any read of it moves the access time (``relatime`` updates it whenever it
    is older than the modification): what :func:`was_read` looks for."""
    st = path.stat()
    os.utime(path, (st.st_mtime - 3600, st.st_mtime))
    return path.stat().st_atime


def was_read(path: Path, atime: float) -> bool:
    return path.stat().st_atime != atime


def atime_shows_reads(folder: Path) -> bool:
    """Whether this filesystem records reads at all (not mounted ``noatime``)."""
    probe = folder / ".atime-probe"
    probe.write_bytes(b"x")
    before = mark_unread(probe)
    probe.read_bytes()
    shows = was_read(probe, before)
    probe.unlink()
    return shows
