"""Machines' MQTT logins: issue or rotate one, and the broker configuration built from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from vendhub.adapters.db.tables import machine_credentials
from vendhub.adapters.mqtt import mosquitto
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import lock_machine
from vendhub.services.errors import NotFound
from vendhub.services.rows import every, first

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """Shown once: only the hash is stored."""

    username: str
    password: str
    generation: int


async def issue_machine_credentials(ctx: ServiceContext, machine_id: str) -> IssuedCredentials:
    """A new random password for the machine; the previous one stops working at the next
    `vendhub broker config` + SIGHUP."""
    password = mosquitto.new_password()
    hashed = mosquitto.hash_password(password)
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        # The machine row lock serialises two rotations of one machine (no lost insert race).
        if await lock_machine(conn, machine_id) is None:
            raise NotFound(f"machine {machine_id} not found")
        row = await first(
            conn,
            sa.select(machine_credentials.c.generation).where(
                machine_credentials.c.machine_id == machine_id
            ),
        )
        if row is None:
            generation = 1
            await conn.execute(
                sa.insert(machine_credentials).values(
                    machine_id=machine_id,
                    password_hash=hashed,
                    generation=generation,
                    created_at=now,
                    rotated_at=now,
                )
            )
        else:
            generation = int(row["generation"]) + 1
            await conn.execute(
                sa.update(machine_credentials)
                .where(machine_credentials.c.machine_id == machine_id)
                .values(password_hash=hashed, generation=generation, rotated_at=now)
            )
    log.info("issued MQTT credentials for machine %s (generation %d)", machine_id, generation)
    return IssuedCredentials(machine_id, password, generation)


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    directory: Path
    backend_username: str
    backend_password: str
    backend_client_id: str
    port: int = 1883
    bind: str = "0.0.0.0"
    backend_port: int = 1884
    backend_bind: str = "127.0.0.1"
    user: str = "mosquitto"
    certfile: Path | None = None
    keyfile: Path | None = None


async def broker_layout(ctx: ServiceContext, options: BrokerOptions) -> mosquitto.BrokerLayout:
    """Every machine that has credentials, plus the backend's user, as a Mosquitto layout."""
    if not options.backend_username or not options.backend_password:
        raise mosquitto.BrokerConfigError(
            "MQTT_USERNAME and MQTT_PASSWORD must be set: they become the backend's broker login"
        )
    async with ctx.engine.connect() as conn:
        rows = await every(
            conn,
            sa.select(
                machine_credentials.c.machine_id, machine_credentials.c.password_hash
            ).order_by(machine_credentials.c.machine_id),
        )
    machines = []
    for row in rows:
        machine_id = str(row["machine_id"])
        # On the device listener a client id is its username: a machine named like the
        # backend's client id (or a replica's `{id}-…`) would collide with the backend.
        if machine_id.startswith(options.backend_client_id):
            log.warning(
                "machine %s left out of the broker config: its id collides with the "
                "backend's client id %s",
                machine_id,
                options.backend_client_id,
            )
            continue
        machines.append((machine_id, str(row["password_hash"])))
    return mosquitto.BrokerLayout(
        directory=options.directory,
        prefix=ctx.tunables.topic_prefix,
        backend_username=options.backend_username,
        backend_password_hash=mosquitto.hash_password(options.backend_password),
        machines=machines,
        port=options.port,
        bind=options.bind,
        backend_port=options.backend_port,
        backend_bind=options.backend_bind,
        user=options.user,
        certfile=options.certfile,
        keyfile=options.keyfile,
    )
