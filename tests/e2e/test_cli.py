"""The `vendhub` console script, run as a user would: subprocesses, another directory."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import MQTT_HOST, MQTT_PORT, free_port, unique
from tests.e2e.conftest import VENDHUB, clean_env, vendhub
from vendhub.adapters.db.engine import create_engine
from vendhub.protocol.messages import parse_result
from vendhub.services import auth
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Unauthorized

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def sqlite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}", **extra)


def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no project files in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return cwd


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_db_upgrade_from_another_directory_creates_the_schema(tmp_path: Path) -> None:
    cwd = elsewhere(tmp_path)
    done = vendhub("db", "upgrade", env=sqlite_env(tmp_path), cwd=cwd)
    assert done.returncode == 0, done.stderr
    expected = {"machines", "slots", "products", "orders", "dispenses", "outbox", "refunds"}
    assert expected | {"alembic_version", "telemetry", "users"} <= tables(tmp_path / "cli.db")
    assert not list(cwd.iterdir())  # nothing written where it ran


def test_seed_demo_twice_is_idempotent(tmp_path: Path) -> None:
    env, cwd, db = sqlite_env(tmp_path), elsewhere(tmp_path), tmp_path / "cli.db"
    assert vendhub("db", "upgrade", env=env, cwd=cwd).returncode == 0
    first = vendhub("seed", "--demo", env=env, cwd=cwd)
    assert first.returncode == 0, first.stderr
    counts = {t: count(db, t) for t in ("machines", "products", "slots", "stock_logs")}
    assert counts == {"machines": 1, "products": 6, "slots": 6, "stock_logs": 6}
    second = vendhub("seed", "--demo", env=env, cwd=cwd)
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stderr
    assert {t: count(db, t) for t in counts} == counts
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM machines").fetchall() == [("VM01",)]


def typed_in(
    args: list[str], typed: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`vendhub <args>` with `typed` on its standard input (answers to its prompts)."""
    return subprocess.run(
        [*VENDHUB, *args],
        env=env,
        cwd=cwd,
        input=typed,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_users_create_admin_takes_the_password_from_env_or_prompt_never_an_argument(
    tmp_path: Path,
) -> None:
    env, cwd = sqlite_env(tmp_path), elsewhere(tmp_path)
    assert vendhub("db", "upgrade", env=env, cwd=cwd).returncode == 0
    as_argument = vendhub(
        "users", "create-admin", "--username", "opsx", "--password", "Tr0ub4dor&3", env=env, cwd=cwd
    )
    assert as_argument.returncode == 2 and "--password" in as_argument.stderr
    done = vendhub(
        "users",
        "create-admin",
        "--username",
        "opsx",
        env={**env, "VENDHUB_USER_PASSWORD": "Tr0ub4dor&3"},
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    again = vendhub(
        "users",
        "create-admin",
        "--username",
        "opsx",
        env={**env, "VENDHUB_USER_PASSWORD": "other-pass"},
        cwd=cwd,
    )
    assert again.returncode == 1 and "Traceback" not in again.stderr
    prompted = typed_in(
        ["users", "create-admin", "--username", "tech1", "--role", "TECHNICIAN"],
        "prompted-pass-1\nprompted-pass-1\n",
        env,
        cwd,
    )
    assert prompted.returncode == 0, prompted.stderr
    assert "prompted-pass-1" not in prompted.stdout + prompted.stderr

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    try:
        ctx = ServiceContext(engine=engine)
        user = await auth.authenticate(ctx, "opsx", "Tr0ub4dor&3")
        assert (user["username"], user["role"]) == ("opsx", "SUPER_ADMIN")
        with pytest.raises(Unauthorized):
            await auth.authenticate(ctx, "opsx", "other-pass")
        tech = await auth.authenticate(ctx, "tech1", "prompted-pass-1")
        assert tech["role"] == "TECHNICIAN"
    finally:
        await engine.dispose()


async def published_by(args: list[str], env: dict[str, str], topic: str) -> dict[str, Any]:
    """Run `vendhub <args>` while subscribed to `topic`; the one message it published."""
    async with aiomqtt.Client(
        MQTT_HOST, MQTT_PORT, identifier=unique("cli-sub-"), protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(topic, qos=1)
        process = await asyncio.create_subprocess_exec(
            *VENDHUB,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()

        async def first() -> aiomqtt.Message:
            async for message in client.messages:
                return message
            raise AssertionError("subscription ended")

        message = await asyncio.wait_for(first(), 10)
    assert str(message.topic) == topic
    assert isinstance(message.payload, bytes)
    body: dict[str, Any] = json.loads(message.payload)
    return body


def mqtt_env(tmp_path: Path, prefix: str) -> dict[str, str]:
    return sqlite_env(
        tmp_path,
        MQTT_BROKER_URL=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        MQTT_TOPIC_PREFIX=prefix,
    )


async def test_mqtt_publish_sends_sample_telemetry_for_the_machine(tmp_path: Path) -> None:
    prefix = unique("cli")
    body = await published_by(
        ["mqtt", "publish", "--machine-id", "VM01"],
        mqtt_env(tmp_path, prefix),
        f"{prefix}/VM01/telemetry",
    )
    assert isinstance(body["temperature"], float)
    assert body["slots"] and {"id", "level"} <= set(body["slots"][0])


async def test_mqtt_simulate_publishes_a_seed_shaped_dispense_result(tmp_path: Path) -> None:
    prefix = unique("cli")
    body = await published_by(
        ["mqtt", "simulate", "ORD-20261127-8F2A1C3D", "--slot", "3"],
        mqtt_env(tmp_path, prefix),
        f"{prefix}/VM01/dispense_result",
    )
    result = parse_result(json.dumps(body).encode())
    assert (result.order_id, result.slot, result.dropped) == ("ORD-20261127-8F2A1C3D", 3, True)
    assert result.command_id is None  # the seed's devices send none
    assert {"orderId", "slot", "success", "dropDetected", "durationMs", "error"} <= set(body)


def test_serve_with_the_embedded_broker_port_taken_exits_with_one_clear_line(
    tmp_path: Path,
) -> None:
    env = sqlite_env(
        tmp_path, MQTT_EMBEDDED_PORT=str(MQTT_PORT), PORT=str(free_port()), HOST="127.0.0.1"
    )
    assert "MQTT_BROKER_URL" not in env  # the embedded default
    done = vendhub("serve", "--migrate", env=env, cwd=elsewhere(tmp_path), timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    [line] = [ln for ln in output.splitlines() if "MQTT_BROKER_URL" in ln]
    assert "MQTT_EMBEDDED_PORT" in line and str(MQTT_PORT) in line


def test_production_with_the_default_jwt_secret_refuses_to_start(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, APP_ENV="production", PORT=str(free_port()))
    done = vendhub("serve", env=env, cwd=elsewhere(tmp_path), timeout=30)
    assert done.returncode == 2
    assert "JWT_SECRET" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("app_env", ["prod", "staging", "production-eu"])
def test_serve_with_an_unknown_app_env_exits_with_one_line_and_no_traceback(
    tmp_path: Path, app_env: str
) -> None:
    env = sqlite_env(tmp_path, APP_ENV=app_env, PORT=str(free_port()))
    done = vendhub("serve", env=env, cwd=elsewhere(tmp_path), timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert f"APP_ENV='{app_env}' is not one of development, test, production" in line


def test_serve_in_production_on_the_embedded_broker_names_every_problem_in_one_line(
    tmp_path: Path,
) -> None:
    env = sqlite_env(
        tmp_path,
        NODE_ENV=" Production ",
        PORT=str(free_port()),
        PAYMENT_PROVIDER="midtrans",
        MIDTRANS_SERVER_KEY="SB-Mid-server-abc",
        MIDTRANS_IS_PRODUCTION="true",
    )
    done = vendhub("serve", env=env, cwd=elsewhere(tmp_path), timeout=30)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    for problem in ("embedded MQTT broker", "JWT_SECRET", "ADMIN_PASSWORD", "MIDTRANS_SERVER_KEY"):
        assert problem in line


def test_vendhub_sim_hands_its_arguments_to_the_simulator(tmp_path: Path) -> None:
    done = vendhub("sim", "--help", env=clean_env(), cwd=elsewhere(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "--machines" in done.stdout and "--fault" in done.stdout


async def test_mqtt_subscribe_prints_messages_under_the_prefix(tmp_path: Path) -> None:
    prefix = unique("cli")
    proc = await asyncio.create_subprocess_exec(
        *VENDHUB,
        "mqtt",
        "subscribe",
        "--count",
        "1",
        env=mqtt_env(tmp_path, prefix),
        cwd=elsewhere(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)  # "subscribed to …"
        assert f"{prefix}/#" in line.decode()
        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=unique("pub-")) as client:
            await client.publish(f"{prefix}/VM01/status", b'{"status":"ONLINE"}', qos=1)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert f'{prefix}/VM01/status: {{"status":"ONLINE"}}' in out.decode()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_serve_demo_walks_one_order_to_completed_on_the_embedded_defaults(
    tmp_path: Path,
) -> None:
    """The README's first command, minus the venv: SQLite file, embedded broker, demo shop,
    simulated VM01, one order; then a clean SIGTERM."""
    import signal
    import subprocess
    import time

    env = clean_env(PORT=str(free_port()), MQTT_EMBEDDED_PORT=str(free_port()))
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*VENDHUB, "serve", "--demo"],
            env=env,
            cwd=elsewhere(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 45
        while "ended" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        for step in (
            "PENDING → PAID",
            "PAID → DISPENSING",
            "DISPENSING → COMPLETED",
            "ended COMPLETED",
        ):
            assert step in text, text
        assert (elsewhere(tmp_path) / "vendhub.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "Traceback" not in log.read_text()
