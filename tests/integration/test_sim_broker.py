"""SimulatedMachine against the real Mosquitto on 127.0.0.1:1883, one topic prefix per test."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from vendhub.sim import Faults, SimOptions, SimulatedMachine, run_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST, PORT = "127.0.0.1", 1883
FAST = 0.01  # a 1500 ms motor turns in 15 ms


def broker_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


if not broker_up():
    pytest.skip(f"no MQTT broker on {HOST}:{PORT}", allow_module_level=True)


class Observer:
    """A backend stand-in: sees everything under the prefix, sends commands."""

    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def _queue(self, machine_id: str, kind: str) -> asyncio.Queue[dict[str, Any]]:
        return self.queues.setdefault(f"{machine_id}/{kind}", asyncio.Queue())

    async def pump(self) -> None:
        async for message in self.client.messages:
            _, machine_id, kind = str(message.topic).split("/")
            if isinstance(message.payload, bytes) and message.payload:
                await self._queue(machine_id, kind).put(json.loads(message.payload))

    async def next(self, machine_id: str, kind: str, within: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._queue(machine_id, kind).get(), within)

    async def quiet(self, machine_id: str, kind: str, seconds: float) -> list[dict[str, Any]]:
        """Everything that arrives within `seconds`."""
        seen = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(await self.next(machine_id, kind, left))
            except TimeoutError:
                break
        return seen

    def drain(self, machine_id: str, kind: str) -> None:
        queue = self._queue(machine_id, kind)
        while not queue.empty():
            queue.get_nowait()

    async def command(self, machine_id: str, body: dict[str, Any]) -> None:
        topic = f"{self.prefix}/{machine_id}/command"
        await self.client.publish(topic, json.dumps(body), qos=1)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def machine_id() -> str:
    return f"M{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def observer(prefix: str) -> AsyncIterator[Observer]:
    async with aiomqtt.Client(HOST, PORT, identifier=f"obs-{prefix}") as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        obs = Observer(client, prefix)
        pump = asyncio.create_task(obs.pump())
        try:
            yield obs
        finally:
            pump.cancel()
            await _clean_broker(client, prefix, [key.split("/")[0] for key in obs.queues])


async def _clean_broker(client: aiomqtt.Client, prefix: str, machine_ids: list[str]) -> None:
    """Remove what a test leaves behind: retained statuses and persistent sessions."""
    for machine_id in set(machine_ids):
        await client.publish(f"{prefix}/{machine_id}/status", b"", qos=1, retain=True)
        async with aiomqtt.Client(HOST, PORT, identifier=f"vm-{machine_id}", clean_session=True):
            pass


@pytest.fixture
async def start_machine(prefix: str) -> AsyncIterator[Any]:
    machines: list[SimulatedMachine] = []

    async def start(machine_id: str, faults: Faults | None = None) -> SimulatedMachine:
        options = SimOptions(prefix=prefix, speed=FAST, faults=faults or Faults(), seed=1)
        machine = SimulatedMachine(machine_id, options)
        machines.append(machine)
        machine.start()
        await asyncio.wait_for(machine.online.wait(), 10)
        return machine

    yield start
    for machine in machines:
        await machine.stop()


def dispense_body(command_id: str, expires_in: float = 60) -> dict[str, Any]:
    return {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": f"ORD-{command_id}",
        "slot": 1,
        "timeoutMs": 2150,
        "expiresAt": int(time.time() + expires_in),
    }


async def test_machine_announces_itself_online_with_a_retained_status(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    status = await observer.next(machine_id, "status")
    assert status == {"status": "ONLINE", "fw": "sim-1.0", "bootId": machine.boot_id}
    async with aiomqtt.Client(HOST, PORT) as late:
        await late.subscribe(f"{observer.prefix}/{machine_id}/status", qos=1)
        message = await asyncio.wait_for(anext(aiter(late.messages)), 5)
        assert message.retain


async def test_dispense_is_answered_once_and_a_repeat_is_served_from_memory(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    await observer.command(machine_id, dispense_body("C1"))
    first = await observer.next(machine_id, "dispense_result")
    assert first == {
        "commandId": "C1",
        "orderId": "ORD-C1",
        "slot": 1,
        "success": True,
        "dropDetected": True,
        "durationMs": 1500,
        "error": None,
    }
    await observer.command(machine_id, dispense_body("C1"))
    # Answered from memory (resends of the unacked result look the same on the wire).
    assert await observer.next(machine_id, "dispense_result") == first
    for _ in range(250):
        if machine.stats.duplicates_suppressed:
            break
        await asyncio.sleep(0.02)
    assert machine.stats.duplicates_suppressed == 1
    assert machine.stats.dispenses_performed == 1


async def test_an_unacked_result_is_republished_with_backoff_until_acked(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    await observer.command(machine_id, dispense_body("C1"))
    first = await observer.next(machine_id, "dispense_result")
    # Re-published on the 1, 2, 4 … s schedule (tests/unit) scaled by the speed: 10, 20 … ms.
    assert await observer.next(machine_id, "dispense_result") == first
    assert await observer.next(machine_id, "dispense_result") == first
    await observer.command(machine_id, {"cmd": "ack", "commandId": "C1"})
    # Commands are handled in order: the answer to this repeat proves the ack was applied.
    await observer.command(machine_id, dispense_body("C1"))
    await observer.next(machine_id, "dispense_result")
    assert machine.logic.unacked_results() == ()
    await asyncio.sleep(0.2)
    observer.drain(machine_id, "dispense_result")
    # Unacked, it would come again within the backoff cap (30 s x 0.01 = 0.3 s).
    assert await observer.quiet(machine_id, "dispense_result", 1.0) == []
    assert machine.stats.dispenses_performed == 1


async def test_a_lost_result_is_recovered_by_sync(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id, Faults(result_lost=1.0))
    # Resends at real-firmware pace (first after 1 s), so only the sync can bring it sooner.
    machine.logic.backoff_scale = 1.0
    await observer.command(machine_id, dispense_body("C1"))
    assert await observer.quiet(machine_id, "dispense_result", 0.3) == []
    await observer.command(machine_id, {"cmd": "sync"})
    result = await observer.next(machine_id, "dispense_result", within=0.6)
    assert (result["commandId"], result["success"]) == ("C1", True)
    assert machine.stats.syncs_received == 1
    assert machine.stats.faults_fired["result_lost"] == 1


async def test_an_expired_command_is_refused_without_dispensing(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    await observer.command(machine_id, dispense_body("C1", expires_in=-5))
    result = await observer.next(machine_id, "dispense_result")
    assert (result["success"], result["error"]) == (False, "EXPIRED")
    assert machine.stats.dispenses_performed == 0
    assert machine.stats.expired == 1


async def test_killing_the_connection_leaves_the_offline_last_will(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    assert (await observer.next(machine_id, "status"))["status"] == "ONLINE"
    await machine.kill()
    assert await observer.next(machine_id, "status") == {"status": "OFFLINE"}


async def test_a_graceful_stop_leaves_no_last_will(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    assert (await observer.next(machine_id, "status"))["status"] == "ONLINE"
    await machine.stop()
    assert await observer.quiet(machine_id, "status", 1.0) == []


async def test_a_dropped_connection_reconnects_with_the_same_boot(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id)
    online = await observer.next(machine_id, "status")
    assert machine.drop_connection()
    assert await observer.next(machine_id, "status") == {"status": "OFFLINE"}
    assert await observer.next(machine_id, "status", within=5) == online


async def test_a_reboot_mid_dispense_reports_motor_timeout_under_a_new_boot_id(
    observer: Observer, start_machine: Any, machine_id: str
) -> None:
    machine = await start_machine(machine_id, Faults(reboot_mid_dispense=1.0))
    before = await observer.next(machine_id, "status")
    await observer.command(machine_id, dispense_body("C1"))
    assert await observer.next(machine_id, "status") == {"status": "OFFLINE"}
    after = await observer.next(machine_id, "status")
    assert after["status"] == "ONLINE" and after["bootId"] != before["bootId"]
    await observer.command(machine_id, {"cmd": "sync"})
    result = await observer.next(machine_id, "dispense_result")
    assert (result["commandId"], result["success"], result["error"]) == (
        "C1",
        False,
        "MOTOR_TIMEOUT",
    )
    assert machine.stats.reboots == 1


async def test_run_fleet_connects_every_machine_and_stops_after_its_duration(
    observer: Observer, prefix: str
) -> None:
    ids = [f"F{uuid.uuid4().hex[:6]}{n}" for n in range(5)]
    options = SimOptions(prefix=prefix, machine_ids=ids, speed=FAST, duration_s=1.5, seed=3)
    fleet = asyncio.create_task(run_fleet(options))
    statuses = [await observer.next(mid, "status") for mid in ids]
    await observer.command(ids[0], dispense_body("C1"))
    assert (await observer.next(ids[0], "dispense_result"))["success"] is True
    stats = await asyncio.wait_for(fleet, 10)
    assert {s["status"] for s in statuses} == {"ONLINE"}
    assert stats.connects == 5
    assert stats.dispenses_performed == 1
