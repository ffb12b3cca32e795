"""The reference firmware run on this host (firmware/run-host.sh) over the real Mosquitto."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import MQTT_HOST, MQTT_PORT, free_port, unique
from vendhub.devicecheck.__main__ import main as devicecheck_main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
BROKER = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"
MACHINE = "FWH1"


class Backend:
    """Sees the machine's topics in order; sends commands."""

    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.messages: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if payload:
                await self.messages.put((str(message.topic).split("/")[-1], json.loads(payload)))

    async def next(self, kind: str, within: float = 10.0, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                got_kind, body = await self.messages.get()
                if got_kind == kind and all(body.get(k) == v for k, v in fields.items()):
                    return body

    async def command(self, body: dict[str, Any]) -> None:
        await self.client.publish(f"{self.prefix}/{MACHINE}/command", json.dumps(body), qos=1)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    prefix = unique("fw")
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=f"be-{prefix}") as client:
        await client.subscribe(f"{prefix}/{MACHINE}/+", qos=1)
        be = Backend(client, prefix)
        pump = asyncio.create_task(be.pump())
        try:
            yield be
        finally:
            pump.cancel()
            await client.publish(f"{prefix}/{MACHINE}/status", b"", qos=1, retain=True)
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=f"vm-{MACHINE}"):
        pass  # drops the device's persistent session


def launch(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", str(ROOT / "firmware" / "run-host.sh"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHON": sys.executable},
    )


@pytest.fixture
def firmware(backend: Backend, tmp_path: Path) -> Any:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        args = ["--broker", BROKER, "--prefix", backend.prefix, "--machine", MACHINE]
        args += ["--state-dir", str(tmp_path / "flash"), "--telemetry-interval", "5"]
        proc = launch(args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=10)


def dispense(command_id: str) -> dict[str, Any]:
    return {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": f"ORD-{command_id}",
        "slot": 2,
        "timeoutMs": 1000,
        "expiresAt": int(time.time()) + 60,
    }


async def test_the_host_firmware_vends_reports_telemetry_and_remembers_results_across_restarts(
    backend: Backend, firmware: Callable[[], subprocess.Popen[bytes]]
) -> None:
    first = firmware()
    online = await backend.next("status", status="ONLINE")
    telemetry = await backend.next("telemetry")
    assert {"uptimeS", "rssi", "temperature", "ts"} <= telemetry.keys()
    assert abs(telemetry["temperature"] - 4.5) < 0.5

    await backend.command(dispense("H1"))
    result = await backend.next("dispense_result", commandId="H1")
    assert result["success"] and result["dropDetected"] and result["slot"] == 2

    # SIGTERM: a planned stop leaves a retained OFFLINE.
    stop(first, signal.SIGTERM)
    assert (await backend.next("status"))["status"] == "OFFLINE"

    firmware()
    again = await backend.next("status", status="ONLINE")
    assert again["bootId"] != online["bootId"]
    # Never acked, so the restarted firmware re-sends it from flash; a repeat is not vended.
    assert await backend.next("dispense_result", commandId="H1") == result
    await backend.command(dispense("H1"))
    assert await backend.next("dispense_result", commandId="H1") == result


async def test_a_killed_host_firmware_goes_offline_through_its_last_will(
    backend: Backend, firmware: Callable[[], subprocess.Popen[bytes]]
) -> None:
    proc = firmware()
    await backend.next("status", status="ONLINE")
    stop(proc, signal.SIGKILL)
    # No DISCONNECT was sent: the broker publishes the Will once the socket closes.
    assert (await backend.next("status", within=60))["status"] == "OFFLINE"


async def test_the_maintenance_key_switches_the_retained_status_and_refuses_vends(
    backend: Backend, firmware: Callable[[], subprocess.Popen[bytes]]
) -> None:
    proc = firmware()
    online = await backend.next("status", status="ONLINE")
    proc.send_signal(signal.SIGUSR1)  # the host stand-in turns the key switch
    maintenance = await backend.next("status", status="MAINTENANCE")
    assert maintenance["bootId"] == online["bootId"]
    await backend.command(dispense("K1"))
    refused = await backend.next("dispense_result", commandId="K1")
    assert refused["error"] == "BUSY" and refused["success"] is False
    proc.send_signal(signal.SIGUSR1)
    await backend.next("status", status="ONLINE")
    await backend.command(dispense("K2"))
    assert (await backend.next("dispense_result", commandId="K2"))["dropDetected"] is True


@pytest.fixture
def password_broker(tmp_path: Path) -> Any:
    """A private Mosquitto with per-machine passwords and an ACL of each machine's own topics."""
    port = free_port()
    passwords = tmp_path / "passwd"
    for user, password in (("backend", "be-secret"), (MACHINE, "fw-secret")):
        subprocess.run(
            [
                "mosquitto_passwd",
                "-b",
                *(["-c"] if user == "backend" else []),
                passwords,
                user,
                password,
            ],
            check=True,
            capture_output=True,
        )
    acl = tmp_path / "acl"
    acl.write_text(
        "user backend\ntopic readwrite #\n"
        "pattern read vm/%u/command\npattern read vm/%u/config\n"
        "pattern write vm/%u/status\npattern write vm/%u/dispense_result\n"
        "pattern write vm/%u/telemetry\n"
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        # Run as us: started as root, Mosquitto would drop to a user who cannot read tmp_path.
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\nacl_file {acl}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_the_host_firmware_logs_in_as_its_machine_id_with_its_password(
    password_broker: int, tmp_path: Path
) -> None:
    port = password_broker
    args = ["--broker", f"mqtt://127.0.0.1:{port}", "--prefix", "vm", "--machine", MACHINE]
    args += ["--password", "fw-secret", "--state-dir", str(tmp_path / "flash")]
    proc = launch(args)
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, username="backend", password="be-secret", identifier="be"
        ) as client:
            await client.subscribe(f"vm/{MACHINE}/+", qos=1)
            backend = Backend(client, "vm")
            pump = asyncio.create_task(backend.pump())
            await backend.next("status", status="ONLINE")
            await backend.command(dispense("P1"))
            assert (await backend.next("dispense_result", commandId="P1"))["dropDetected"]
            pump.cancel()
    finally:
        stop(proc, signal.SIGTERM)
    wrong = ["--broker", f"mqtt://backend:nope@127.0.0.1:{port}", "--prefix", "vm"]
    assert await asyncio.to_thread(devicecheck_main, [*wrong, "--machine", MACHINE]) == 2
