"""fast.Query: the same answers and errors on every database, inside the caller's transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import unique
from vendhub.adapters.db import fast
from vendhub.adapters.db.tables import machines, outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INSERT_MACHINE = fast.Query(
    lambda: sa.insert(machines).values(status="OFFLINE"),
    columns=("id", "name", "location", "last_seen_at", "created_at", "updated_at"),
)
READ_MACHINE = fast.Query(
    lambda: (
        sa.select(machines.c.id, machines.c.name, machines.c.last_seen_at)
        .where(machines.c.id == sa.bindparam("mid"))
        .with_for_update()
    )
)
RENAME = fast.Query(
    lambda: (
        sa.update(machines)
        .where(machines.c.id == sa.bindparam("mid"), machines.c.status == "OFFLINE")
        .values(name=sa.bindparam("new_name"), location=None)
    )
)
SEEN = fast.Query(
    lambda: sa.select(machines.c.last_seen_at).where(machines.c.id == sa.bindparam("mid"))
)
OUTBOX_ROW = fast.Query(
    lambda: sa.insert(outbox).values(
        kind="sync",
        machine_id=sa.bindparam("mid"),
        topic=sa.bindparam("t"),
        payload="{}",
        qos=1,
        retain=False,
        created_at=sa.bindparam("now"),
    )
)


def _row(machine_id: str, seen: datetime) -> dict[str, object]:
    return {
        "id": machine_id,
        "name": "fast",
        "location": "here",
        "last_seen_at": seen,
        "created_at": seen,
        "updated_at": seen,
    }


async def test_a_query_reads_writes_and_converts_values_as_sqlalchemy_would(
    engine: AsyncEngine,
) -> None:
    seen = datetime(2026, 11, 27, 8, 30, 15, 123456, tzinfo=UTC)
    a, b, c = unique("fa"), unique("fb"), unique("fc")
    async with engine.begin() as conn:
        await INSERT_MACHINE.many(conn, [_row(a, seen), _row(b, seen + timedelta(seconds=1))])
        await INSERT_MACHINE.many(conn, [])
        assert await INSERT_MACHINE.count(conn, **_row(c, seen)) == 1
        row = await READ_MACHINE.first(conn, mid=a)
        assert row is not None
        assert dict(row) == {"id": a, "name": "fast", "last_seen_at": seen}
        assert row["last_seen_at"].tzinfo is not None
        assert await READ_MACHINE.first(conn, mid="nope") is None
        assert await SEEN.scalar(conn, mid=b) == seen + timedelta(seconds=1)
        assert await SEEN.scalar(conn, mid="nope") is None
        assert [r["id"] for r in await READ_MACHINE.all(conn, mid=b)] == [b]
        assert await RENAME.count(conn, mid=a, new_name="renamed") == 1
        assert await RENAME.count(conn, mid="nope", new_name="x") == 0
        first_id = await OUTBOX_ROW.insert_id(conn, mid=a, t="t/x", now=seen)
        second_id = await OUTBOX_ROW.insert_id(conn, mid=a, t="t/y", now=seen)
        assert isinstance(first_id, int) and second_id > first_id
    async with engine.connect() as conn:
        # Outside a transaction a query goes through SQLAlchemy: same answers.
        got = (await conn.execute(sa.select(machines).where(machines.c.id == a))).mappings().one()
        assert (got["name"], got["location"]) == ("renamed", None)
        assert await SEEN.scalar(conn, mid=a) == seen


async def test_a_query_first_in_its_transaction_is_inside_it(engine: AsyncEngine) -> None:
    """The first statement of a transaction may be a fast one: a rollback undoes it."""
    machine_id = unique("fr")
    async with engine.connect() as conn:
        async with conn.begin() as tx:
            await INSERT_MACHINE.count(conn, **_row(machine_id, datetime.now(UTC)))
            await tx.rollback()
        async with conn.begin():
            assert await READ_MACHINE.first(conn, mid=machine_id) is None


async def test_database_errors_are_sqlalchemys_and_roll_back(engine: AsyncEngine) -> None:
    machine_id = unique("fe")
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await INSERT_MACHINE.count(conn, **_row(machine_id, now))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await RENAME.count(conn, mid=machine_id, new_name="before the error")
            await INSERT_MACHINE.count(conn, **_row(machine_id, now))
    async with engine.begin() as conn:
        row = await READ_MACHINE.first(conn, mid=machine_id)
        assert row is not None and row["name"] == "fast"
    # A naive datetime is refused by the column type, before reaching the database.
    with pytest.raises(Exception, match="naive datetime"):
        async with engine.begin() as conn:
            await INSERT_MACHINE.count(conn, **_row(unique("fn"), datetime.now()))


async def test_statement_events_see_fast_queries(engine: AsyncEngine) -> None:
    seen: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with engine.begin() as conn:
            await READ_MACHINE.first(conn, mid="nope")
            await SEEN.scalar(conn, mid="nope")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len([s for s in seen if "machines" in s]) == 2


async def test_a_dead_connection_is_reported_as_invalidated(
    engine: AsyncEngine, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("the fast path runs on PostgreSQL; elsewhere this is SQLAlchemy's own")
    async with engine.connect() as victim:
        pid = await victim.scalar(sa.text("SELECT pg_backend_pid()"))
        await victim.commit()
        async with engine.connect() as admin:  # another pooled connection
            await admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await admin.commit()
        with pytest.raises(DBAPIError) as raised:
            async with victim.begin():
                await READ_MACHINE.first(victim, mid="nope")
    assert raised.value.connection_invalidated
    async with engine.begin() as conn:  # the pool gives a new connection
        assert await READ_MACHINE.first(conn, mid="nope") is None
