"""Shared fixtures: temporary databases, the D1 REST fake, configurations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from deepmox.bindings.d1 import SqliteD1
from deepmox.bindings.d1.http import HttpD1
from tests.fakes.d1_server import D1Fake, serve_d1

TOKEN = "test-token-not-a-secret"

# Examples that touch real files and sockets take what a shared machine gives
# them: no per-example deadline (a slow example is not a failing one).
settings.register_profile("deepmox", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("deepmox")


@pytest.fixture
async def d1_fake(tmp_path: Path) -> AsyncIterator[D1Fake]:
    async with trio.open_nursery() as nursery:
        fake = await serve_d1(nursery, db_path=str(tmp_path / "fake.db"), token=TOKEN)
        yield fake
        await fake.shutdown()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def sqlite_d1(tmp_path: Path) -> AsyncIterator[SqliteD1]:
    d1 = SqliteD1(str(tmp_path / "deepmox.db"))
    yield d1
    await d1.aclose()


@pytest.fixture
async def http_d1(d1_fake: D1Fake) -> AsyncIterator[HttpD1]:
    d1 = HttpD1(api_base=d1_fake.api_base, account_id=d1_fake.account_id,
                database_id=d1_fake.database_id, token=TOKEN, requests_per_5min=100_000)
    yield d1
    await d1.aclose()
