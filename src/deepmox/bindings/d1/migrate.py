"""Numbered SQL migrations, applied by ``deepmox migrate`` and at daemon start.

Each file ``migrations/NNNN_name.sql`` runs once, in order, as one atomic batch
together with the row that records it in ``deepmox_migrations``; a daemon racing
another to apply the same migration loses on that row's primary key and simply
re-reads the version. Statements are separated by a ``;`` at the end of a line.
"""

from __future__ import annotations

import re
from importlib import resources

import msgspec

from ...errors import D1QueryError
from .interface import D1, Statement

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    statements: list[str]


def split_sql(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def available() -> list[Migration]:
    folder = resources.files("deepmox.bindings.d1") / "migrations"
    found = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, split_sql(entry.read_text())))
    return sorted(found, key=lambda m: m.version)


async def current_version(d1: D1) -> int:
    await d1.execute(
        "CREATE TABLE IF NOT EXISTS deepmox_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    value = (await d1.execute("SELECT max(version) FROM deepmox_migrations")).scalar()
    return int(value or 0)


async def pending(d1: D1) -> list[Migration]:
    version = await current_version(d1)
    return [m for m in available() if m.version > version]


async def migrate(d1: D1, now: float) -> list[Migration]:
    """Apply every pending migration; return those this call applied."""
    applied = []
    for m in await pending(d1):
        stmts = [Statement(s) for s in m.statements]
        stmts.append(Statement(
            "INSERT INTO deepmox_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (m.version, m.name, now)))
        try:
            await d1.batch(stmts)
        except D1QueryError:
            # Another daemon applied it first (the version row's key clashed):
            # the schema is there either way.
            if await current_version(d1) >= m.version:
                continue
            raise
        applied.append(m)
    return applied
