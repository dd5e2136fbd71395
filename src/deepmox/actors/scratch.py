"""An actor's scratch folder: local disk for one actor run, under a quota.

Nothing may depend on it surviving the actor: the supervisor removes it when
the actor ends, however it ends, and the next run of the job starts from an
empty one (inputs come back from the object store).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import PermanentError


class ScratchQuotaError(PermanentError):
    """The job needs more local disk than ``[limits] scratch_bytes``."""


class Scratch:
    def __init__(self, base: str, quota_bytes: int, label: str) -> None:
        self.base = base or None
        self.quota_bytes = quota_bytes
        self.label = label
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The folder, created on first use."""
        if self._path is None:
            if self.base:
                os.makedirs(self.base, exist_ok=True)
            safe = "".join(c if c.isalnum() else "-" for c in self.label)[:40]
            self._path = Path(tempfile.mkdtemp(prefix=f"deepmox-{safe}-", dir=self.base))
        return self._path

    @property
    def created(self) -> bool:
        return self._path is not None

    def used_bytes(self) -> int:
        if self._path is None:
            return 0
        total = 0
        for root, _dirs, files in os.walk(self._path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        return total

    def ensure_room(self, more_bytes: int) -> None:
        """Raise :class:`ScratchQuotaError` unless ``more_bytes`` still fit."""
        used = self.used_bytes()
        if used + more_bytes > self.quota_bytes:
            raise ScratchQuotaError(
                f"this step needs {used + more_bytes:,} bytes of scratch space; the limit is "
                f"{self.quota_bytes:,} ([limits] scratch_bytes)")

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
