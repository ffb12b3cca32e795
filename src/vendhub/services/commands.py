"""Command lifecycle after writing: publish bookkeeping, retransmission, giving up."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import dispenses, outbox
from vendhub.domain.model import UnitFailure, UnitStatus
from vendhub.protocol.messages import DispenseCommand
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import commands_out, dispatch_next, settle_unit
from vendhub.services.outbox import CLAIM_LEASE_S, OutboxItem, OutboxKind, enqueue
from vendhub.services.passes import isolated
from vendhub.services.rows import every, first

__all__ = ["CLAIM_LEASE_S", "OutboxItem"]  # re-exported: callers know them from here

log = logging.getLogger(__name__)


async def pending(ctx: ServiceContext, limit: int = 500) -> list[OutboxItem]:
    """Claim unpublished rows (id order) for CLAIM_LEASE_S, each with whether it is still
    worth sending. SKIP LOCKED plus the lease keep replicas from publishing the same row."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        ids = (
            await conn.scalars(
                sa.select(outbox.c.id)
                .where(
                    outbox.c.published_at.is_(None),
                    sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until <= now),
                )
                .order_by(outbox.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not ids:
            return []
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.id.in_(ids))
            .values(claimed_until=now + timedelta(seconds=CLAIM_LEASE_S))
        )
        rows = await every(
            conn,
            sa.select(
                outbox,
                dispenses.c.status.label("unit_status"),
                dispenses.c.expires_at.label("unit_expires_at"),
                dispenses.c.timeout_ms,
                dispenses.c.order_id,
            )
            .outerjoin(dispenses, dispenses.c.id == outbox.c.dispense_id)
            .where(outbox.c.id.in_(ids))
            .order_by(outbox.c.id),
        )
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
            sendable=_sendable(r, now),
            timeout_ms=r["timeout_ms"] or 0,
            order_id=r["order_id"],
        )
        for r in rows
    ]


async def release(ctx: ServiceContext, items: list[OutboxItem]) -> None:
    """Give claimed rows back (the broker went away mid-batch) so they go out on reconnect."""
    if items:
        async with ctx.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_([i.id for i in items]), outbox.c.published_at.is_(None))
                .values(claimed_until=None)
            )


def _sendable(row: RowMapping, now: datetime) -> bool:
    if row["kind"] != OutboxKind.DISPENSE.value or row["dispense_id"] is None:
        return True
    expires_at = row["unit_expires_at"]
    return row["unit_status"] == UnitStatus.IN_FLIGHT.value and (
        expires_at is None or expires_at > now
    )


async def mark_done(
    ctx: ServiceContext,
    sent: list[OutboxItem],
    skipped: list[OutboxItem],
    *,
    sent_at: list[datetime] | None = None,
) -> None:
    """One transaction for a whole batch: after the broker's PUBACK (sent) or a decision
    not to send (skipped), a row is never published again. `sent_at`: when each sent row was
    really published (a deferred mark, see OutboxPublisher); default now."""
    if not sent and not skipped:
        return
    now = ctx.clock()
    times = sent_at if sent_at is not None else [now] * len(sent)
    async with ctx.engine.begin() as conn:
        pairs = list(zip(sent, times, strict=True))
        units = sorted({i.dispense_id for i in sent if _is_command(i) and i.dispense_id})
        if units:
            # The units first, as a result's transaction takes them (unit, then its outbox
            # rows): those a transaction holds right now are left out. A result closes their
            # rows itself; anything else (a retransmission, a give-up) leaves the row to the
            # poll after its claim (the same commandId again: the device does not dispense
            # twice). Units no longer in flight were closed when they settled.
            mine = set(
                await conn.scalars(
                    sa.select(dispenses.c.id)
                    .where(
                        dispenses.c.id.in_(units),
                        dispenses.c.status == UnitStatus.IN_FLIGHT.value,
                    )
                    .order_by(dispenses.c.id)
                    .with_for_update(skip_locked=True)
                )
            )
            pairs = [(i, at) for i, at in pairs if not _is_command(i) or i.dispense_id in mine]
        if pairs:
            # Conditional: a row its unit's result already closed (settle_unit) keeps that.
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == sa.bindparam("row_id"), outbox.c.published_at.is_(None))
                .values(published_at=sa.bindparam("at"), attempts=outbox.c.attempts + 1),
                [{"row_id": i.id, "at": at} for i, at in pairs],
            )
        if skipped:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_([i.id for i in skipped]))
                .values(published_at=now, last_error="unit settled or expired before sending")
            )
        commands = [(i, at) for i, at in pairs if _is_command(i)]
        if commands:
            await _commands_sent(ctx, conn, commands)


def _is_command(item: OutboxItem) -> bool:
    return item.kind is OutboxKind.DISPENSE and item.dispense_id is not None


async def _commands_sent(
    ctx: ServiceContext, conn: AsyncConnection, items: list[tuple[OutboxItem, datetime]]
) -> None:
    grace = ctx.tunables.result_grace_ms
    await conn.execute(
        sa.update(dispenses)
        .where(
            dispenses.c.id == sa.bindparam("unit_id"),
            dispenses.c.status == UnitStatus.IN_FLIGHT.value,
        )
        .values(
            attempts=dispenses.c.attempts + 1,
            command_sent_at=sa.func.coalesce(
                dispenses.c.command_sent_at,
                sa.bindparam("at", type_=dispenses.c.command_sent_at.type),
            ),
            next_attempt_at=sa.bindparam("retry_at"),
        ),
        [
            {
                "unit_id": i.dispense_id,
                "at": at,
                "retry_at": at + timedelta(milliseconds=i.timeout_ms + grace),
            }
            for i, at in items
        ],
    )
    # The command is out: a waiting order is now dispensing.
    await commands_out(conn, {i.order_id for i, _ in items if i.order_id}, ctx.clock())


async def retransmit_due(ctx: ServiceContext, limit: int = 200) -> int:
    """No result by timeoutMs + grace: the same commandId again, within attempts and expiry.
    One transaction per unit, so one unit that fails does not hold back the others."""
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        due = (
            await conn.scalars(
                sa.select(dispenses.c.id)
                .where(*_retransmit_due(ctx, now))
                .order_by(dispenses.c.next_attempt_at)
                .limit(limit)
            )
        ).all()
    sent = 0
    for unit_id in due:
        sent += bool(
            await isolated(
                ctx, "retransmit", f"command {unit_id}", partial(_retransmit, ctx, unit_id, now)
            )
        )
    if sent:
        ctx.wake_outbox()
    return sent


def _retransmit_due(ctx: ServiceContext, now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        dispenses.c.status == UnitStatus.IN_FLIGHT.value,
        dispenses.c.next_attempt_at <= now,
        dispenses.c.attempts < ctx.tunables.dispense_max_attempts,
        dispenses.c.expires_at > now,
    )


async def _retransmit(ctx: ServiceContext, unit_id: str, now: datetime) -> bool:
    async with ctx.engine.begin() as conn:
        # Re-checked under the lock: a result or another replica may have come first.
        unit = await first(
            conn,
            sa.select(dispenses)
            .where(dispenses.c.id == unit_id, *_retransmit_due(ctx, now))
            .with_for_update(key_share=True),
        )
        if unit is None:
            return False
        command = DispenseCommand(
            command_id=unit["id"],
            order_id=unit["order_id"],
            slot=unit["slot_number"],
            timeout_ms=unit["timeout_ms"],
            expires_at=int(unit["expires_at"].timestamp()),
        )
        # Cleared until the publisher confirms this copy went out.
        await conn.execute(
            sa.update(dispenses).where(dispenses.c.id == unit["id"]).values(next_attempt_at=None)
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
    return True


async def give_up_due(ctx: ServiceContext, limit: int = 100) -> int:
    """Fail units no device can still dispense, each owed a refund:
    in flight past expiresAt + timeoutMs + grace (NO_RESULT, or EXPIRED if never sent), or
    still queued past their queue deadline (EXPIRED: the machine never became free)."""
    now = ctx.clock()
    grace = timedelta(milliseconds=ctx.tunables.result_grace_ms)
    async with ctx.engine.connect() as conn:
        candidates = (
            await conn.execute(
                sa.select(
                    dispenses.c.id,
                    dispenses.c.status,
                    dispenses.c.expires_at,
                    dispenses.c.timeout_ms,
                )
                .where(
                    dispenses.c.status.in_([UnitStatus.IN_FLIGHT.value, UnitStatus.QUEUED.value]),
                    dispenses.c.expires_at < now,
                )
                .order_by(dispenses.c.expires_at)
                .limit(limit)
            )
        ).all()
    given_up = 0
    for c in candidates:
        in_flight = c.status == UnitStatus.IN_FLIGHT.value
        if in_flight and c.expires_at + timedelta(milliseconds=c.timeout_ms) + grace >= now:
            continue
        given_up += (
            await isolated(
                ctx, "give_up", f"command {c.id}", partial(_give_up, ctx, c.id, c.status)
            )
            or 0
        )
    if given_up:
        ctx.wake_outbox()
    return given_up


async def _give_up(ctx: ServiceContext, unit_id: str, expected_status: str) -> int:
    async with ctx.engine.begin() as conn:
        unit = await first(
            conn,
            sa.select(dispenses).where(dispenses.c.id == unit_id).with_for_update(key_share=True),
        )
        if unit is None or unit["status"] != expected_status:
            return 0
        error = (UnitFailure.NO_RESULT if unit["attempts"] > 0 else UnitFailure.EXPIRED).value
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
        "gave up command=%s machine=%s order=%s status=%s error=%s",
        unit["id"],
        unit["machine_id"],
        unit["order_id"],
        expected_status,
        error,
    )
    return 1


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
        started += bool(
            await isolated(
                ctx, "resume", f"machine {machine_id}", partial(_resume_machine, ctx, machine_id)
            )
        )
    if started:
        ctx.wake_outbox()
    return started


async def _resume_machine(ctx: ServiceContext, machine_id: str) -> bool:
    async with ctx.engine.begin() as conn:
        return await dispatch_next(ctx, conn, machine_id)
