"""Startup checks against real databases: reachable, migrated, or one line with the fix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from vendhub.adapters.db.migrate import known_revisions
from vendhub.entrypoints.preflight import StartupError, check_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def url(
    engine: AsyncEngine, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[str]:
    """The backend's migrated database; its alembic_version is put back afterwards."""
    yield database_urls[backend]
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE alembic_version SET version_num = :v"), {"v": known_revisions()[-1]}
        )


async def set_revision(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


async def test_a_database_at_head_passes(url: str) -> None:
    await check_database(url)


async def test_a_database_behind_says_run_vendhub_db_upgrade(url: str, engine: AsyncEngine) -> None:
    await set_revision(engine, known_revisions()[0])
    with pytest.raises(StartupError, match=r"run `vendhub db upgrade`") as raised:
        await check_database(url)
    assert known_revisions()[0] in str(raised.value)


async def test_a_newer_release_schema_still_lets_the_previous_release_start(
    url: str, engine: AsyncEngine
) -> None:
    """Rolling upgrades: migrate first, then the old replicas keep running until rolled."""
    await set_revision(engine, "9999_from_the_next_release")
    await check_database(url)
