"""Applying dispense results from machines: at most once per commandId."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.engine import retry_on_disconnect
from vendhub.adapters.db.fast import Row
from vendhub.adapters.db.tables import dispense_results, dispenses, refunds
from vendhub.domain.model import RefundStatus, UnitStatus
from vendhub.protocol.messages import AckCommand, DispenseResult
from vendhub.services import alerts, outbox
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import correct_late_drop, settle_in_flight, settle_unit
from vendhub.services.outbox import enqueue
from vendhub.services.rows import first

log = logging.getLogger(__name__)


class ResultOutcome(StrEnum):
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    LATE = "LATE"  # a drop reported after we gave up on the command: sold, refund held
    UNKNOWN = "UNKNOWN"  # no such command on this machine
    CONFLICT = "CONFLICT"  # the opposite of the result already applied for this command
    COPY = "COPY"  # commandId-less, and too soon after the command to be its own result


# One result as it arrived: (machine id, parsed result, raw payload).
Arrival = tuple[str, DispenseResult, str]


async def apply_result(
    ctx: ServiceContext, machine_id: str, result: DispenseResult, raw: str
) -> ResultOutcome:
    [outcome] = await _apply_in_one_transaction(ctx, [(machine_id, result, raw)])
    return outcome


async def apply_results(ctx: ServiceContext, batch: list[Arrival]) -> list[ResultOutcome]:
    """Results that arrived together, applied in one transaction; their acks go out after
    its commit. If the batch fails as a whole, each result is applied on its own, so one bad
    result costs only itself: it is logged and left out (its device re-sends until acked)."""
    if len(batch) > 1:
        try:
            return await _apply_in_one_transaction(ctx, batch)
        except Exception as exc:
            log.warning("batch of %d results failed (%s); applying each alone", len(batch), exc)
    outcomes: list[ResultOutcome] = []
    for machine_id, result, raw in batch:
        try:
            outcomes.append(await apply_result(ctx, machine_id, result, raw))
        except Exception:
            log.exception(
                "failed to apply result command=%s from %s", result.command_id, machine_id
            )
    return outcomes


async def _apply_in_one_transaction(
    ctx: ServiceContext, batch: list[Arrival]
) -> list[ResultOutcome]:
    # Machines in one global order (stable: a machine's results keep their order), so two
    # batches never lock two machines' rows in opposite orders.
    order = sorted(range(len(batch)), key=lambda n: batch[n][0])
    with outbox.handing_off(ctx) as handed:
        applied = await retry_on_disconnect(partial(_apply_all, ctx, [batch[n] for n in order]))
    outcomes: list[ResultOutcome] = [ResultOutcome.UNKNOWN] * len(batch)
    for n, outcome in zip(order, applied, strict=True):
        outcomes[n] = outcome
        machine_id, result, _ = batch[n]
        log.info(
            "result machine=%s command=%s order=%s outcome=%s",
            machine_id,
            result.command_id,
            result.order_id,
            outcome.value,
        )
    outbox.hand_off(ctx, handed)
    return outcomes


async def _apply_all(ctx: ServiceContext, batch: list[Arrival]) -> list[ResultOutcome]:
    async with ctx.engine.begin() as conn:
        return [
            await _apply_and_record(ctx, conn, machine_id, result, raw)
            for machine_id, result, raw in batch
        ]


# The audit row of every result received, whatever it led to.
_RECORD = fast.Query(
    lambda: sa.insert(dispense_results),
    columns=(
        "machine_id",
        "command_id",
        "order_id",
        "slot_number",
        "outcome",
        "payload",
        "received_at",
        "dispense_id",
        "fingerprint",
    ),
)


async def _apply_and_record(
    ctx: ServiceContext, conn: AsyncConnection, machine_id: str, result: DispenseResult, raw: str
) -> ResultOutcome:
    fingerprint = _fingerprint(result)
    if result.command_id:
        # The usual result: its unit is in flight, settled in one statement where possible.
        unit = await settle_in_flight(
            ctx,
            conn,
            machine_id,
            result.command_id,
            order_id=result.order_id,
            slot_number=result.slot,
            **_settlement(result),
        )
        if unit is not None:
            outcome = ResultOutcome.APPLIED
        else:
            unit = await _by_command(conn, machine_id, result.command_id)
            outcome = await _apply(ctx, conn, machine_id, unit, result)
    else:
        unit, outcome = await _apply_without_command_id(ctx, conn, machine_id, result, fingerprint)
    record = {
        "machine_id": machine_id,
        "command_id": result.command_id,
        "order_id": result.order_id,
        "slot_number": result.slot,
        "outcome": outcome.value,
        "payload": raw,
        "received_at": ctx.clock(),
        "dispense_id": unit["id"] if unit is not None else None,
        "fingerprint": fingerprint,
    }
    if unit is None or outcome in (ResultOutcome.UNKNOWN, ResultOutcome.COPY):
        await _RECORD.count(conn, **record)
        return outcome
    # Acknowledged only once the outcome is committed (this transaction); on PostgreSQL the
    # ack's outbox row and the result's audit row are one statement.
    along = (dispense_results, record) if fast.writes_in_ctes(conn) else None
    if along is None:
        await _RECORD.count(conn, **record)
    await enqueue(
        conn,
        ctx.tunables.topic_prefix,
        machine_id,
        AckCommand(command_id=unit["id"]),
        ctx.clock(),
        along=along,
    )
    return outcome


class _Settlement(TypedDict):
    dropped: bool
    success: bool | None
    drop_detected: bool | None
    duration_ms: int | None
    error: str | None


def _settlement(result: DispenseResult) -> _Settlement:
    return {
        "dropped": result.dropped,
        "success": result.success,
        "drop_detected": result.drop_detected,
        "duration_ms": result.duration_ms,
        "error": None if result.dropped else (result.error or "NO_DROP"),
    }


def _fingerprint(result: DispenseResult) -> str:
    """What a result says, whatever its bytes: equal fingerprints are the same report."""
    return (
        f"{int(result.success)}|{int(result.drop_detected)}|{result.duration_ms}|{result.error}"
    )[:120]


async def _by_command(conn: AsyncConnection, machine_id: str, command_id: str) -> Row | None:
    stmt = sa.select(dispenses).where(
        dispenses.c.machine_id == machine_id, dispenses.c.id == command_id
    )
    return await first(conn, stmt.with_for_update(key_share=True))


async def _apply_without_command_id(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    result: DispenseResult,
    fingerprint: str,
) -> tuple[Row | None, ResultOutcome]:
    """A seed-era device names no commandId: the result is matched to the unit in flight for
    (machine, orderId, slot), but only when it cannot be a copy of an earlier result."""
    last = await first(
        conn,
        sa.select(dispense_results.c.dispense_id, dispense_results.c.fingerprint)
        .where(
            dispense_results.c.machine_id == machine_id,
            dispense_results.c.order_id == result.order_id,
            dispense_results.c.slot_number == result.slot,
            dispense_results.c.command_id.is_(None),
            dispense_results.c.outcome == ResultOutcome.APPLIED.value,
        )
        .order_by(dispense_results.c.id.desc())
        .limit(1),
    )
    if last is not None and last["fingerprint"] == fingerprint and last["dispense_id"]:
        # The same report again (QoS 1 redelivery, a re-publish): it was applied already.
        return await _by_command(conn, machine_id, last["dispense_id"]), ResultOutcome.DUPLICATE
    unit = await first(
        conn,
        sa.select(dispenses)
        .where(
            dispenses.c.machine_id == machine_id,
            dispenses.c.order_id == result.order_id,
            dispenses.c.slot_number == result.slot,
            dispenses.c.status == UnitStatus.IN_FLIGHT.value,
        )
        .order_by(dispenses.c.id)
        .limit(1)
        .with_for_update(key_share=True),
    )
    if unit is not None and _too_soon(ctx, unit, result):
        log.warning(
            "result machine=%s order=%s slot=%s: %s ms after the command, reports %s ms; a copy",
            machine_id,
            result.order_id,
            result.slot,
            int((ctx.clock() - unit["dispatched_at"]).total_seconds() * 1000),
            result.duration_ms,
        )
        return None, ResultOutcome.COPY
    return unit, await _apply(ctx, conn, machine_id, unit, result)


def _too_soon(ctx: ServiceContext, unit: Row, result: DispenseResult) -> bool:
    """A motor that ran durationMs cannot report sooner than that after the command left."""
    sent: datetime | None = unit["dispatched_at"]
    if sent is None or result.duration_ms is None:
        return False
    return ctx.clock() - sent < timedelta(milliseconds=result.duration_ms)


async def _apply(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    unit: Row | None,
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
        await settle_unit(ctx, conn, unit, **_settlement(result))
        return ResultOutcome.APPLIED
    if status is UnitStatus.FAILED and unit["success"] is None and result.dropped:
        return await _late_drop(ctx, conn, machine_id, unit, result)
    if status is UnitStatus.QUEUED:
        await _alert(
            ctx,
            conn,
            machine_id,
            "UNKNOWN_RESULT",
            f"result for command {unit['id']} that was never sent",
        )
        return ResultOutcome.UNKNOWN
    if (status is UnitStatus.DROPPED) != result.dropped:
        return await _conflict(ctx, conn, machine_id, unit, result)
    return ResultOutcome.DUPLICATE


async def _late_drop(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    unit: Row,
    result: DispenseResult,
) -> ResultOutcome:
    """We gave up (and owe a refund) but the machine says it dropped: it is sold, stock is
    corrected, and a refund not yet paid waits for an operator to release or cancel it."""
    refund_status, stocked = await correct_late_drop(
        ctx, conn, unit, drop_detected=result.drop_detected, duration_ms=result.duration_ms
    )
    if refund_status == RefundStatus.HELD.value:
        fate = "its refund is held: release or cancel it"
    elif refund_status == RefundStatus.SUCCEEDED.value:
        fate = "its refund was already paid: the customer has the item and the money"
    else:
        fate = "no refund was owed for it"
    if not stocked:
        fate += "; counted stock could not follow (every unit is reserved): count the slot"
    refund_id = await conn.scalar(
        sa.select(refunds.c.id).where(refunds.c.dispense_id == unit["id"])
    )
    await _alert(
        ctx,
        conn,
        machine_id,
        "LATE_RESULT",
        f"unit {unit['id']} of order {unit['order_id']} on machine {machine_id} reported "
        f"dropped after it was given up; {fate}",
        severity=alerts.Severity.CRITICAL,
        details={
            "order_id": unit["order_id"],
            "command_id": unit["id"],
            "refund_id": refund_id,
            "refund_status": refund_status,
            "stock_corrected": stocked,
        },
    )
    return ResultOutcome.LATE


async def _conflict(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    unit: Row,
    result: DispenseResult,
) -> ResultOutcome:
    """Two opposite results for one command: the first stands, a human looks."""
    applied = "dropped" if unit["status"] == UnitStatus.DROPPED.value else "failed"
    reported = "dropped" if result.dropped else f"failed ({result.error or 'NO_DROP'})"
    await _alert(
        ctx,
        conn,
        machine_id,
        "CONFLICTING_RESULT",
        f"machine {machine_id} reported command {unit['id']} of order {unit['order_id']} "
        f"{reported}, but it was already {applied}; the first result stands",
        severity=alerts.Severity.CRITICAL,
        details={
            "order_id": unit["order_id"],
            "command_id": unit["id"],
            "applied": applied,
            "reported": reported,
        },
    )
    return ResultOutcome.CONFLICT


async def _alert(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    kind: str,
    message: str,
    severity: alerts.Severity = alerts.Severity.WARNING,
    details: dict[str, Any] | None = None,
) -> None:
    await alerts.record(
        conn,
        machine_id=machine_id,
        kind=kind,
        message=message,
        severity=severity,
        now=ctx.clock(),
        details=details,
    )
