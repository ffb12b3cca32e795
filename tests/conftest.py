"""Shared fixtures: migrated databases on every backend, service contexts, free ports."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.migrate import upgrade
from vendhub.adapters.db.tables import metadata
from vendhub.services.context import ServiceContext, Tunables

PG_ADMIN_URL = os.environ.get(
    "VENDHUB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get(
    "VENDHUB_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"
)
MQTT_HOST = os.environ.get("VENDHUB_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("VENDHUB_TEST_MQTT_PORT", "1883"))
BACKENDS = ("sqlite", "postgresql", "mysql")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel may give the same
    ephemeral port to two binds in a row once the first socket is closed (two servers of
    one test then collided)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


def _create_database(backend: str, tmp: Path) -> tuple[str, str | None]:
    """A new, migrated database; returns its URL and the statement that drops it."""
    name = unique("vendhub_test_")
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
        upgrade(url)
        return url, None
    admin = PG_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
    asyncio.run(_admin(admin, f"CREATE DATABASE {name}"))
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    if backend == "mysql":
        url += "?charset=utf8mb4"
    upgrade(url)
    return url, f"DROP DATABASE IF EXISTS {name}"


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database per backend, created lazily, dropped at the end of the run."""
    created: dict[str, str] = {}
    drops: list[tuple[str, str]] = []

    class Lazy(dict[str, str]):
        def __missing__(self, backend: str) -> str:
            # Called from async fixtures; migrations run their own event loop, so use a thread.
            with ThreadPoolExecutor(1) as pool:
                url, drop = pool.submit(
                    _create_database, backend, tmp_path_factory.mktemp(backend)
                ).result()
            created[backend] = url
            if drop:
                drops.append((backend, drop))
            self[backend] = url
            return url

    yield Lazy()
    for backend, drop in drops:
        admin = PG_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
        asyncio.run(_admin(admin, drop))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _wipe(engine: AsyncEngine) -> None:
    """Empty every table, children first. PostgreSQL: one statement (data-modifying CTEs; its
    foreign keys are checked at the end of the statement). TRUNCATE was measured 10x slower
    than DELETE on these small tables (new files per table), so it is not used."""
    tables = list(reversed(metadata.sorted_tables))
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            quote = conn.dialect.identifier_preparer.quote
            ctes = ", ".join(f"d{n} AS (DELETE FROM {quote(t.name)})" for n, t in enumerate(tables))
            await conn.execute(sa.text(f"WITH {ctes} SELECT 1"))
            return
        for table in tables:
            await conn.execute(table.delete())


# One engine per database for the whole run: building one (and its dialect's first-connect
# queries) cost more than the test's own queries in most integration tests.
_ENGINES: dict[str, AsyncEngine] = {}


@pytest.fixture
async def engine(backend: str, database_urls: dict[str, str]) -> AsyncIterator[AsyncEngine]:
    """An engine on a clean (emptied) migrated database of the parametrised backend.

    Shared between tests of a backend; its pool is emptied after each test, because pooled
    connections belong to the test's event loop."""
    url = database_urls[backend]
    eng = _ENGINES.get(url)
    if eng is None:
        eng = _ENGINES[url] = create_engine(url)
    await _wipe(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


class FakeClock:
    """A clock tests move by hand; starts at a fixed UTC instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 27, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ctx(engine: AsyncEngine, clock: FakeClock) -> ServiceContext:
    return ServiceContext(
        engine=engine, tunables=Tunables(), clock=clock, mqtt_connected=lambda: True
    )
