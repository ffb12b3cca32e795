"""Command lifecycle after writing: publish bookkeeping, retransmission, giving up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import dispenses, orders, outbox
from vendhub.domain.model import OrderStatus, UnitStatus, check_order_transition
from vendhub.protocol.messages import DispenseCommand
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import dispatch_next, lock_order, settle_unit
from vendhub.services.outbox import OutboxKind, enqueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    kind: OutboxKind
    machine_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dispense_id: str | None


async def pending(ctx: ServiceContext, limit: int = 200) -> list[OutboxItem]:
    stmt = (
        sa.select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit)
    )
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [
        OutboxItem(
            r["id"],
            OutboxKind(r["kind"]),
            r["machine_id"],
            r["topic"],
            r["payload"].encode(),
            r["qos"],
            r["retain"],
            r["dispense_id"],
        )
        for r in rows
    ]


async def still_sendable(ctx: ServiceContext, item: OutboxItem) -> bool:
    """A dispense command whose unit settled or expired is not worth sending."""
    if item.kind is not OutboxKind.DISPENSE or item.dispense_id is None:
        return True
    async with ctx.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(dispenses.c.status, dispenses.c.expires_at).where(
                    dispenses.c.id == item.dispense_id
                )
            )
        ).first()
    return (
        row is not None
        and row.status == UnitStatus.IN_FLIGHT.value
        and (row.expires_at is None or row.expires_at > ctx.clock())
    )


async def mark_done(ctx: ServiceContext, item: OutboxItem, *, sent: bool, error: str = "") -> None:
    """After the broker acknowledged (sent) or we decided not to send: never publish it again."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == item.id)
            .values(
                published_at=now, attempts=outbox.c.attempts + 1, last_error=None if sent else error
            )
        )
        if sent and item.kind is OutboxKind.DISPENSE and item.dispense_id:
            await _command_sent(ctx, conn, item.dispense_id, now)


async def _command_sent(
    ctx: ServiceContext, conn: AsyncConnection, dispense_id: str, now: datetime
) -> None:
    unit = (
        (await conn.execute(sa.select(dispenses).where(dispenses.c.id == dispense_id)))
        .mappings()
        .first()
    )
    if unit is None or unit["status"] != UnitStatus.IN_FLIGHT.value:
        return
    wait = timedelta(milliseconds=unit["timeout_ms"] + ctx.tunables.result_grace_ms)
    await conn.execute(
        sa.update(dispenses)
        .where(dispenses.c.id == dispense_id)
        .values(
            attempts=dispenses.c.attempts + 1,
            command_sent_at=sa.func.coalesce(dispenses.c.command_sent_at, now),
            next_attempt_at=now + wait,
        )
    )
    order = await lock_order(conn, unit["order_id"])
    if order is not None and order["status"] == OrderStatus.PENDING_DISPENSE.value:
        check_order_transition(OrderStatus.PENDING_DISPENSE, OrderStatus.DISPENSING)
        await conn.execute(
            sa.update(orders)
            .where(
                orders.c.id == order["id"], orders.c.status == OrderStatus.PENDING_DISPENSE.value
            )
            .values(status=OrderStatus.DISPENSING.value, updated_at=now)
        )


async def retransmit_due(ctx: ServiceContext, limit: int = 200) -> int:
    """No result by timeoutMs + grace: the same commandId again, within attempts and expiry."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        due = (
            (
                await conn.execute(
                    sa.select(dispenses)
                    .where(
                        dispenses.c.status == UnitStatus.IN_FLIGHT.value,
                        dispenses.c.next_attempt_at <= now,
                        dispenses.c.attempts < ctx.tunables.dispense_max_attempts,
                        dispenses.c.expires_at > now,
                    )
                    .order_by(dispenses.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update()
                )
            )
            .mappings()
            .all()
        )
        for unit in due:
            command = DispenseCommand(
                command_id=unit["id"],
                order_id=unit["order_id"],
                slot=unit["slot_number"],
                timeout_ms=unit["timeout_ms"],
                expires_at=int(unit["expires_at"].timestamp()),
            )
            # Cleared until the publisher confirms this copy went out.
            await conn.execute(
                sa.update(dispenses)
                .where(dispenses.c.id == unit["id"])
                .values(next_attempt_at=None)
            )
            await enqueue(
                conn,
                ctx.tunables.topic_prefix,
                unit["machine_id"],
                command,
                now,
                dispense_id=unit["id"],
            )
            log.info(
                "retransmit command=%s machine=%s attempt=%d",
                unit["id"],
                unit["machine_id"],
                unit["attempts"] + 1,
            )
    if due:
        ctx.wake_outbox()
    return len(due)


async def give_up_due(ctx: ServiceContext, limit: int = 100) -> int:
    """Past expiresAt + timeoutMs + grace no device can still dispense it: fail, owe refund."""
    now = ctx.clock()
    grace = timedelta(milliseconds=ctx.tunables.result_grace_ms)
    async with ctx.engine.connect() as conn:
        candidates = (
            await conn.execute(
                sa.select(dispenses.c.id, dispenses.c.expires_at, dispenses.c.timeout_ms)
                .where(
                    dispenses.c.status == UnitStatus.IN_FLIGHT.value,
                    dispenses.c.expires_at < now - grace,
                )
                .limit(limit)
            )
        ).all()
    given_up = 0
    for c in candidates:
        if c.expires_at + timedelta(milliseconds=c.timeout_ms) + grace >= now:
            continue
        async with ctx.engine.begin() as conn:
            unit = (
                (
                    await conn.execute(
                        sa.select(dispenses).where(dispenses.c.id == c.id).with_for_update()
                    )
                )
                .mappings()
                .first()
            )
            if unit is None or unit["status"] != UnitStatus.IN_FLIGHT.value:
                continue
            error = "NO_RESULT" if unit["attempts"] > 0 else "EXPIRED"
            await settle_unit(
                ctx,
                conn,
                unit,
                dropped=False,
                success=None,
                drop_detected=None,
                duration_ms=None,
                error=error,
            )
            log.warning(
                "gave up command=%s machine=%s order=%s error=%s",
                unit["id"],
                unit["machine_id"],
                unit["order_id"],
                error,
            )
            given_up += 1
    if given_up:
        ctx.wake_outbox()
    return given_up


async def resume_idle_machines(ctx: ServiceContext) -> int:
    """Machines with queued units but nothing in flight (e.g. after a crash) get going again."""
    async with ctx.engine.connect() as conn:
        machine_ids = (
            (
                await conn.execute(
                    sa.select(dispenses.c.machine_id)
                    .where(dispenses.c.status == UnitStatus.QUEUED.value)
                    .distinct()
                )
            )
            .scalars()
            .all()
        )
    started = 0
    for machine_id in machine_ids:
        async with ctx.engine.begin() as conn:
            started += await dispatch_next(ctx, conn, machine_id)
    if started:
        ctx.wake_outbox()
    return started
