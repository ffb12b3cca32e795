"""Machines' logins on a real private Mosquitto configured by `broker config`'s code."""

from __future__ import annotations

import asyncio
import getpass
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiomqtt
import pytest
import sqlalchemy as sa

from tests.conftest import free_port, unique
from tests.private_broker import PrivateMosquitto, can_connect, client
from vendhub.adapters.db.tables import machines
from vendhub.adapters.mqtt import mosquitto
from vendhub.services.broker_credentials import (
    BrokerOptions,
    broker_layout,
    issue_machine_credentials,
)
from vendhub.services.context import ServiceContext, Tunables

# The broker's behaviour does not depend on the database: SQLite is enough here.
pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["sqlite"])]

BACKEND_USER, BACKEND_PASSWORD = "vendhub", "backend-secret"
WAIT_S = 10.0  # bound for one expected message


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Fleet:
    ctx: ServiceContext
    broker: PrivateMosquitto
    options: BrokerOptions
    prefix: str
    passwords: dict[str, str]

    async def regenerate(self) -> None:
        """What `vendhub broker config` + `kill -HUP` do."""
        mosquitto.write(await broker_layout(self.ctx, self.options))
        self.broker.reload()

    def device(self, machine_id: str, identifier: str | None = None) -> aiomqtt.Client:
        return client(
            self.broker.port, machine_id, self.passwords[machine_id], identifier=identifier
        )

    def backend(self, identifier: str | None = None, clean: bool = True) -> aiomqtt.Client:
        return client(self.broker.backend_port, BACKEND_USER, BACKEND_PASSWORD, identifier, clean)

    def topic(self, machine_id: str, kind: str) -> str:
        return f"{self.prefix}/{machine_id}/{kind}"


@pytest.fixture
async def fleet(ctx: ServiceContext, tmp_path: Path) -> AsyncIterator[Fleet]:
    prefix = unique("auth")
    ctx.tunables = Tunables(topic_prefix=prefix)
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        for machine_id in ("VMA", "VMB"):
            await conn.execute(
                sa.insert(machines).values(
                    id=machine_id, name=machine_id, created_at=now, updated_at=now
                )
            )
    passwords = {m: (await issue_machine_credentials(ctx, m)).password for m in ("VMA", "VMB")}
    options = BrokerOptions(
        directory=tmp_path / "broker",
        backend_username=BACKEND_USER,
        backend_password=BACKEND_PASSWORD,
        backend_client_id="vendhub-backend",
        port=free_port(),
        bind="127.0.0.1",
        backend_port=free_port(),
        user=getpass.getuser(),  # the test's own files; Mosquitto need not drop to another user
    )
    mosquitto.write(await broker_layout(ctx, options))
    broker = PrivateMosquitto(options.directory, options.port, options.backend_port)
    broker.start()
    try:
        yield Fleet(ctx, broker, options, prefix, passwords)
    finally:
        broker.stop()


async def first_message(c: aiomqtt.Client) -> aiomqtt.Message:
    async def receive() -> aiomqtt.Message:
        async for message in c.messages:
            return message
        raise AssertionError("subscription ended")

    return await asyncio.wait_for(receive(), WAIT_S)


async def test_anonymous_wrong_and_misplaced_logins_are_refused(fleet: Fleet) -> None:
    devices, backend = fleet.broker.port, fleet.broker.backend_port
    assert await can_connect(devices, "VMA", fleet.passwords["VMA"])
    assert await can_connect(backend, BACKEND_USER, BACKEND_PASSWORD)
    for port in (devices, backend):
        assert not await can_connect(port, None, None)
        assert not await can_connect(port, "VMA", "wrong")
        assert not await can_connect(port, "VMA", fleet.passwords["VMB"])
    # Each listener knows only its own users.
    assert not await can_connect(devices, BACKEND_USER, BACKEND_PASSWORD)
    assert not await can_connect(backend, "VMA", fleet.passwords["VMA"])


async def test_machine_a_cannot_publish_into_machine_b_s_topics(fleet: Fleet) -> None:
    async with fleet.backend() as backend, fleet.device("VMA") as attacker:
        await backend.subscribe(f"{fleet.prefix}/#", qos=1)
        forged = b'{"commandId":"X","orderId":"ORD-1","slot":1,"success":false}'
        for kind in ("dispense_result", "status", "telemetry", "command", "config"):
            await attacker.publish(fleet.topic("VMB", kind), forged, qos=1)
        # Its own inbound topics only: it cannot forge its own commands or config either.
        await attacker.publish(fleet.topic("VMA", "command"), b'{"cmd":"sync"}', qos=1)
        await attacker.publish(fleet.topic("VMA", "config"), b'{"version":99}', qos=1)
        await attacker.publish(fleet.topic("VMA", "telemetry"), b'{"rssi":-60}', qos=1)
        message = await first_message(backend)
    assert (str(message.topic), message.payload) == (
        fleet.topic("VMA", "telemetry"),
        b'{"rssi":-60}',
    )


async def test_machine_a_cannot_read_machine_b_s_commands_or_config(fleet: Fleet) -> None:
    async with fleet.device("VMA") as spy, fleet.device("VMB") as victim:
        for pattern in ("VMB/command", "VMB/config", "+/command", "#"):
            await spy.subscribe(f"{fleet.prefix}/{pattern}", qos=1)
        await spy.subscribe(fleet.topic("VMA", "command"), qos=1)
        await victim.subscribe(fleet.topic("VMB", "command"), qos=1)
        async with fleet.backend() as backend:
            await backend.publish(fleet.topic("VMB", "config"), b'{"version":1}', qos=1)
            await backend.publish(fleet.topic("VMB", "command"), b'{"cmd":"dispense"}', qos=1)
            await backend.publish(fleet.topic("VMA", "command"), b'{"cmd":"sync"}', qos=1)
        to_victim = await first_message(victim)
        to_spy = await first_message(spy)
    assert str(to_victim.topic) == fleet.topic("VMB", "command")
    assert (str(to_spy.topic), to_spy.payload) == (fleet.topic("VMA", "command"), b'{"cmd":"sync"}')


async def test_rotation_then_sighup_retires_the_old_password_and_admits_the_new(
    fleet: Fleet,
) -> None:
    old = fleet.passwords["VMA"]
    new = (await issue_machine_credentials(fleet.ctx, "VMA")).password
    # Until the broker config is written again, the broker still knows only the old one.
    assert await can_connect(fleet.broker.port, "VMA", old)
    assert not await can_connect(fleet.broker.port, "VMA", new)
    await fleet.regenerate()
    for _ in range(100):  # Mosquitto applies SIGHUP asynchronously; bounded wait
        if await can_connect(fleet.broker.port, "VMA", new):
            break
        await asyncio.sleep(0.05)
    assert await can_connect(fleet.broker.port, "VMA", new)
    assert not await can_connect(fleet.broker.port, "VMA", old)
    # Nobody else was affected.
    assert await can_connect(fleet.broker.port, "VMB", fleet.passwords["VMB"])
    assert await can_connect(fleet.broker.backend_port, BACKEND_USER, BACKEND_PASSWORD)


async def test_a_machine_added_later_can_log_in_after_regenerating(fleet: Fleet) -> None:
    now = fleet.ctx.clock()
    async with fleet.ctx.engine.begin() as conn:
        await conn.execute(
            sa.insert(machines).values(id="VMC", name="VMC", created_at=now, updated_at=now)
        )
    password = (await issue_machine_credentials(fleet.ctx, "VMC")).password
    await fleet.regenerate()
    for _ in range(100):
        if await can_connect(fleet.broker.port, "VMC", password):
            break
        await asyncio.sleep(0.05)
    assert await can_connect(fleet.broker.port, "VMC", password)


async def test_a_stolen_backend_client_id_does_not_get_the_backend_s_session(
    fleet: Fleet,
) -> None:
    backend_id = unique("vendhub-backend-")
    results = fleet.topic("VMB", "dispense_result")
    async with fleet.backend(backend_id, clean=False) as backend:
        await backend.subscribe(f"{fleet.prefix}/+/dispense_result", qos=1)
    # The backend is away; the broker queues results for its persistent session.
    async with fleet.device("VMB") as machine:
        for n in range(5):
            await machine.publish(results, f'{{"n":{n}}}'.encode(), qos=1)
    # A device login cannot use the backend's listener at all …
    assert not await can_connect(fleet.broker.backend_port, "VMA", fleet.passwords["VMA"])
    # … and on the device listener its client id is its username, whatever it asks for.
    async with client(
        fleet.broker.port, "VMA", fleet.passwords["VMA"], backend_id, clean_session=False
    ) as thief:
        await thief.subscribe(f"{fleet.prefix}/#", qos=1)
        await thief.subscribe(fleet.topic("VMA", "command"), qos=1)
        async with fleet.backend() as other_replica:
            await other_replica.publish(fleet.topic("VMA", "command"), b"marker", qos=1)
        stolen = await first_message(thief)
    assert stolen.payload == b"marker"  # nothing queued for the backend came first
    # The backend comes back to its whole queue.
    async with fleet.backend(backend_id, clean=False) as backend:
        await backend.subscribe(f"{fleet.prefix}/+/dispense_result", qos=1)
        got = [(await first_message(backend)).payload for _ in range(5)]
    assert got == [f'{{"n":{n}}}'.encode() for n in range(5)]


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            *subject,
            *files,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_with_a_certificate_devices_must_speak_tls(fleet: Fleet, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    options = replace(
        fleet.options,
        directory=tmp_path / "tls-broker",
        port=free_port(),
        backend_port=free_port(),
        certfile=cert,
        keyfile=key,
    )
    mosquitto.write(await broker_layout(fleet.ctx, options))
    broker = PrivateMosquitto(options.directory, options.port, options.backend_port)
    broker.start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        tls_device = aiomqtt.Client(
            "127.0.0.1",
            options.port,
            username="VMA",
            password=fleet.passwords["VMA"],
            tls_context=trusted,
            timeout=10,
        )
        async with tls_device:
            pass
        assert not await can_connect(options.port, "VMA", fleet.passwords["VMA"])  # plain TCP
    finally:
        broker.stop()


@pytest.mark.skipif(
    os.geteuid() != 0 or not _has_user("mosquitto"), reason="needs root and a mosquitto user"
)
async def test_started_as_root_mosquitto_drops_to_its_user_and_still_reads_the_files(
    fleet: Fleet,
) -> None:
    # Outside pytest's private (0700) temp tree: the mosquitto user must reach the files.
    directory = Path(tempfile.mkdtemp(prefix="vendhub-broker-"))
    os.chmod(directory, 0o755)
    try:
        options = replace(
            fleet.options,
            directory=directory,
            port=free_port(),
            backend_port=free_port(),
            user="mosquitto",  # the default of `vendhub broker config`
        )
        mosquitto.write(await broker_layout(fleet.ctx, options))
        assert os.stat(directory / mosquitto.DEVICE_PASSWORDS).st_mode & 0o077 == 0
        broker = PrivateMosquitto(directory, options.port, options.backend_port)
        broker.start()
        try:
            assert await can_connect(options.port, "VMA", fleet.passwords["VMA"])
            assert await can_connect(options.backend_port, BACKEND_USER, BACKEND_PASSWORD)
        finally:
            broker.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
