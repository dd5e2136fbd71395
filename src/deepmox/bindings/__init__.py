"""Bindings: the only doors to external state (d1, r2, ai, media)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .ai import AI
    from .d1 import D1
    from .r2 import R2


@dataclass(frozen=True)
class Bindings:
    """What a step may reach: the configuration and the bindings."""

    cfg: Config
    d1: D1
    r2: R2 | None = None
    ai: AI | None = None

    def require_ai(self) -> AI:
        if self.ai is None:  # pragma: no cover - the daemon always opens one
            raise RuntimeError("this daemon was started without the AI binding")
        return self.ai

    def require_r2(self) -> R2:
        if self.r2 is None:  # pragma: no cover - the daemon always opens one
            raise RuntimeError("this daemon was started without an object store")
        return self.r2
