"""MQTT intake: validate each message, then hand it to bounded queues and batch writers.

Telemetry has its own lean path: the stream connection (adapters/mqtt/stream.py) hands over
every frame its socket read held in one call (`take_telemetry`), which only appends them to
a bounded list; the writer parses a batch at a time and stores it in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import zlib
from collections.abc import Callable
from datetime import datetime

from vendhub.adapters.mqtt.client import InboundMessage
from vendhub.adapters.mqtt.stream import Frames
from vendhub.metrics import Metrics
from vendhub.protocol.messages import InvalidPayload, parse_result, parse_status, parse_telemetry
from vendhub.protocol.topics import InvalidTopic, TopicKind, parse_topic
from vendhub.services import fleet, results
from vendhub.services.context import ServiceContext
from vendhub.services.fleet import TelemetryReading

log = logging.getLogger(__name__)

# Bounded so a flood waits at the socket (backpressure) instead of growing memory; split
# evenly between the event workers' own queues.
EVENT_QUEUE_SIZE = 1000
# Telemetry frames waiting for the writer (~250 bytes each, so ~12 MB). At this many the
# stream stops reading (the socket's buffer, then the broker's queue hold the rest; Mosquitto
# drops QoS 0 beyond those) and reads again below half of it. Only frames that come another
# way (the aiomqtt connection) beyond twice this are dropped here, counted in
# vendhub_telemetry_dropped_total.
TELEMETRY_QUEUE_SIZE = 50_000
# Machine ids of telemetry topics already checked, kept up to this many.
TOPIC_CACHE_SIZE = 100_000
# Large batches: per-row cost is small, per-transaction cost is what limits SQLite.
TELEMETRY_BATCH = 2000
TELEMETRY_FLUSH_S = 0.2
TELEMETRY_POLL_S = 0.02  # how often a partial batch looks for more within the window
# Results free machines for their next unit: enough workers to keep up beside HTTP work.
# Each machine's results and statuses go to one worker (by a hash of its id), so they are
# applied in the order the broker delivered them: an OFFLINE Last Will followed by the
# device's ONLINE must never be applied the other way round.
EVENT_WORKERS = 8
# Results that arrived together, applied in one transaction (services/results.py).
RESULT_BATCH = 50


class Intake:
    def __init__(self, ctx: ServiceContext, metrics: Metrics) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.shards: list[asyncio.Queue[tuple[str, TopicKind, bytes]]] = [
            asyncio.Queue(EVENT_QUEUE_SIZE // EVENT_WORKERS) for _ in range(EVENT_WORKERS)
        ]
        # Frames as they came off the socket, in three parallel lists (bounded by
        # take_telemetry): bytes and shared datetimes are not tracked by the garbage
        # collector, where a tuple per waiting frame made its full passes measurably costly.
        self._topics: list[bytes] = []
        self._payloads: list[bytes] = []
        self._times: list[datetime] = []
        self._frames_ready = asyncio.Event()
        self._telemetry_idle = asyncio.Event()
        self._telemetry_idle.set()
        self._machine_of: dict[bytes, str] = {}
        self._last_drop_log = 0.0
        self._reading_paused = False
        # Set by the wiring: the telemetry stream's resume() (reading paused while full).
        self.resume_telemetry: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Labelled children looked up once: labels() on every message is measurable.
        self._received = {kind: metrics.messages_in.labels(kind.value) for kind in TopicKind}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._event_worker(shard), name=f"intake-{i}")
            for i, shard in enumerate(self.shards)
        ]
        self._tasks.append(asyncio.create_task(self._telemetry_writer(), name="telemetry"))

    async def stop(self) -> None:
        """Finish what was accepted (bounded wait), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        for shard in self.shards:
            await shard.join()
        await self._telemetry_idle.wait()

    def events_waiting(self) -> int:
        return sum(shard.qsize() for shard in self.shards)

    def shard_of(self, machine_id: str) -> int:
        """The event worker that applies this machine's results and statuses."""
        return zlib.crc32(machine_id.encode()) % len(self.shards)

    def telemetry_backlog(self) -> int:
        return len(self._topics)

    def take_telemetry(self, frames: Frames) -> bool:
        """Called by the stream connection with every frame one socket read held; no await,
        no task, no parsing here. Returns False once TELEMETRY_QUEUE_SIZE frames wait: the
        stream then pauses reading until the writer has taken half of them."""
        self._received[TopicKind.TELEMETRY].inc(len(frames))
        room = 2 * TELEMETRY_QUEUE_SIZE - len(self._topics)
        if len(frames) > room:
            dropped = len(frames) - max(room, 0)
            self.metrics.telemetry_dropped.inc(dropped)
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                log.warning("telemetry queue full: dropped %d reading(s)", dropped)
            frames = frames[: max(room, 0)]
        if frames:
            self._topics.extend([topic for topic, _ in frames])
            self._payloads.extend([payload for _, payload in frames])
            self._times.extend(itertools.repeat(self.ctx.clock(), len(frames)))
            self._telemetry_idle.clear()
            self._frames_ready.set()
        if len(self._topics) >= TELEMETRY_QUEUE_SIZE:
            if not self._reading_paused:
                self._reading_paused = True
                self.metrics.telemetry_paused.inc()
            return False
        return True

    def oversized_telemetry(self, count: int) -> None:
        """Frames the stream skipped unread for their size: invalid telemetry."""
        self.metrics.invalid_payloads.labels(TopicKind.TELEMETRY.value).inc(count)

    async def handle(self, message: InboundMessage) -> None:
        try:
            parsed = parse_topic(self.ctx.tunables.topic_prefix, message.topic)
        except InvalidTopic as exc:
            self.metrics.invalid_payloads.labels("topic").inc()
            log.warning("dropped message on %s: %s", message.topic, exc)
            return
        if parsed.kind is TopicKind.TELEMETRY:
            # Normally on the stream connection; the same path if it comes this way.
            self.take_telemetry([(message.topic.encode(), message.payload)])
            return
        self._received[parsed.kind].inc()
        if parsed.kind in (TopicKind.DISPENSE_RESULT, TopicKind.STATUS):
            shard = self.shards[self.shard_of(parsed.machine_id)]
            await shard.put((parsed.machine_id, parsed.kind, message.payload))

    def _invalid(self, topic: str, kind: TopicKind, exc: Exception) -> None:
        self.metrics.invalid_payloads.labels(kind.value).inc()
        log.warning("dropped invalid payload on %s: %s", topic, exc)

    async def _event_worker(self, shard: asyncio.Queue[tuple[str, TopicKind, bytes]]) -> None:
        while True:
            events = [await shard.get()]
            # Whatever else is already waiting goes with it: results in one transaction.
            while len(events) < RESULT_BATCH and not shard.empty():
                events.append(shard.get_nowait())
            try:
                await self._apply_events(events)
            finally:
                for _ in events:
                    shard.task_done()

    async def _apply_events(self, events: list[tuple[str, TopicKind, bytes]]) -> None:
        """Apply in arrival order: results gathered into one transaction, flushed before a
        status of a machine that has results waiting, so no machine's order changes."""
        arrivals: list[results.Arrival] = []
        for machine_id, kind, payload in events:
            if kind is TopicKind.STATUS and any(m == machine_id for m, _, _ in arrivals):
                await self._apply_results(arrivals)
                arrivals = []
            try:
                if kind is TopicKind.DISPENSE_RESULT:
                    arrivals.append((machine_id, parse_result(payload), payload.decode("utf-8")))
                else:
                    await fleet.apply_status(self.ctx, machine_id, parse_status(payload))
            except InvalidPayload as exc:
                self._invalid(f"{machine_id}/{kind.value}", kind, exc)
            except Exception:
                # A database hiccup must not kill the worker; the device re-sends until acked.
                log.exception("failed to apply %s from %s", kind.value, machine_id)
        if arrivals:
            await self._apply_results(arrivals)

    async def _apply_results(self, arrivals: list[results.Arrival]) -> None:
        for outcome in await results.apply_results(self.ctx, arrivals):
            self.metrics.results.labels(outcome.value).inc()

    async def _telemetry_writer(self) -> None:
        while True:
            batch = await self._next_frames()
            try:
                readings = self._readings(*batch)
                if readings:
                    await fleet.store_telemetry(self.ctx, readings)
            except Exception:
                log.exception("failed to store %d telemetry reading(s)", len(batch[0]))
            finally:
                if not self._topics:
                    self._telemetry_idle.set()

    async def _next_frames(self) -> tuple[list[bytes], list[bytes], list[datetime]]:
        """Wait for frames, then give a partial batch the flush window to fill; returns
        (topics, payloads, received_at) of up to TELEMETRY_BATCH frames."""
        while not self._topics:
            self._frames_ready.clear()
            await self._frames_ready.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TELEMETRY_FLUSH_S
        while len(self._topics) < TELEMETRY_BATCH:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, TELEMETRY_POLL_S))
        batch = (
            self._topics[:TELEMETRY_BATCH],
            self._payloads[:TELEMETRY_BATCH],
            self._times[:TELEMETRY_BATCH],
        )
        del self._topics[:TELEMETRY_BATCH], self._payloads[:TELEMETRY_BATCH]
        del self._times[:TELEMETRY_BATCH]
        if self._reading_paused and len(self._topics) < TELEMETRY_QUEUE_SIZE // 2:
            self._reading_paused = False
            if self.resume_telemetry is not None:
                self.resume_telemetry()
        return batch

    def _readings(
        self, topics: list[bytes], payloads: list[bytes], times: list[datetime]
    ) -> list[TelemetryReading]:
        """Frames → readings; a foreign topic or an invalid payload is dropped and counted."""
        readings: list[TelemetryReading] = []
        machine_of = self._machine_of
        for topic, payload, at in zip(topics, payloads, times, strict=True):
            machine_id = machine_of.get(topic)
            if machine_id is None:
                machine_id = self._telemetry_machine(topic)
                if machine_id is None:
                    continue
            try:
                reading, raw = parse_telemetry(payload)
            except InvalidPayload as exc:
                self._invalid(topic.decode(), TopicKind.TELEMETRY, exc)
                continue
            readings.append(TelemetryReading(machine_id, at, reading, raw, payload))
        return readings

    def _telemetry_machine(self, raw_topic: bytes) -> str | None:
        try:
            topic = raw_topic.decode("utf-8")
            parsed = parse_topic(self.ctx.tunables.topic_prefix, topic)
            if parsed.kind is not TopicKind.TELEMETRY:
                raise InvalidTopic(f"{parsed.kind.value} on the telemetry stream")
        except (UnicodeDecodeError, InvalidTopic) as exc:
            self.metrics.invalid_payloads.labels("topic").inc()
            # The same line as a bad topic on the main connection (handle()).
            shown = raw_topic[:200].decode("utf-8", "backslashreplace")
            log.warning("dropped message on %s: %s", shown, exc)
            return None
        if len(self._machine_of) >= TOPIC_CACHE_SIZE:
            self._machine_of.clear()
        self._machine_of[raw_topic] = parsed.machine_id
        return parsed.machine_id
