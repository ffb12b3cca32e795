"""Outbox publisher: sends committed commands to the broker, marks them sent after the PUBACK."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from vendhub.adapters.mqtt.client import MqttClient, MqttNotConnected, MqttPublishError
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import ServiceContext
from vendhub.services.outbox import OutboxItem

log = logging.getLogger(__name__)

# Safety net: rows written by another process (CLI, another replica) are found by polling.
POLL_INTERVAL_S = 1.0
# Handed-off commands are marked sent this long after their publish, many in one transaction,
# and not at all if their result came first (the result's transaction closes them). Far below
# CLAIM_LEASE_S: until the mark the row stays claimed, and if this process dies before it,
# the poll sends the command again once the claim lapses (same commandId: the device does
# not dispense twice, it re-publishes its result).
MARK_DELAY_S = 1.0


class OutboxPublisher:
    def __init__(
        self,
        ctx: ServiceContext,
        mqtt: MqttClient,
        metrics: Metrics,
        *,
        mark_delay_s: float = MARK_DELAY_S,
    ) -> None:
        self.ctx = ctx
        self.mqtt = mqtt
        self.metrics = metrics
        self.mark_delay_s = mark_delay_s
        self._wake = asyncio.Event()
        # Rows committed by this process, published without waiting for the poll. Bounded by
        # what the edge admits (webhooks beyond WEBHOOK_MAX_INFLIGHT are shed).
        self._handed: asyncio.Queue[OutboxItem] = asyncio.Queue()
        # Published, not yet marked: outbox id -> (row, when the broker acked it).
        self._marks: dict[int, tuple[OutboxItem, datetime]] = {}
        self._marker: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def hand_off(self, items: Sequence[Any]) -> None:
        """Committed rows, already claimed at insert: published by `run_handoffs` at once."""
        for item in items:
            if item.acks is not None:
                # Its result is committed, and closed the command's row: no mark needed.
                self._forget(item.acks)
            self._handed.put_nowait(item)

    def _forget(self, dispense_id: str) -> None:
        for row_id in [k for k, (i, _) in self._marks.items() if i.dispense_id == dispense_id]:
            del self._marks[row_id]

    @property
    def marks_pending(self) -> int:
        return len(self._marks)

    async def run_handoffs(self) -> None:
        try:
            while True:
                batch = [await self._handed.get()]
                while not self._handed.empty():
                    batch.append(self._handed.get_nowait())
                try:
                    await self.publish_handed(batch)
                except Exception:
                    # They stay claimed: the outbox poll sends them once the claim lapses.
                    log.exception(
                        "hand-off of %d row(s) failed; the outbox poll retries", len(batch)
                    )
                finally:
                    for _ in batch:
                        self._handed.task_done()
        finally:
            # Stopping: mark what was published (a crash instead leaves it to the poll).
            if self._marker is not None:
                self._marker.cancel()
            with contextlib.suppress(Exception):
                await self.flush_marks()

    async def drained(self) -> None:
        """Every row handed off so far is published and marked (or given back)."""
        await self._handed.join()

    async def publish_handed(self, items: list[OutboxItem]) -> int:
        """Publish; the marks follow after `mark_delay_s` (see MARK_DELAY_S); unsent rows go
        back to the poll at once."""
        sent, complete = await self._publish_batch(items)
        at = self.ctx.clock()
        for item in sent:
            if not item.premarked:
                self._marks[item.id] = (item, at)
        if self._marks and self._marker is None:
            self._marker = asyncio.create_task(self._mark_later(), name="outbox-marks")
        if not complete:
            sent_ids = {i.id for i in sent}
            await commands.release(self.ctx, [i for i in items if i.id not in sent_ids])
            self.wake()
        return len(sent)

    async def _mark_later(self) -> None:
        try:
            while self._marks:
                await asyncio.sleep(self.mark_delay_s)
                try:
                    await self.flush_marks()
                except Exception:
                    # They stay claimed: the poll sends them again after the lease (same
                    # commandId: the device does not dispense twice).
                    log.exception("marking published rows failed; the outbox poll re-sends them")
        finally:
            self._marker = None

    async def flush_marks(self) -> int:
        """Mark every published row now, each with its real publish time; one transaction."""
        if not self._marks:
            return 0
        marks, self._marks = list(self._marks.values()), {}
        await commands.mark_done(
            self.ctx, [i for i, _ in marks], [], sent_at=[at for _, at in marks]
        )
        return len(marks)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.publish_pending()
            except Exception:
                log.exception("outbox pass failed; retrying")
            # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for drops a
            # cancellation that comes in the same loop iteration as a wake (CPython
            # gh-86296), and this loop then outlived the Container.stop() awaiting it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL_S):
                    await self._wake.wait()

    async def publish_pending(self) -> int:
        """Publish every pending row, a batch at a time; stop early if the broker is gone."""
        total = 0
        while True:
            items = await commands.pending(self.ctx)
            if not items:
                return total
            sendable = [i for i in items if i.sendable]
            sent, complete = await self._publish_batch(sendable)
            await commands.mark_done(self.ctx, sent, [i for i in items if not i.sendable])
            total += len(sent)
            if not complete:
                sent_ids = {i.id for i in sent}
                await commands.release(self.ctx, [i for i in sendable if i.id not in sent_ids])
                await self.mqtt.wait_connected(within_s=5)
                return total

    async def _publish_batch(self, items: list[OutboxItem]) -> tuple[list[OutboxItem], bool]:
        """Publishes concurrently (in order on the wire); returns those the broker acked."""
        outcomes = await asyncio.gather(
            *(self.mqtt.publish(i.topic, i.payload, i.qos, i.retain) for i in items),
            return_exceptions=True,
        )
        sent: list[OutboxItem] = []
        complete = True
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is None:
                sent.append(item)
                self.metrics.messages_out.labels(item.kind.value).inc()
            elif isinstance(outcome, MqttNotConnected | MqttPublishError):
                # Stays in the outbox; resumed when the connection is back.
                complete = False
            elif not isinstance(outcome, Exception):
                raise outcome  # cancellation
            else:
                # This row only: it stays claimed, so it is tried again once its lease
                # (CLAIM_LEASE_S) lapses, and the rest of the batch goes on.
                self.ctx.row_failed("outbox")
                detail = (str(outcome).splitlines() or [""])[0][:300]
                log.error(
                    "outbox pass: row %s to %s failed, will retry after its lease: %s: %s",
                    item.id,
                    item.topic,
                    type(outcome).__name__,
                    detail,
                )
        if not complete:
            log.info("outbox paused: %d of %d published; broker unavailable", len(sent), len(items))
        return sent, complete
