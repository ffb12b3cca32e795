"""Issuing and rotating machines' MQTT logins, on every database, through the service and API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import api_client, assert_error, bearer, quick_shop, rows
from vendhub.adapters.db.tables import machine_credentials
from vendhub.adapters.mqtt import mosquitto
from vendhub.services.broker_credentials import (
    BrokerOptions,
    broker_layout,
    issue_machine_credentials,
)
from vendhub.services.context import ServiceContext
from vendhub.services.errors import NotFound

pytestmark = pytest.mark.integration


async def test_issuing_stores_only_a_mosquitto_hash_and_rotating_replaces_it(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx, machine_id="VM01")
    first = await issue_machine_credentials(ctx, "VM01")
    assert (first.username, first.generation) == ("VM01", 1)
    [row] = await rows(ctx, machine_credentials)
    assert first.password not in row["password_hash"]
    assert mosquitto.verify_password(first.password, row["password_hash"])

    second = await issue_machine_credentials(ctx, "VM01")
    assert second.generation == 2 and second.password != first.password
    [row] = await rows(ctx, machine_credentials)
    assert mosquitto.verify_password(second.password, row["password_hash"])
    assert not mosquitto.verify_password(first.password, row["password_hash"])


async def test_credentials_for_an_unknown_machine_are_refused(ctx: ServiceContext) -> None:
    with pytest.raises(NotFound):
        await issue_machine_credentials(ctx, "NOPE")
    assert await rows(ctx, machine_credentials) == []


async def test_admin_gets_the_password_once_and_no_one_else_gets_any(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> None:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, machine_id="VM01")
        admin = bearer(container, "user-admin", "ADMIN", "admin")
        response = await client.post("/api/machines/VM01/credentials", headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"username", "password"} and body["username"] == "VM01"
        assert response.headers["cache-control"] == "no-store"
        [row] = await rows(container.ctx, machine_credentials)
        assert mosquitto.verify_password(body["password"], row["password_hash"])
        # Nothing else shows it again.
        machine = await client.get("/api/machines/VM01", headers=admin)
        assert body["password"] not in machine.text and "password" not in machine.json()

        rotated = await client.post("/api/machines/VM01/credentials", headers=admin)
        assert rotated.json()["password"] != body["password"]

        for role in ("TECHNICIAN", "INVENTORY", "AUDITOR"):
            other = bearer(container, f"user-{role}", role, role.lower())
            denied = await client.post("/api/machines/VM01/credentials", headers=other)
            assert_error(denied, 403)
        assert_error(await client.post("/api/machines/VM01/credentials"), 401)
        missing = await client.post("/api/machines/NOPE/credentials", headers=admin)
        assert_error(missing, 404, "not_found")
        [row] = await rows(container.ctx, machine_credentials)
        assert row["generation"] == 2


async def test_the_broker_layout_has_every_machine_login_but_none_named_like_the_backend(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    for machine_id in ("VM01", "VM02", "vendhub-backend-2"):
        await quick_shop(ctx, machine_id=machine_id)
        await issue_machine_credentials(ctx, machine_id)
    await quick_shop(ctx, machine_id="VM03")  # no credentials issued: no login
    options = BrokerOptions(
        directory=tmp_path,
        backend_username="vendhub",
        backend_password="backend-secret",
        backend_client_id="vendhub-backend",
    )
    layout = await broker_layout(ctx, options)
    # On the device listener a client id is the username: this one would be a replica's.
    assert [m for m, _ in layout.machines] == ["VM01", "VM02"]
    assert mosquitto.verify_password("backend-secret", layout.backend_password_hash)
    with pytest.raises(mosquitto.BrokerConfigError, match="MQTT_USERNAME and MQTT_PASSWORD"):
        await broker_layout(ctx, replace(options, backend_password=""))
