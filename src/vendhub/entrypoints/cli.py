"""The `vendhub` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from vendhub.config import ConfigError, Settings

app = typer.Typer(
    help="vendhub: cashless vending fleet backend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Operator accounts.", no_args_is_help=True)
mqtt_app = typer.Typer(help="MQTT tools (the seed's test-mqtt.js).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(mqtt_app, name="mqtt")
console = Console(stderr=True)
T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the schema (migrations ship inside the package)."""
    from vendhub.adapters.db.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at {_redacted(settings.resolved_database_url)} is at {revision}")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def seed(
    demo: Annotated[bool, typer.Option("--demo", help="the seed's sample shop")] = False,
) -> None:
    """Load sample data: machine VM01, six slots, Indonesian snacks and drinks."""
    if not demo:
        console.print("nothing to do; pass --demo")
        raise typer.Exit(1)
    from vendhub.bootstrap import build
    from vendhub.services.demo import seed_demo

    async def run() -> bool:
        container = build(_settings())
        try:
            return await seed_demo(container.ctx, container.settings.machine_id)
        finally:
            await container.engine.dispose()

    seeded = asyncio.run(run())
    console.print("demo data loaded" if seeded else "demo machine exists already; nothing changed")


@users_app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(prompt=True)],
    role: str = "SUPER_ADMIN",
) -> None:
    """Create an operator account (SUPER_ADMIN by default).

    The password comes from VENDHUB_USER_PASSWORD or a hidden prompt, never from an argument
    (arguments are visible to every local user in `ps`).
    """
    import os

    from vendhub.bootstrap import build
    from vendhub.services.auth import Role, create_user
    from vendhub.services.errors import Conflict, InvalidRequest

    if role not in Role.__members__:
        console.print(f"[red]unknown role {role}; one of {', '.join(Role.__members__)}[/red]")
        raise typer.Exit(2)
    password = os.environ.get("VENDHUB_USER_PASSWORD") or typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )

    async def run() -> str:
        container = build(_settings())
        try:
            return await create_user(container.ctx, username, password, Role(role))
        finally:
            await container.engine.dispose()

    try:
        user_id = asyncio.run(run())
    except (Conflict, InvalidRequest) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"created {role} {username} ({user_id})")


@app.command()
def serve(
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="migrate, seed, run simulated machine VM01 and place one demo order"
        ),
    ] = False,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    migrate: Annotated[bool, typer.Option(help="run `db upgrade` first")] = False,
) -> None:
    """API + MQTT worker + background jobs, in one process."""
    from vendhub.entrypoints.serve import run_server

    settings = _settings(host=host, port=port)
    _logging(settings.log_level)
    if demo and settings.embedded_broker:
        settings = _free_embedded_port(settings)
    code = run_async(run_server(settings, demo=demo, migrate=migrate or demo))
    raise typer.Exit(code)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (it comes with uvicorn[standard]): the event loop is the hot
    path for MQTT intake, and uvloop's is several times cheaper per message."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _free_embedded_port(settings: Settings) -> Settings:
    """The demo must start anywhere: if the broker port is taken, use a free one and say so."""
    with socket.socket() as sock:
        try:
            sock.bind((settings.mqtt_embedded_bind, settings.mqtt_embedded_port))
            return settings
        except OSError:
            sock.bind((settings.mqtt_embedded_bind, 0))
            free = sock.getsockname()[1]
    console.print(
        f"port {settings.mqtt_embedded_port} is taken (another broker?); the demo's "
        f"embedded broker uses port {free} instead"
    )
    return settings.model_copy(update={"mqtt_embedded_port": free})


def _mqtt_target(settings: Settings) -> tuple[str, int, str | None, str | None, bool]:
    from vendhub.bootstrap import mqtt_config

    cfg = mqtt_config(settings)
    return cfg.host, cfg.port, cfg.username, cfg.password, cfg.tls


@mqtt_app.command("subscribe")
def mqtt_subscribe(
    topic_filter: Annotated[str | None, typer.Argument(help="default: {prefix}/#")] = None,
    count: Annotated[int, typer.Option(help="stop after N messages (0 = forever)")] = 0,
) -> None:
    """Print every message under the prefix (like `node test-mqtt.js subscribe`)."""
    from vendhub.entrypoints.mqtt_tools import subscribe

    settings = _settings()
    asyncio.run(
        subscribe(_mqtt_target(settings), topic_filter or f"{settings.mqtt_topic_prefix}/#", count)
    )


@mqtt_app.command("publish")
def mqtt_publish(
    machine_id: Annotated[str | None, typer.Option()] = None,
    topic_name: Annotated[str | None, typer.Option("--topic")] = None,
    payload: Annotated[str | None, typer.Option(help="JSON; default: sample telemetry")] = None,
) -> None:
    """Publish test telemetry (like `node test-mqtt.js publish`)."""
    from vendhub.entrypoints.mqtt_tools import publish, sample_telemetry

    settings = _settings()
    machine = machine_id or settings.machine_id
    target = topic_name or f"{settings.mqtt_topic_prefix}/{machine}/telemetry"
    body = payload.encode() if payload else json.dumps(sample_telemetry()).encode()
    asyncio.run(publish(_mqtt_target(settings), target, body))
    console.print(f"published to {target}: {body.decode()}")


@mqtt_app.command("simulate")
def mqtt_simulate(
    order_id: str,
    slot: Annotated[int, typer.Option()] = 1,
    machine_id: Annotated[str | None, typer.Option()] = None,
    fail: Annotated[bool, typer.Option(help="report a jam instead of a drop")] = False,
) -> None:
    """Publish a dispense result for ORDER_ID (like `node test-mqtt.js simulate ORDER_ID`)."""
    from vendhub.entrypoints.mqtt_tools import publish

    settings = _settings()
    machine = machine_id or settings.machine_id
    result = {
        "orderId": order_id,
        "slot": slot,
        "success": not fail,
        "dropDetected": not fail,
        "durationMs": 1850,
        "error": "JAM" if fail else None,
    }
    target = f"{settings.mqtt_topic_prefix}/{machine}/dispense_result"
    asyncio.run(publish(_mqtt_target(settings), target, json.dumps(result).encode()))
    console.print(f"published to {target}: {json.dumps(result)}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sim(ctx: typer.Context) -> None:
    """Simulated machines speaking protocol.md (see `vendhub sim --help`)."""
    from vendhub.sim.__main__ import main as sim_main

    sim_main(list(ctx.args))


@app.command()
def bench(
    database_url: Annotated[
        str | None, typer.Option(help="default: a new SQLite file in a temp dir")
    ] = None,
    broker: Annotated[str, typer.Option(help="host:port of a running broker")] = "127.0.0.1:1883",
    parts: Annotated[str, typer.Option(help="comma list")] = "telemetry,orders,webhook",
    telemetry_messages: int = 20_000,
    orders: int = 1000,
    machines: int = 50,
) -> None:
    """Measure telemetry msgs/s stored, orders/s completed, webhook→command latency."""
    import tempfile
    from pathlib import Path

    from vendhub.bench import BenchConfig, run

    url = database_url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    from vendhub.config import normalise_database_url

    host, _, port = broker.rpartition(":")
    cfg = BenchConfig(
        database_url=normalise_database_url(url),
        broker_host=host or "127.0.0.1",
        broker_port=int(port),
        telemetry_messages=telemetry_messages,
        orders=orders,
        machines=machines,
    )
    logging.basicConfig(level="WARNING")
    figures = run_async(run(cfg, set(parts.split(","))))
    print(f"database: {_redacted(cfg.database_url)}")
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")


def main() -> None:
    app()
