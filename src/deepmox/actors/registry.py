"""The registry of job kinds: the built-ins, entry points, configured modules.

Users add kinds without forking deepmox in either of two ways: a package that
declares an entry point in the group ``deepmox.kinds`` (``name = "pkg.mod:MyKind"``),
or a module named in ``[supervisor] kind_modules`` that calls
:func:`register` when imported.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .kind import Kind

if TYPE_CHECKING:
    from ..config import Config

ENTRY_POINT_GROUP = "deepmox.kinds"

_extra: dict[str, Kind] = {}


def register(kind: type[Kind] | Kind) -> type[Kind] | Kind:
    """Register a kind from a module listed in ``kind_modules``; usable as a
    class decorator."""
    instance = kind() if isinstance(kind, type) else kind
    _extra[instance.name] = instance
    return kind


class Registry:
    def __init__(self, kinds: dict[str, Kind]) -> None:
        self._kinds = kinds

    @classmethod
    def load(cls, modules: list[str] | None = None) -> Registry:
        from ..video.publish import Publish
        from ..video.transcode import Transcode
        from .builtin import BUILTIN
        from .describe import Describe

        kinds: dict[str, Kind] = {
            k.name: k for k in (b() for b in (*BUILTIN, Transcode, Describe, Publish))}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj: Any = ep.load()
            except Exception as exc:
                raise ConfigError(f"entry point {ep.name} = {ep.value} failed: {exc}") from exc
            instance = obj() if isinstance(obj, type) else obj
            kinds[instance.name] = instance
        for i, module in enumerate(modules or []):
            try:
                importlib.import_module(module)
            except Exception as exc:
                # whatever the name or the module's own code raised ("" and
                # ".x" are ValueError and TypeError, a broken module anything)
                raise ConfigError(
                    f"cannot import kind module {module!r}: {type(exc).__name__}: {exc} - at "
                    f"`$.supervisor.kind_modules[{i}]`") from exc
        kinds.update(_extra)
        return cls(kinds)

    def get(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def budget_for(self, cfg: Config, name: str) -> float:
        """The budget of kind ``name``: its ``[kinds.<name>]`` setting, else the
        kind's own default, else ``[supervisor] budget_s``."""
        kind = self._kinds.get(name)
        return cfg.budget_for(name, kind.budget_s if kind is not None else None)
