"""The media binding: ffprobe and ffmpeg as child processes.

Each call runs one tool in its own process group under memory and CPU limits
(``[limits]``), killed with its whole group when the caller's cancel scope
fires; inputs are opened under a protocol and demuxer allowlist so a crafted
file cannot make ffmpeg read anything else (see :mod:`.ffmpeg`). Failures
become :class:`~deepmox.errors.MediaInputError` (the input's fault, permanent),
:class:`~deepmox.errors.MediaUnavailableError` (memory, disk: transient) or
:class:`~deepmox.errors.MediaBudgetError` (the tool's own time limit).
"""

from __future__ import annotations

from .ffmpeg import (
    INPUT_FORMATS,
    Probe,
    StreamInfo,
    Subtitle,
    concat,
    encode_audio,
    keyframes,
    probe,
    scene_changes,
    subtitles,
    thumbnail,
    thumbnails,
    transcode_chunk,
)
from .process import DEFAULT_LIMITS, NO_LIMITS, Completed, Limits, run

__all__ = [
    "DEFAULT_LIMITS", "INPUT_FORMATS", "NO_LIMITS", "Completed", "Limits", "Probe",
    "StreamInfo", "Subtitle", "concat", "encode_audio", "keyframes", "probe", "run",
    "scene_changes", "subtitles", "thumbnail", "thumbnails", "transcode_chunk",
]
