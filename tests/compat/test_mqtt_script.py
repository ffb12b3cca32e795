"""The seed's test-mqtt.js flow (subscribe, simulate ORDER_ID, publish) as `vendhub mqtt …`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MQTT_HOST, MQTT_PORT, unique
from tests.e2e.conftest import VENDHUB, clean_env
from tests.integration.test_mqtt_intake import eventually, running
from vendhub.entrypoints.api.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.compat, pytest.mark.timeout(90)]
WAIT_S = 20.0


async def vendhub_mqtt(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *VENDHUB, "mqtt", *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, out
    return out.decode()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_seed_testing_guide_runs_with_vendhub_mqtt_in_place_of_test_mqtt_js(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str, tmp_path: Path
) -> None:
    prefix = unique("seed")
    env = clean_env(
        MQTT_BROKER_URL=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        MQTT_TOPIC_PREFIX=prefix,
        MACHINE_ID="VM01",
        DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
    )
    async with running(database_urls[backend], prefix) as container:
        app = create_app(container=container, workers=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            # Test 3: `node test-mqtt.js subscribe` in a terminal.
            watcher = await asyncio.create_subprocess_exec(
                *VENDHUB,
                "mqtt",
                "subscribe",
                f"{prefix}/VM01/command",
                env=env,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert watcher.stdout is not None
                ready = await asyncio.wait_for(watcher.stdout.readline(), WAIT_S)
                assert b"subscribed to" in ready
                # Test 4: create an order, simulate the payment.
                created = (await http.post("/api/orders", json={"slot_id": 1})).json()
                order_id = created["order_id"]
                paid = await http.post(
                    f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"}
                )
                assert paid.status_code == 200, paid.text
                line = await asyncio.wait_for(watcher.stdout.readline(), WAIT_S)
            finally:
                watcher.kill()
                await watcher.wait()
            topic, _, payload = line.decode().partition(": ")
            command = json.loads(payload)
            assert topic == f"{prefix}/VM01/command"
            assert (command["cmd"], command["slot"], command["orderId"], command["timeoutMs"]) == (
                "dispense",
                1,
                order_id,
                2150,
            )
            # Test 5: `node test-mqtt.js simulate ORDER_ID`, run (like a person would) after
            # the motor's time: a commandId-less result sooner than its durationMs (1850 ms)
            # after the command is taken for a copy (protocol.md).
            await asyncio.sleep(2)
            await vendhub_mqtt(env, tmp_path, "simulate", order_id)

            async def completed() -> bool:
                view = (await http.get(f"/api/orders/{order_id}")).json()
                return bool(view["status"] == "COMPLETED")

            await eventually(completed, WAIT_S)
            # Test 6: the seed's SQL.
            async with container.ctx.engine.connect() as conn:
                log = (
                    (
                        await conn.execute(
                            sa.text("SELECT * FROM dispense_logs WHERE order_id = :o"),
                            {"o": order_id},
                        )
                    )
                    .mappings()
                    .one()
                )
            assert (log["success"], log["drop_detected"]) == (1, 1)
            assert log["command_sent_at"] is not None and log["completed_at"] is not None
            # `node test-mqtt.js publish`: sample telemetry, read back as the temperature.
            await vendhub_mqtt(env, tmp_path, "publish")

            async def temperature() -> float | None:
                body = (await http.get("/api/temperature/VM01")).json()
                value = body["temperature"]
                return float(value) if value is not None else None

            assert await eventually(temperature, WAIT_S) == 4.5
