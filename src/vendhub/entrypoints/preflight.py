"""Startup checks that turn a misconfiguration into one line saying what is wrong and the fix."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.migrate import known_revisions
from vendhub.adapters.mqtt import embedded
from vendhub.config import Settings

CONNECT_TIMEOUT_S = 10.0


class StartupError(RuntimeError):
    """A one-line, operator-facing reason the command cannot run, with the fix in it."""


def redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def check_sqlite_directory(url: str) -> None:
    """SQLite creates the file but not its directory; say so instead of 'unable to open'."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    directory = Path(parsed.database).expanduser().resolve().parent
    if not directory.is_dir():
        raise StartupError(
            f"the SQLite database's directory {directory} does not exist: create it "
            f"(mkdir -p {directory}) or set SQLITE_PATH / DATABASE_URL to a path that exists"
        )


def check_port_free(host: str, port: int, setting: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another process "
                f"uses it; stop it or set {setting} to a free port"
            ) from None


def describe_database_error(exc: BaseException, url: str) -> str:
    """The first line of the driver's own reason, with where we tried to connect."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = (str(original).strip().splitlines() or [type(original).__name__])[0]
    if isinstance(original, TimeoutError) or not reason:
        reason = f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    return (
        f"cannot use the database at {redacted(url)}: {reason}. Check DATABASE_URL (host, port, "
        "database name, credentials) and that the database server is running"
    )


async def check_database(url: str) -> None:
    """Reachable, and migrated to a revision this release knows (or a newer one)."""
    check_sqlite_directory(url)
    try:
        engine = create_engine(url)
    except (NoSuchModuleError, ValueError, SQLAlchemyError) as exc:
        raise StartupError(f"DATABASE_URL {redacted(url)} is not usable: {exc}") from None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S), engine.connect() as conn:
            has_table = await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            revision = (
                (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
                if has_table
                else None
            )
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        raise StartupError(describe_database_error(exc, url)) from None
    finally:
        await engine.dispose()
    revisions = known_revisions()
    if revision is None:
        raise StartupError(
            f"the database at {redacted(url)} has no schema yet: run `vendhub db upgrade` "
            "(or start with `vendhub serve --migrate`)"
        )
    # A revision we do not know is a newer release's: its migrations keep the previous
    # release working (docs/deployment.md, upgrade order), so an old replica may still run.
    if revision in revisions and revision != revisions[-1]:
        raise StartupError(
            f"the database at {redacted(url)} is at migration {revision}, this release needs "
            f"{revisions[-1]}: run `vendhub db upgrade`"
        )


def check_settings(settings: Settings) -> None:
    """What `serve` can check before it binds anything; raises StartupError."""
    check_port_free(settings.host, settings.port, "PORT")
    if settings.embedded_broker:
        try:
            embedded.check_port_free(settings.mqtt_embedded_bind, settings.mqtt_embedded_port)
        except embedded.BrokerPortInUse as exc:
            raise StartupError(str(exc)) from None
