"""What several replicas rely on: which machines a reconnect asks to sync."""

from __future__ import annotations

import pytest

from tests.integration.helpers import order, pay, shop
from vendhub.services.catalog import update_machine
from vendhub.services.context import ServiceContext
from vendhub.services.fleet import machines_awaiting_results

pytestmark = pytest.mark.integration


async def test_only_machines_with_a_command_in_flight_are_asked_to_sync(
    ctx: ServiceContext,
) -> None:
    await shop(ctx)
    assert await machines_awaiting_results(ctx) == []
    order_id = await order(ctx)
    assert await machines_awaiting_results(ctx) == []  # unpaid: nothing sent
    await pay(ctx, order_id, 8000)
    assert await machines_awaiting_results(ctx) == ["VM01"]


async def test_an_inactive_machine_is_not_asked_to_sync(ctx: ServiceContext) -> None:
    await shop(ctx)
    await pay(ctx, await order(ctx), 8000)
    await update_machine(ctx, "VM01", {"is_active": False})
    assert await machines_awaiting_results(ctx) == []


async def test_on_connect_only_the_machine_with_a_command_in_flight_gets_sync(
    ctx: ServiceContext, backend: str, database_urls: dict[str, str]
) -> None:
    """VM00 is idle and sorts first: a sync to every machine would reach it before VM01's."""
    import asyncio
    import json

    import aiomqtt

    from tests.conftest import MQTT_HOST, MQTT_PORT, unique
    from vendhub.bootstrap import build
    from vendhub.config import Settings
    from vendhub.services.demo import register_machines

    await shop(ctx)
    await register_machines(ctx, ["VM00"])
    await pay(ctx, await order(ctx), 8000)  # VM01's command is in flight
    prefix = unique("rep")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_urls[backend],
        mqtt_broker_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        mqtt_topic_prefix=prefix,
        mqtt_client_id=unique("vendhub-test-"),
    )
    container = build(settings)
    syncs: list[str] = []
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=unique("dev-")) as device:
        await device.subscribe(f"{prefix}/+/command", qos=1)
        await container.start()
        try:

            async def until_vm01_sync() -> None:
                async for message in device.messages:
                    assert isinstance(message.payload, bytes)
                    if json.loads(message.payload).get("cmd") == "sync":
                        syncs.append(str(message.topic).split("/")[1])
                        if syncs[-1] == "VM01":
                            return

            await asyncio.wait_for(until_vm01_sync(), 20)
        finally:
            await container.stop()
    assert syncs == ["VM01"]
