"""Async engine construction with per-database settings that keep invariants and speed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo)
    # No pool_pre_ping: a ping per checkout cost ~20 % of a hot-path statement. Connections
    # are recycled before servers or middleboxes drop idle ones, and a connection that dies
    # anyway invalidates the pool and is retried by `retry_on_disconnect` on the hot paths.
    # 20 kept open: under load the intake's 8 workers, 3 webhooks, the publisher, the timers and
    # the telemetry writer hold more than 10 at once, and a connection beyond `pool_size` is
    # closed when returned: a new one (TLS probe, type introspection) for the next burst.
    kwargs: dict[str, Any] = {"pool_size": 20, "max_overflow": 10, "pool_recycle": 1800}
    if parsed.get_backend_name() == "mysql":
        # REPEATABLE READ (MySQL's default) lets a locking read see rows a plain read did not;
        # READ COMMITTED keeps the conditional UPDATEs simple and the same as on PostgreSQL.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = create_async_engine(url, echo=echo, **kwargs)
    if parsed.get_backend_name() == "mysql":
        event.listen(engine.sync_engine, "handle_error", _mariadb_check_violation)
    return engine


# MariaDB reports a failed CHECK constraint as error 4025, which the driver raises as an
# OperationalError; it is a constraint violation like on every other database.
MARIADB_CHECK_VIOLATION = 4025


def _mariadb_check_violation(context: ExceptionContext) -> IntegrityError | None:
    original = context.original_exception
    args = getattr(original, "args", ())
    if args and args[0] == MARIADB_CHECK_VIOLATION:
        return IntegrityError(context.statement, context.parameters, original)
    return None


def _sqlite_engine(url: str, echo: bool) -> AsyncEngine:
    # One connection: SQLite allows one writer at a time anyway, and queueing for the pool is
    # far cheaper than SQLite's busy handler, which sleeps in growing steps under contention.
    engine = create_async_engine(
        url,
        echo=echo,
        connect_args={"timeout": 30},
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy (not the driver) decide when transactions begin, so we can BEGIN
        # IMMEDIATE: a read-then-write transaction then never fails to upgrade its lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if not url.endswith(":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def backend_name(engine: AsyncEngine) -> str:
    return engine.dialect.name


T = TypeVar("T")


async def retry_on_disconnect(transaction: Callable[[], Awaitable[T]]) -> T:
    """Run a whole transaction again, once, if its connection was found dead (the pool has
    then been invalidated). Safe for transactions whose effects are guarded by a unique key
    or a status check, in case the first attempt's COMMIT did reach the server."""
    try:
        return await transaction()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await transaction()
