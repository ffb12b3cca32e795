"""Hot statements: written once as SQLAlchemy Core, run lean on PostgreSQL.

A `Query` is one statement with named bind parameters, built once. On PostgreSQL (asyncpg)
inside a transaction it is compiled once for the dialect and then run as a prepared statement
on the transaction's own asyncpg connection (asyncpg keeps it prepared per connection): no
statement building, cache-key hashing, execution context, cursor emulation or greenlet hop per
call. Bind and result values still go through the columns' SQLAlchemy types (UTC datetimes,
JSON), and errors are raised as SQLAlchemy's own exceptions (with the pool invalidated on a
disconnect), so callers see the same thing on every database. Elsewhere (SQLite, MariaDB, or
outside a transaction) the same statement goes through `AsyncConnection.execute`.

Statement events (`before_cursor_execute`) fire as for any other statement, so whatever counts
or logs statements still sees these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

# A row by column name: a dict on the fast path, SQLAlchemy's RowMapping elsewhere.
Row = Mapping[Any, Any]
_Processor = Callable[[Any], Any] | None


class _Compiled:
    """A statement compiled for asyncpg: its SQL, how to order and convert the parameters,
    and how to convert each result column."""

    __slots__ = ("columns", "params", "sql")

    def __init__(
        self, statement: Executable, dialect: Dialect, columns: Sequence[str] | None
    ) -> None:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(columns) if columns is not None else None
        )
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            raise TypeError(f"not a positional SQL statement: {statement}")
        if any(b.expanding for b in compiled.binds.values()):
            raise TypeError("expanding (IN) parameters are not supported by fast.Query")
        self.sql: str = compiled.string
        processors = compiled._bind_processors
        # (caller's key or None, constant, processor) per positional parameter.
        self.params: list[tuple[str | None, Any, _Processor]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            # sa.bindparam("x") is required (the caller gives it); a literal is not.
            key = bind.key if bind.required else None
            value = bind.effective_value if key is None else None
            processor = cast(_Processor, processors.get(name))
            if key is None and processor is not None:
                value, processor = processor(value), None
            self.params.append((key, value, processor))
        self.columns: list[tuple[str, _Processor]] = [
            (column.keyname, column.type._cached_result_processor(dialect, None))
            for column in compiled._result_columns
        ]

    def args(self, given: Mapping[str, Any]) -> list[Any]:
        out = []
        for key, value, processor in self.params:
            if key is not None:
                value = given[key]
            out.append(value if processor is None or value is None else processor(value))
        return out

    def row(self, record: Sequence[Any]) -> dict[str, Any]:
        return {
            key: value if processor is None or value is None else processor(value)
            for (key, processor), value in zip(self.columns, record, strict=True)
        }


class Query:
    """One hot statement. `build` returns it (Core, with `sa.bindparam` for what varies; in an
    INSERT or UPDATE their names must differ from the columns'); it is called once, on first
    use. `columns`: for `sa.insert(table)` given whole rows, the columns every row names (the
    parameters are then named after the columns)."""

    __slots__ = ("_build", "_columns", "_compiled", "_statement")

    def __init__(
        self, build: Callable[[], Executable], *, columns: Sequence[str] | None = None
    ) -> None:
        self._build = build
        self._columns = tuple(columns) if columns is not None else None
        self._statement: Executable | None = None
        self._compiled: _Compiled | None = None

    @property
    def statement(self) -> Executable:
        if self._statement is None:
            self._statement = self._build()
        return self._statement

    async def all(self, conn: AsyncConnection, **params: Any) -> list[Row]:
        adapter = _adapter(conn)
        if adapter is None:
            return list((await conn.execute(self.statement, params)).mappings().all())
        compiled = self._for(conn.dialect)
        records = await _run(conn, adapter, compiled, compiled.args(params), "fetch")
        return [compiled.row(r) for r in records]

    async def first(self, conn: AsyncConnection, **params: Any) -> Row | None:
        adapter = _adapter(conn)
        if adapter is None:
            return (await conn.execute(self.statement, params)).mappings().first()
        compiled = self._for(conn.dialect)
        record = await _run(conn, adapter, compiled, compiled.args(params), "fetchrow")
        return None if record is None else compiled.row(record)

    async def scalar(self, conn: AsyncConnection, **params: Any) -> Any:
        adapter = _adapter(conn)
        if adapter is None:
            return (await conn.execute(self.statement, params)).scalar()
        compiled = self._for(conn.dialect)
        record = await _run(conn, adapter, compiled, compiled.args(params), "fetchrow")
        if record is None:
            return None
        processor = compiled.columns[0][1]
        value = record[0]
        return value if processor is None or value is None else processor(value)

    async def count(self, conn: AsyncConnection, **params: Any) -> int:
        """Rows changed (UPDATE, DELETE, INSERT without RETURNING)."""
        adapter = _adapter(conn)
        if adapter is None:
            return int((await conn.execute(self.statement, params)).rowcount)
        compiled = self._for(conn.dialect)
        status: str = await _run(conn, adapter, compiled, compiled.args(params), "execute")
        return int(status.rsplit(" ", 1)[-1])

    async def insert_id(self, conn: AsyncConnection, **params: Any) -> Any:
        """An INSERT of one row: the primary key the database gave it."""
        adapter = _adapter(conn)
        if adapter is None:
            result = await conn.execute(self.statement, params)
            (key,) = result.inserted_primary_key or (None,)
            return key
        compiled = self._for(conn.dialect)
        record = await _run(conn, adapter, compiled, compiled.args(params), "fetchrow")
        return None if record is None else record[0]

    async def many(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """The statement once per row (an INSERT of several rows), one round trip."""
        if not rows:
            return
        adapter = _adapter(conn)
        if adapter is None:
            await conn.execute(self.statement, list(rows))
            return
        compiled = self._for(conn.dialect)
        await _run(conn, adapter, compiled, [compiled.args(r) for r in rows], "executemany")

    def _for(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled(self.statement, dialect, self._columns)
        return self._compiled


def insert_values(table: sa.Table, columns: Sequence[str], prefix: str) -> sa.Insert:
    """INSERT of one row whose parameters are named `<prefix><column>` (several INSERTs of
    one statement, e.g. in WITH, then never share a parameter by accident)."""
    return sa.insert(table).values(
        {c: sa.bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in columns}
    )


def prefixed(prefix: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in row.items()}


def writes_in_ctes(conn: AsyncConnection) -> bool:
    """Whether this database runs INSERT/UPDATE inside WITH (PostgreSQL): then several writes
    that depend on nothing read in between go in one statement."""
    return conn.dialect.name == "postgresql"


def _adapter(conn: AsyncConnection) -> Any:
    """SQLAlchemy's adapter of the asyncpg connection under `conn`, if this is PostgreSQL
    inside a transaction."""
    if conn.dialect.driver != "asyncpg":
        return None
    sync = conn.sync_connection
    if sync is None or not sync.in_transaction():
        return None
    fairy = sync._dbapi_connection
    if fairy is None or not fairy.is_valid:
        return None
    return fairy.dbapi_connection


async def _run(
    conn: AsyncConnection, adapter: Any, compiled: _Compiled, args: list[Any], how: str
) -> Any:
    sync: Connection = conn.sync_connection  # type: ignore[assignment]
    if sync._has_events or sync.engine._has_events:
        sync.dispatch.before_cursor_execute(
            sync, None, compiled.sql, args, None, how == "executemany"
        )
    try:
        async with adapter._execute_mutex:
            if adapter._transaction is None:
                # SQLAlchemy's asyncpg adapter begins the transaction on its first statement.
                await adapter._start_transaction()
            driver = adapter._connection
            if how == "executemany":
                return await driver.executemany(compiled.sql, args)
            return await getattr(driver, how)(compiled.sql, *args)
    except Exception as error:
        await _raise_translated(sync, adapter, error, compiled.sql, args)
        raise  # pragma: no cover - _raise_translated always raises


async def _raise_translated(
    sync: Connection, adapter: Any, error: Exception, sql: str, args: list[Any]
) -> None:
    """Raise `error` as SQLAlchemy would have (IntegrityError, OperationalError, … with
    `connection_invalidated` and the pool invalidated on a disconnect)."""
    try:
        adapter._handle_exception(error)  # raises the driver-level (DBAPI) exception
    except Exception as dbapi_error:
        await greenlet_spawn(sync._handle_dbapi_exception, dbapi_error, sql, args, None, None)
    raise error
