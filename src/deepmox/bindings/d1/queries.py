"""The named queries of ``queries.sql``, loaded once."""

from __future__ import annotations

import re
from importlib import resources

from ...jobs import EVENT_COLUMNS, JOB_COLUMNS

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    text = (resources.files("deepmox.bindings.d1") / "queries.sql").read_text()
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        out[name] = sql.replace("{JOB_COLUMNS}", JOB_COLUMNS).replace(
            "{EVENT_COLUMNS}", EVENT_COLUMNS)
    return out


Q = _load()
