"""Applying dispense results from machines: at most once per commandId."""

from __future__ import annotations

import logging
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import dispense_results, dispenses, machine_events
from vendhub.domain.model import UnitStatus
from vendhub.protocol.messages import AckCommand, DispenseResult
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import settle_unit
from vendhub.services.outbox import enqueue

log = logging.getLogger(__name__)


class ResultOutcome(StrEnum):
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    LATE = "LATE"  # arrived after we gave up on the command
    UNKNOWN = "UNKNOWN"  # no such command on this machine


async def apply_result(
    ctx: ServiceContext, machine_id: str, result: DispenseResult, raw: str
) -> ResultOutcome:
    async with ctx.engine.begin() as conn:
        unit = await _find_unit(conn, machine_id, result)
        outcome = await _apply(ctx, conn, machine_id, unit, result)
        await conn.execute(
            sa.insert(dispense_results).values(
                machine_id=machine_id,
                command_id=result.command_id,
                order_id=result.order_id,
                slot_number=result.slot,
                outcome=outcome.value,
                payload=raw,
                received_at=ctx.clock(),
            )
        )
        if unit is not None and outcome is not ResultOutcome.UNKNOWN:
            # Acknowledged only once the outcome is committed (this transaction).
            await enqueue(
                conn,
                ctx.tunables.topic_prefix,
                machine_id,
                AckCommand(command_id=unit["id"]),
                ctx.clock(),
            )
    log.info(
        "result machine=%s command=%s order=%s outcome=%s",
        machine_id,
        result.command_id,
        result.order_id,
        outcome.value,
    )
    ctx.wake_outbox()
    return outcome


async def _find_unit(
    conn: AsyncConnection, machine_id: str, result: DispenseResult
) -> RowMapping | None:
    stmt = sa.select(dispenses).where(dispenses.c.machine_id == machine_id)
    if result.command_id:
        stmt = stmt.where(dispenses.c.id == result.command_id)
    else:
        # A device built to the seed sends no commandId: match the unit in flight.
        stmt = stmt.where(
            dispenses.c.order_id == result.order_id,
            dispenses.c.slot_number == result.slot,
            dispenses.c.status == UnitStatus.IN_FLIGHT.value,
        )
    return (await conn.execute(stmt.with_for_update(key_share=True))).mappings().first()


async def _apply(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    unit: RowMapping | None,
    result: DispenseResult,
) -> ResultOutcome:
    if unit is None or unit["order_id"] != result.order_id or unit["slot_number"] != result.slot:
        await _alert(
            ctx,
            conn,
            machine_id,
            "UNKNOWN_RESULT",
            f"result for unknown command {result.command_id} order {result.order_id}",
        )
        return ResultOutcome.UNKNOWN
    status = UnitStatus(unit["status"])
    if status is UnitStatus.IN_FLIGHT:
        await settle_unit(
            ctx,
            conn,
            unit,
            dropped=result.dropped,
            success=result.success,
            drop_detected=result.drop_detected,
            duration_ms=result.duration_ms,
            error=None if result.dropped else (result.error or "NO_DROP"),
        )
        return ResultOutcome.APPLIED
    if status is UnitStatus.FAILED and unit["success"] is None and result.dropped:
        # We gave up (and owe a refund) but the machine says it dropped: a human decides.
        await _alert(
            ctx,
            conn,
            machine_id,
            "LATE_RESULT",
            f"unit {unit['id']} of order {unit['order_id']} reported dropped after "
            "it was given up; refund may be owed wrongly",
            severity="critical",
        )
        return ResultOutcome.LATE
    if status is UnitStatus.QUEUED:
        await _alert(
            ctx,
            conn,
            machine_id,
            "UNKNOWN_RESULT",
            f"result for command {unit['id']} that was never sent",
        )
        return ResultOutcome.UNKNOWN
    return ResultOutcome.DUPLICATE


async def _alert(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    kind: str,
    message: str,
    severity: str = "warning",
) -> None:
    log.warning("alert machine=%s %s: %s", machine_id, kind, message)
    await conn.execute(
        sa.insert(machine_events).values(
            machine_id=machine_id,
            event_type=kind,
            severity=severity,
            message=message,
            created_at=ctx.clock(),
        )
    )
