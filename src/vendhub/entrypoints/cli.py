"""The `vendhub` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

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
broker_app = typer.Typer(help="The Mosquitto broker devices connect to.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
# soft_wrap: Rich would otherwise break long lines (URLs, JSON) at 80 columns when piped.
console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def say(text: str) -> None:
    """To stderr as-is: no markup (JSON has brackets), no highlighting, no wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _debug() -> bool:
    return os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG"


@contextlib.contextmanager
def one_line_errors(database_url: str | None = None) -> Iterator[None]:
    """Any failure becomes one line naming the fix; the traceback only with LOG_LEVEL=DEBUG."""
    from sqlalchemy.exc import SQLAlchemyError

    from vendhub.entrypoints.preflight import StartupError, describe_database_error

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except StartupError as exc:
        if _debug():
            _report(exc, f"error: {exc}")
        else:
            say(f"error: {exc}")  # says all there is; a traceback would add nothing
        raise typer.Exit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        if database_url is None or not isinstance(exc, SQLAlchemyError | ConnectionError):
            _report(exc, f"error: {_first_line(exc)}")
            raise typer.Exit(1) from None
        _report(exc, f"error: {describe_database_error(exc, database_url)}")
        raise typer.Exit(2) from None
    except Exception as exc:
        _report(exc, f"error: {type(exc).__name__}: {_first_line(exc)}")
        raise typer.Exit(1) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _report(exc: BaseException, line: str) -> None:
    if _debug():
        say("".join(traceback.format_exception(exc)).rstrip())
    say(line if _debug() else f"{line} (LOG_LEVEL=DEBUG shows the traceback)")


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ConfigError, ValueError) as exc:
        # One line, never wrapped, no traceback: it ends up in a service manager's log.
        say(f"configuration error: {config_error_line(exc)}")
        raise typer.Exit(2) from None


def _ready_database(settings: Settings) -> None:
    """Reachable and migrated, or one line saying which and how to fix it."""
    from vendhub.entrypoints.preflight import check_database

    with one_line_errors(settings.resolved_database_url):
        asyncio.run(check_database(settings.resolved_database_url))


def config_error_line(exc: Exception) -> str:
    """pydantic's multi-line report folded into one line: `FIELD: problem; …`."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return " ".join(str(exc).split())
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"]).upper()
        parts.append(f"{where}: {message}" if where else message)
    return " ".join("; ".join(parts).split())


def _logging(level: str, tag: str = "") -> None:
    """`tag` names the worker of `serve --workers N` in each line."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)-7s {tag + ' ' if tag else ''}%(name)s: %(message)s",
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the schema (migrations ship inside the package)."""
    from vendhub.adapters.db.migrate import upgrade
    from vendhub.entrypoints.preflight import check_sqlite_directory

    settings = _settings()
    url = settings.resolved_database_url
    with one_line_errors(url):
        check_sqlite_directory(url)
        upgrade(url, revision)
    say(f"database at {_redacted(url)} is at {revision}")


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

    settings = _settings()
    _ready_database(settings)

    async def run() -> bool:
        container = build(settings)
        try:
            return await seed_demo(container.ctx, container.settings.machine_id)
        finally:
            await container.engine.dispose()

    with one_line_errors(settings.resolved_database_url):
        seeded = asyncio.run(run())
    say("demo data loaded" if seeded else "demo machine exists already; nothing changed")


@users_app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(prompt=True)],
    role: str = "SUPER_ADMIN",
) -> None:
    """Create an operator account (SUPER_ADMIN by default).

    The password comes from VENDHUB_USER_PASSWORD or a hidden prompt, never from an argument
    (arguments are visible to every local user in `ps`).
    """
    from vendhub.bootstrap import build
    from vendhub.services.auth import Role, create_user
    from vendhub.services.errors import Conflict, InvalidRequest

    if role not in Role.__members__:
        console.print(f"[red]unknown role {role}; one of {', '.join(Role.__members__)}[/red]")
        raise typer.Exit(2)
    password = os.environ.get("VENDHUB_USER_PASSWORD") or typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )

    settings = _settings()
    _ready_database(settings)

    async def run() -> str:
        container = build(settings)
        try:
            return await create_user(container.ctx, username, password, Role(role))
        finally:
            await container.engine.dispose()

    with one_line_errors(settings.resolved_database_url):
        try:
            user_id = asyncio.run(run())
        except (Conflict, InvalidRequest) as exc:
            say(f"error: {exc}")
            raise typer.Exit(1) from None
    say(f"created {role} {username} ({user_id})")


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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="processes serving the same port (default SERVE_WORKERS, 1); more than 1 "
            "needs PostgreSQL/MariaDB and an external broker",
        ),
    ] = None,
) -> None:
    """API + MQTT worker + background jobs, in one process (or --workers N of them)."""
    from vendhub.entrypoints.serve import check_workers, run_server, supervise

    settings = _settings(host=host, port=port, serve_workers=workers)
    _logging(settings.log_level, tag="supervisor" if settings.serve_workers > 1 else "")
    if settings.serve_workers > 1:
        with one_line_errors(settings.resolved_database_url):
            check_workers(settings, settings.serve_workers, demo=demo)
            code = supervise(settings, settings.serve_workers, migrate=migrate)
        raise typer.Exit(code)
    if demo and settings.embedded_broker:
        settings = _free_embedded_port(settings)
    with one_line_errors(settings.resolved_database_url), _embedded_broker_recorded(settings):
        code = run_async(run_server(settings, demo=demo, migrate=migrate or demo))
    raise typer.Exit(code)


# Where `serve` with the embedded broker records its address, so that `vendhub sim` and
# `vendhub mqtt …` run from the same directory find the demo's broker even on a moved port.
BROKER_FILE = ".vendhub-broker"


@contextlib.contextmanager
def _embedded_broker_recorded(settings: Settings) -> Iterator[None]:
    from pathlib import Path

    if not settings.embedded_broker:
        yield
        return
    path = Path.cwd() / BROKER_FILE
    host = settings.mqtt_embedded_bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    with contextlib.suppress(OSError):
        path.write_text(f"{host}:{settings.mqtt_embedded_port}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def tool_mqtt_config(settings: Settings) -> Any:
    """The broker the tools talk to: MQTT_BROKER_URL, or the embedded broker `serve` runs
    (its recorded address, else MQTT_EMBEDDED_BIND:MQTT_EMBEDDED_PORT)."""
    import dataclasses
    from pathlib import Path

    from vendhub.bootstrap import mqtt_config

    cfg = mqtt_config(settings)
    recorded = Path.cwd() / BROKER_FILE
    if settings.embedded_broker and recorded.is_file():
        host, _, port = recorded.read_text().strip().rpartition(":")
        if host and port.isdigit():
            cfg = dataclasses.replace(cfg, host=host, port=int(port))
    return cfg


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
    cfg = tool_mqtt_config(settings)
    return cfg.host, cfg.port, cfg.username, cfg.password, cfg.tls


@contextlib.contextmanager
def _broker_errors(settings: Settings) -> Iterator[None]:
    import aiomqtt

    with one_line_errors():
        try:
            yield
        except aiomqtt.MqttError as exc:
            host, port, *_ = _mqtt_target(settings)
            say(
                f"error: cannot use the MQTT broker at {host}:{port}: {exc}. Check "
                "MQTT_BROKER_URL (and MQTT_USERNAME / MQTT_PASSWORD), or start `vendhub serve` "
                "for the embedded one"
            )
            raise typer.Exit(2) from None


@mqtt_app.command("subscribe")
def mqtt_subscribe(
    topic_filter: Annotated[str | None, typer.Argument(help="default: {prefix}/#")] = None,
    count: Annotated[int, typer.Option(help="stop after N messages (0 = forever)")] = 0,
) -> None:
    """Print every message under the prefix (like `node test-mqtt.js subscribe`)."""
    from vendhub.entrypoints.mqtt_tools import subscribe

    settings = _settings()
    with _broker_errors(settings):
        asyncio.run(
            subscribe(
                _mqtt_target(settings), topic_filter or f"{settings.mqtt_topic_prefix}/#", count
            )
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
    with _broker_errors(settings):
        asyncio.run(publish(_mqtt_target(settings), target, body))
    say(f"published to {target}: {body.decode()}")


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
    with _broker_errors(settings):
        asyncio.run(publish(_mqtt_target(settings), target, json.dumps(result).encode()))
    say(f"published to {target}: {json.dumps(result)}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sim(ctx: typer.Context) -> None:
    """Simulated machines speaking protocol.md (see `vendhub sim --help`); the broker and
    topic prefix default to the configuration (MQTT_BROKER_URL, MQTT_TOPIC_PREFIX)."""
    from vendhub.sim.__main__ import main as sim_main

    settings = _settings()
    cfg = tool_mqtt_config(settings)
    defaults = ["--host", cfg.host, "--port", str(cfg.port)]
    defaults += ["--prefix", settings.mqtt_topic_prefix]
    if cfg.username:
        defaults += ["--username", cfg.username]
    if cfg.password:
        defaults += ["--password", cfg.password]
    if cfg.tls:
        defaults.append("--tls")

    def register(machine_ids: list[str], stock: int) -> None:
        _register_machines(settings, machine_ids, stock)

    with contextlib.suppress(KeyboardInterrupt):
        sim_main([*defaults, *ctx.args], register=register)


def _register_machines(settings: Settings, machine_ids: list[str], stock: int) -> None:
    """`vendhub sim --register`: the machines, slots and stock, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from vendhub.bootstrap import build
    from vendhub.services.demo import register_machines

    _ready_database(settings)

    async def run() -> int:
        container = build(settings)
        columns = (TextColumn("registering machines"), BarColumn(), MofNCompleteColumn())
        try:
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("register", total=len(machine_ids))
                return await register_machines(
                    container.ctx, machine_ids, stock, on_each=lambda: bar.advance(task)
                )
        finally:
            await container.engine.dispose()

    with one_line_errors(settings.resolved_database_url):
        created = asyncio.run(run())
    say(f"registered {created} new machine(s); {len(machine_ids) - created} existed already")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def devicecheck(ctx: typer.Context) -> None:
    """Check a live device against protocol.md (see `vendhub devicecheck --help`)."""
    from vendhub.devicecheck.__main__ import main as devicecheck_main

    raise typer.Exit(devicecheck_main(list(ctx.args)))


@app.command()
def bench(
    database_url: Annotated[
        str | None, typer.Option(help="default: a new SQLite file in a temp dir")
    ] = None,
    broker: Annotated[str, typer.Option(help="host:port of a running broker")] = "127.0.0.1:1883",
    parts: Annotated[
        str, typer.Option(help="comma list of telemetry,statements,orders,orders2,rate")
    ] = "telemetry,statements,orders,orders2,rate",
    telemetry_messages: int = 20_000,
    orders: int = 1000,
    machines: int = 100,
    rate: Annotated[float, typer.Option(help="webhooks/s of the steady-rate run")] = 100.0,
) -> None:
    """Measure telemetry, orders/s, webhook→command latency (in flight and at a steady rate),
    statements and CPU per order, 1 and 2 processes; each beside its ceiling."""
    import tempfile
    from pathlib import Path

    from vendhub.bench import BenchConfig, run, table

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
        rate=rate,
    )
    logging.basicConfig(level="WARNING")
    figures = run_async(run(cfg, set(parts.split(","))))
    print(f"database: {_redacted(cfg.database_url)}")
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")
    print()
    print("\n".join(table(figures, cfg.webhooks)))


@broker_app.command("config")
def broker_config(
    directory: Annotated[Path, typer.Option("--dir", help="where to write the files")],
    port: Annotated[int, typer.Option(help="devices' listener")] = 1883,
    bind: Annotated[str, typer.Option(help="devices' listener address")] = "0.0.0.0",
    backend_port: Annotated[
        int | None, typer.Option(help="the backend's listener (default: --port + 1)")
    ] = None,
    backend_bind: Annotated[str, typer.Option(help="the backend's listener address")] = "127.0.0.1",
    user: Annotated[
        str, typer.Option(help="system user Mosquitto drops to when started as root")
    ] = "mosquitto",
    certfile: Annotated[
        Path | None, typer.Option(help="PEM certificate: devices connect with mqtts://")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(help="PEM key of --certfile")] = None,
) -> None:
    """Write DIR/mosquitto.conf, password and ACL files from the database's credentials.

    Run it again and send SIGHUP to Mosquitto to apply new or rotated credentials."""
    from vendhub.adapters.mqtt import mosquitto
    from vendhub.bootstrap import build, mqtt_config
    from vendhub.services.broker_credentials import BrokerOptions, broker_layout

    settings = _settings()
    cfg = mqtt_config(settings)
    options = BrokerOptions(
        directory=directory,
        backend_username=cfg.username or settings.mqtt_username or "",
        backend_password=cfg.password or settings.mqtt_password or "",
        # Every replica's default id starts with "vendhub-" (Settings.client_id).
        backend_client_id=settings.mqtt_client_id or "vendhub-",
        port=port,
        bind=bind,
        backend_port=backend_port if backend_port is not None else port + 1,
        backend_bind=backend_bind,
        user=user,
        certfile=certfile,
        keyfile=keyfile,
    )

    async def run() -> mosquitto.BrokerLayout:
        container = build(settings)
        try:
            return await broker_layout(container.ctx, options)
        finally:
            await container.engine.dispose()

    try:
        layout = asyncio.run(run())
        mosquitto.write(layout)
    except mosquitto.BrokerConfigError as exc:
        console.print(f"[red]broker config:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(
        f"wrote {directory / mosquitto.CONF} ({len(layout.machines)} machine login(s)); "
        f"devices on {bind}:{port}, backend on {backend_bind}:{options.backend_port}; "
        "after a change send SIGHUP to mosquitto",
        soft_wrap=True,
    )


def main() -> None:
    app()
