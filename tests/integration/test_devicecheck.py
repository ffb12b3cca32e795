"""`vendhub devicecheck` against the simulator, the host firmware and devices broken one way."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import MQTT_HOST, MQTT_PORT, free_port, unique
from vendhub.devicecheck import CHECKS, Report, Target, Timing, run_checks
from vendhub.devicecheck.__main__ import main as devicecheck_main
from vendhub.protocol.messages import SyncCommand, parse_command
from vendhub.protocol.topics import TopicKind
from vendhub.sim import DeviceLogic, SimOptions, SimulatedMachine, StoredResult
from vendhub.sim.device import (
    Acked,
    Decision,
    Ignored,
    Publish,
    Reason,
)
from vendhub.sim.machine import BOOT_MS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
BROKER = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"
VENDHUB_SCRIPT = Path(sys.executable).with_name("vendhub")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A topic prefix of its own; retained messages and device sessions are removed after."""
    name = unique("dc")
    yield name
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=f"clean-{name}") as client:
        await client.subscribe(f"{name}/+/status")
        await client.subscribe(f"{name}/+/config")
        topics: set[str] = set()
        try:
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    topics.add(str(message.topic))
        except TimeoutError:
            pass
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
    for topic in topics:
        machine_id = topic.split("/")[1]
        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=f"vm-{machine_id}"):
            pass  # clean_session=True drops the device's persistent session


def sim(prefix: str, machine_id: str, cls: type[SimulatedMachine] = SimulatedMachine) -> Any:
    return cls(machine_id, SimOptions(prefix=prefix, seed=1))


async def check(machine: SimulatedMachine, **kwargs: Any) -> Report:
    machine.start()
    try:
        await asyncio.wait_for(machine.online.wait(), 10)
        target = Target.from_url(BROKER, machine.options.prefix, machine.machine_id)
        return await run_checks(target, **kwargs)
    finally:
        await machine.stop()


def table(report: Report) -> str:
    return "\n".join(f"{o.name}: {o.verdict} {o.detail}" for o in report.outcomes)


async def test_the_simulator_passes_every_check(prefix: str) -> None:
    report = await check(sim(prefix, "SIM1"))
    assert [o.name for o in report.outcomes] == [name for name, _ in CHECKS]
    assert report.passed, table(report)


async def test_a_device_that_never_comes_online_fails_the_status_check_and_skips_the_rest(
    prefix: str,
) -> None:
    target = Target.from_url(BROKER, prefix, "NOBODY")
    report = await run_checks(target, timing=Timing(online_s=0.5))
    assert not report.passed
    assert report.outcome("status").passed is False
    assert {o.passed for o in report.outcomes[1:]} == {None}


# --- devices broken one obligation at a time ------------------------------------------------


class NoBootId(SimulatedMachine):
    def _status_payload(self) -> bytes:
        body = json.loads(super()._status_payload())
        del body["bootId"]
        return json.dumps(body).encode()


class NoCommandIdInResults(SimulatedMachine):
    async def _publish_result(self, result: StoredResult, *, first: bool) -> None:
        body = result.to_wire()
        del body["commandId"]
        await self._publish(self.topic(TopicKind.DISPENSE_RESULT), json.dumps(body).encode())


class CrashesOnJunk(SimulatedMachine):
    async def _apply(self, decision: Decision) -> None:
        if isinstance(decision, Ignored):
            self._reboot()
            return
        await super()._apply(decision)


class SilentAboutConfig(SimulatedMachine):
    """Applies a config but never re-announces its status (the simulator before issue 9)."""

    async def _on_config(self, payload: bytes) -> None:
        self.logic.handle_config(payload)


class ConstantGap(DeviceLogic):
    def due_results(self, now: float) -> list[StoredResult]:
        due = [self._results[cid] for cid, retry in self._retry.items() if retry.due <= now]
        for cid in self._retry:
            if self._retry[cid].due <= now:
                self._retry[cid].due = now + 1.0
        return due


class IgnoresAck(DeviceLogic):
    def ack(self, command_id: str) -> Acked:
        return Acked(command_id, known=command_id in self._results)


class IgnoresSync(DeviceLogic):
    def handle_command(self, payload: bytes, now: float) -> Decision:
        try:
            if isinstance(parse_command(payload), SyncCommand):
                return Ignored("sync ignored")
        except ValueError:
            pass
        return super().handle_command(payload, now)


class VendsRepeats(DeviceLogic):
    def _dispense(self, command: Any, now: float) -> Decision:
        self._results.pop(command.command_id, None)
        self._retry.pop(command.command_id, None)
        return super()._dispense(command, now)


class IgnoresExpiry(DeviceLogic):
    def _refusal(self, command: Any, now: float) -> str | None:
        error = super()._refusal(command, now)
        return None if error == "EXPIRED" else error


class SilentWhenBusy(DeviceLogic):
    def _dispense(self, command: Any, now: float) -> Decision:
        if self.busy and command.command_id not in self._results:
            return Ignored("busy")
        return super()._dispense(command, now)


class BusyOnRepeatInFlight(DeviceLogic):
    def _dispense(self, command: Any, now: float) -> Decision:
        in_progress = self._in_progress
        if in_progress is not None and in_progress.command_id == command.command_id:
            result = self._record(command, False, False, 0, "BUSY", now)
            return Publish((result,), Reason.REFUSED)
        return super()._dispense(command, now)


def with_logic(logic: type[DeviceLogic]) -> type[SimulatedMachine]:
    class Broken(SimulatedMachine):
        def _boot(self) -> DeviceLogic:
            self.boot_id = secrets.token_hex(4)
            return logic(self.machine_id, self._store, now=time.time())

    Broken.__name__ = logic.__name__
    return Broken


BROKEN: list[tuple[type[SimulatedMachine], str]] = [
    (NoBootId, "status"),
    (NoCommandIdInResults, "result"),
    (with_logic(ConstantGap), "resend"),
    (with_logic(IgnoresSync), "sync"),
    (with_logic(IgnoresAck), "ack"),
    (with_logic(VendsRepeats), "repeat"),
    (with_logic(SilentWhenBusy), "busy"),
    (with_logic(BusyOnRepeatInFlight), "repeat-in-flight"),
    (with_logic(IgnoresExpiry), "expired"),
    (CrashesOnJunk, "malformed"),
    (SilentAboutConfig, "config"),
]


async def test_each_device_broken_in_one_way_fails_the_check_naming_that_obligation(
    prefix: str,
) -> None:
    assert {name for _, name in BROKEN} == {name for name, _ in CHECKS}
    # Concurrently, one machine id each: the checks mostly wait on timers.
    reports = await asyncio.gather(
        *(
            check(sim(prefix, f"B{n:02d}", cls), timing=Timing(result_grace_s=4.0))
            for n, (cls, _) in enumerate(BROKEN)
        )
    )
    for (cls, expected), report in zip(BROKEN, reports, strict=True):
        assert not report.passed, f"{cls.__name__} passed:\n{table(report)}"
        assert report.outcome(expected).passed is False, f"{cls.__name__}:\n{table(report)}"
        if expected != "status":
            assert report.outcome("status").passed, f"{cls.__name__}:\n{table(report)}"
    assert BOOT_MS > 0  # CrashesOnJunk comes back after a simulated boot, with a new bootId


# --- the host firmware and the command line ------------------------------------------------


@pytest.fixture
def host_firmware(prefix: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    machine_id = "FW1"
    log = tmp_path / "firmware.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "bash",
                str(ROOT / "firmware" / "run-host.sh"),
                "--broker",
                BROKER,
                "--prefix",
                prefix,
                "--machine",
                machine_id,
                "--username",
                machine_id,
                "--password",
                "bench-secret",
                "--state-dir",
                str(tmp_path / "flash"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHON": sys.executable},
        )
    try:
        yield machine_id, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = (
        [str(VENDHUB_SCRIPT)]
        if VENDHUB_SCRIPT.exists()
        else [sys.executable, "-m", "vendhub.devicecheck"]
    )
    prefix = ["devicecheck"] if VENDHUB_SCRIPT.exists() else []
    return subprocess.run(
        [*command, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_the_host_firmware_passes_devicecheck_run_from_the_command_line(
    prefix: str, host_firmware: tuple[str, Path]
) -> None:
    machine_id, log = host_firmware
    done = run_cli("--broker", BROKER, "--prefix", prefix, "--machine", machine_id)
    assert done.returncode == 0, done.stdout + done.stderr + log.read_text()
    rows = [line for line in done.stdout.splitlines() if "PASS" in line]
    # One unwrapped row per check, even on an 80-column terminal.
    for name, obligation in CHECKS:
        assert any(f" {name} " in row and obligation in row for row in rows), done.stdout
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed" in done.stdout


def test_a_failing_device_makes_the_command_exit_1_with_a_fail_row(prefix: str) -> None:
    done = run_cli("--broker", BROKER, "--prefix", prefix, "--machine", "ABSENT", "--slot", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert any("status" in line and "FAIL" in line for line in done.stdout.splitlines())


@pytest.mark.parametrize(
    "args",
    [
        ["--prefix", "vm", "--machine", "VM01"],  # no --broker
        ["--broker", BROKER, "--prefix", "vm", "--machine", "bad/id"],
        ["--broker", "http://example", "--prefix", "vm", "--machine", "VM01"],
        ["--broker", BROKER, "--prefix", "vm/#", "--machine", "VM01"],
        ["--broker", BROKER, "--prefix", "vm", "--machine", "VM01", "--slot", "0"],
        ["--broker", f"mqtt://127.0.0.1:{free_port()}", "--prefix", "vm", "--machine", "VM01"],
    ],
    ids=["missing", "machine", "scheme", "prefix", "slot", "unreachable"],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert devicecheck_main(args) == 2
