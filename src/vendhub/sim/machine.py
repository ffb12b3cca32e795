"""One simulated vending machine: DeviceLogic wired to its own MQTT connection."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import socket
import ssl
import time
from contextlib import suppress

import aiomqtt

from vendhub.protocol.messages import PresenceStatus, ResultError
from vendhub.protocol.topics import TopicKind, topic, valid_machine_id
from vendhub.sim.device import (
    BACKOFF_CAP_S,
    Acked,
    Decision,
    DeviceLogic,
    FlashStore,
    Ignored,
    InFlight,
    Publish,
    Reason,
    StartDispense,
    StoredResult,
)
from vendhub.sim.options import Faults, SimOptions
from vendhub.sim.stats import FleetStats

logger = logging.getLogger(__name__)

# The last will; the same bytes as protocol.md's `{"status":"OFFLINE"}`.
OFFLINE_PAYLOAD = json.dumps(
    {"status": PresenceStatus.OFFLINE.value}, separators=(",", ":")
).encode()
KEEPALIVE_S = 30
# Simulated boot time after a reboot, before the device reconnects (scaled by speed).
BOOT_MS = 2000


class SimulatedMachine:
    """An ESP32 stand-in that keeps protocol.md's device obligations over a real broker."""

    def __init__(
        self,
        machine_id: str,
        options: SimOptions | None = None,
        *,
        stats: FleetStats | None = None,
    ) -> None:
        if not valid_machine_id(machine_id):
            raise ValueError(f"invalid machine id {machine_id!r}")
        self.machine_id = machine_id
        self.options = options if options is not None else SimOptions()
        self.faults: Faults = self.options.faults
        self.stats = stats if stats is not None else FleetStats()
        seed = self.options.seed
        # Faults and network timing draw from separate generators so that enabling one kind
        # of fault does not shift the other's sequence.
        self._rng = random.Random(f"{seed}:{machine_id}") if seed is not None else random.Random()
        self._net_rng = (
            random.Random(f"{seed}:{machine_id}:net") if seed is not None else random.Random()
        )
        self._store = FlashStore.for_machine(self.options.state_dir, machine_id)
        self.boot_id = ""
        self.logic = self._boot()
        self.online = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._motors: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._failures = 0
        self._rebooted = False
        self._halted = False
        self._offline_until = 0.0

    def _boot(self) -> DeviceLogic:
        # Not from the seeded generator: a restarted run with the same seed must still look
        # like a reboot to the backend, which compares bootIds.
        self.boot_id = secrets.token_hex(4)
        return DeviceLogic(
            self.machine_id,
            self._store,
            now=time.time(),
            clock_skew_s=self.faults.clock_skew_s,
            stock_per_slot=self.options.stock_per_slot,
            # Sped-up motors get sped-up resends too, so a fast test does not wait real seconds.
            backoff_scale=self.options.speed,
        )

    def topic(self, kind: TopicKind) -> str:
        return topic(self.options.prefix, self.machine_id, kind)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, delay_s: float = 0.0) -> None:
        """Run in the background until stop(); the first connection waits delay_s."""
        if self._task is None or self._task.done():
            self._halted = False
            self._task = asyncio.create_task(self.run(delay_s), name=f"sim-{self.machine_id}")

    async def run(self, delay_s: float = 0.0) -> None:
        """Connect, serve, and reconnect with backoff whenever the broker goes away."""
        await asyncio.sleep(delay_s)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, self._offline_until - loop.time()))
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self._failures += 1
                logger.info("%s: connection lost or refused: %s", self.machine_id, exc)
            except Exception:
                # One faulty machine must not silently vanish from a fleet of a thousand.
                self._failures += 1
                logger.exception("%s: unexpected error; reconnecting", self.machine_id)
            finally:
                self.online.clear()
            if self._halted:
                return
            await asyncio.sleep(self._reconnect_delay())

    def _reconnect_delay(self) -> float:
        if self._rebooted:
            self._rebooted = False
            self._failures = 0
            return BOOT_MS * self.options.speed / 1000
        # 1, 2, 4 … 30 s with jitter, so a fleet does not reconnect in lockstep.
        base = min(2.0 ** max(self._failures - 1, 0), BACKOFF_CAP_S)
        return base * self._net_rng.uniform(0.5, 1.0)

    async def stop(self) -> None:
        """Disconnect cleanly (the broker discards the Last Will) and end all tasks.

        A dispense still running is cut off like a power-off: its in-progress marker stays in
        flash and becomes a MOTOR_TIMEOUT result when a machine boots over the same state.
        """
        tasks = [t for t in (self._task, *self._motors) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.logic.busy:
            # Powered off mid-dispense: the next start() must boot, not stay BUSY forever.
            self.logic = self._boot()

    async def kill(self) -> None:
        """Die like a power cut: no DISCONNECT is sent, so the broker publishes the Last Will."""
        self._halted = True
        task = self._task
        if self.drop_connection() and task is not None:
            # Let the reader see the EOF itself rather than cancelling it mid-way: aiomqtt then
            # consumes its own disconnect error instead of logging it as never retrieved.
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5.0)
        await self.stop()

    def drop_connection(self) -> bool:
        """Break the TCP connection without DISCONNECT (network loss); run() reconnects."""
        client = self._client
        if client is None:
            return False
        # aiomqtt has no abort; shutting the paho socket makes the broker see EOF (-> LWT) and
        # makes aiomqtt's reader notice the loss like any other network failure.
        sock = client._client.socket()
        if not isinstance(sock, socket.socket):
            return False
        # Our own publishes stop now: one racing the EOF handling makes aiomqtt register a
        # writer for a file descriptor paho has just closed.
        self._client = None
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return True

    # --- one connection -------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        options = self.options
        username, password = options.login(self.machine_id)
        return aiomqtt.Client(
            options.host,
            options.port,
            username=username,
            password=password,
            identifier=f"vm-{self.machine_id}",
            clean_session=False,
            keepalive=KEEPALIVE_S,
            will=aiomqtt.Will(self.topic(TopicKind.STATUS), OFFLINE_PAYLOAD, qos=1, retain=True),
            tls_context=ssl.create_default_context() if options.tls else None,
            timeout=10,
        )

    async def _session(self) -> None:
        async with self._make_client() as client:
            self._client = client
            try:
                self._failures = 0
                self.stats.connects += 1
                # Subscribe before announcing ONLINE: the backend answers ONLINE with sync.
                await client.subscribe(
                    [(self.topic(TopicKind.COMMAND), 1), (self.topic(TopicKind.CONFIG), 1)]
                )
                await client.publish(
                    self.topic(TopicKind.STATUS), self._status_payload(), qos=1, retain=True
                )
                self.online.set()
                await self._serve(client)
            finally:
                self._client = None

    def _status_payload(self) -> bytes:
        body: dict[str, str | int] = {
            "status": PresenceStatus.ONLINE.value,
            "fw": self.options.fw,
            "bootId": self.boot_id,
        }
        if self.logic.config is not None:
            # protocol.md: the retained status names the config version the device applied.
            body["configVersion"] = self.logic.config.version
        return json.dumps(body, separators=(",", ":")).encode()

    async def _serve(self, client: aiomqtt.Client) -> None:
        helpers = [
            asyncio.create_task(self._telemetry_loop()),
            asyncio.create_task(self._republish_loop()),
        ]
        if self.faults.offline > 0:
            helpers.append(asyncio.create_task(self._offline_loop()))
        try:
            async for message in client.messages:
                payload = message.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                if message.topic.matches(self.topic(TopicKind.COMMAND)):
                    await self._on_command(data)
                elif message.topic.matches(self.topic(TopicKind.CONFIG)):
                    await self._on_config(data)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    # --- commands -------------------------------------------------------------------------

    async def _on_command(self, payload: bytes) -> None:
        self.stats.commands_received += 1
        # command_duplicated: QoS 1 redelivery; the commandId memory must make it harmless.
        copies = 2 if self._fire("command_duplicated") else 1
        for _ in range(copies):
            await self._apply(self.logic.handle_command(payload, time.time()))

    async def _apply(self, decision: Decision) -> None:
        stats = self.stats
        if isinstance(decision, StartDispense):
            stats.dispenses_performed += 1
            task = asyncio.create_task(self._run_motor(self.logic, decision))
            self._motors.add(task)
            task.add_done_callback(self._motors.discard)
        elif isinstance(decision, Publish):
            self._count(decision)
            for result in decision.results:
                await self._publish_result(result, first=decision.reason is Reason.REFUSED)
        elif isinstance(decision, Acked):
            stats.acks_received += 1
        elif isinstance(decision, InFlight):
            stats.duplicates_suppressed += 1
        elif isinstance(decision, Ignored):
            stats.invalid_payloads += 1
            logger.info("%s: command dropped: %s", self.machine_id, decision.reason)

    def _count(self, decision: Publish) -> None:
        if decision.reason is Reason.DUPLICATE:
            self.stats.duplicates_suppressed += 1
        elif decision.reason is Reason.SYNC:
            self.stats.syncs_received += 1
        else:
            self._wake.set()
            error = decision.results[0].error
            self.stats.expired += error == ResultError.EXPIRED
            self.stats.busy += error == ResultError.BUSY

    async def _on_config(self, payload: bytes) -> None:
        if self.logic.handle_config(payload):
            self.stats.configs_applied += 1
            logger.info("%s: config applied", self.machine_id)
            await self._publish(self.topic(TopicKind.STATUS), self._status_payload(), retain=True)

    # --- motor ----------------------------------------------------------------------------

    async def _run_motor(self, logic: DeviceLogic, start: StartDispense) -> None:
        command = start.command
        actual = float(start.motor_ms)
        if self._fire("slow_motor"):
            actual *= 1.0 + self._rng.random()
        if self._fire("reboot_mid_dispense"):
            await self._motor_sleep(actual * self._rng.uniform(0.1, 0.9))
            self._journal(command.command_id, command.order_id, dropped=False)
            self._reboot()
            return
        ran = min(actual, float(command.timeout_ms))
        await self._motor_sleep(ran)
        success, drop, error = self._motor_outcome(actual > command.timeout_ms)
        self._journal(command.command_id, command.order_id, dropped=success and drop)
        result = logic.finish_dispense(
            command.command_id,
            success=success,
            drop_detected=drop,
            duration_ms=round(ran),
            error=error,
            now=time.time(),
        )
        self._wake.set()
        await self._publish_result(result, first=True)

    def _journal(self, command_id: str, order_id: str, *, dropped: bool) -> None:
        """What physically happened, one line per motor run: the ground truth a chaos test
        compares the backend's books against (the flash keeps only the last 32)."""
        if self.options.state_dir is None:
            return
        line = json.dumps({"commandId": command_id, "orderId": order_id, "dropped": dropped})
        with (self.options.state_dir / f"{self.machine_id}.vends.jsonl").open("a") as journal:
            journal.write(line + "\n")

    async def _motor_sleep(self, motor_ms: float) -> None:
        await asyncio.sleep(motor_ms * self.options.speed / 1000)

    def _motor_outcome(self, timed_out: bool) -> tuple[bool, bool, str | None]:
        if timed_out:
            return False, False, "MOTOR_TIMEOUT"
        if self._fire("jam"):
            return False, False, "JAM"
        if self._fire("no_drop"):
            return True, False, "NO_DROP"
        return True, True, None

    def _reboot(self) -> None:
        """Power loss mid-dispense: drop the link, boot a new DeviceLogic over the same flash.

        The in-progress marker written before the motor started turns into a remembered
        MOTOR_TIMEOUT result during boot, before the device reconnects.
        """
        self.stats.reboots += 1
        self.drop_connection()
        self.logic = self._boot()
        self._rebooted = True
        self._wake.set()
        logger.info("%s: rebooted mid-dispense, bootId %s", self.machine_id, self.boot_id)

    # --- publishing -----------------------------------------------------------------------

    async def _publish_result(self, result: StoredResult, *, first: bool) -> None:
        if first and self._fire("result_lost"):
            return  # stays unacked: backoff or sync re-publishes it
        copies = 2 if self._fire("result_duplicated") else 1
        for _ in range(copies):
            if await self._publish(self.topic(TopicKind.DISPENSE_RESULT), result.to_payload()):
                self.stats.results_published += 1

    async def _publish(
        self, name: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(name, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            logger.debug("%s: publish to %s failed: %s", self.machine_id, name, exc)
            return False
        return True

    async def _republish_loop(self) -> None:
        while True:
            self._wake.clear()
            for result in self.logic.due_results(time.time()):
                await self._publish_result(result, first=False)
            due = self.logic.next_due()
            delay = BACKOFF_CAP_S if due is None else max(0.0, due - time.time())
            # asyncio.timeout: Python 3.11's wait_for can drop a cancel that arrives with a
            # wake (CPython gh-86296), and stopping the machine would then wait forever.
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _telemetry_loop(self) -> None:
        while True:
            await self._publish(self.topic(TopicKind.TELEMETRY), self._telemetry_payload(), qos=0)
            interval = self.logic.telemetry_interval_s(self.options.telemetry_interval_s)
            await asyncio.sleep(max(interval, 0.05))

    def _telemetry_payload(self) -> bytes:
        rng = self._net_rng
        body = {
            "ts": int(self.logic.device_time(time.time())),
            "temperature": round(rng.gauss(4.5, 0.4), 1),
            "humidity": round(rng.uniform(55.0, 65.0), 1),
            "rssi": rng.randint(-80, -50),
            "door": "closed",
            "slots": [
                {"id": slot, "level": level.value}
                for slot, level in self.logic.slot_levels(self.options.slots)
            ],
        }
        return json.dumps(body, separators=(",", ":")).encode()

    async def _offline_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.faults.offline_check_s * self._net_rng.uniform(0.5, 1.5))
            if self._fire("offline"):
                self._offline_until = loop.time() + self.faults.offline_seconds
                logger.info(
                    "%s: going offline for %.0f s", self.machine_id, self.faults.offline_seconds
                )
                self.drop_connection()
                return

    def _fire(self, fault: str) -> bool:
        rate: float = getattr(self.faults, fault)
        # No draw for a disabled fault keeps the sequence of the enabled ones reproducible.
        if rate <= 0.0 or self._rng.random() >= rate:
            return False
        self.stats.faults_fired[fault] += 1
        return True
