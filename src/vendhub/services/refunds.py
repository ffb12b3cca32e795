"""The refund ledger: what each order was paid, kept and owes back, and paying it out once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.fast import Row
from vendhub.adapters.db.tables import (
    dispenses,
    orders,
    payment_receipts,
    payments,
    refunds,
)
from vendhub.domain.model import (
    OrderStatus,
    RefundStatus,
    UnitStatus,
    check_refund_transition,
    refund_owed,
)
from vendhub.domain.payments import PaymentStatus
from vendhub.services import alerts, dispatch
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.errors import Conflict, NotFound
from vendhub.services.ids import new_id
from vendhub.services.passes import isolated
from vendhub.services.ports import GatewayError, Notification, PaymentProvider, RefundRequest
from vendhub.services.rows import every, first
from vendhub.services.views import Slice, Window

log = logging.getLogger(__name__)

PENDING = RefundStatus.PENDING.value
SUCCEEDED = RefundStatus.SUCCEEDED.value
FAILED = RefundStatus.FAILED.value
HELD = RefundStatus.HELD.value
CANCELLED = RefundStatus.CANCELLED.value
# Refunds that are paid or will be unless a human intervenes: they use up the refundable money.
COMMITTED = (PENDING, SUCCEEDED, HELD)
STILL_DISPENSING = (OrderStatus.PAID, OrderStatus.PENDING_DISPENSE, OrderStatus.DISPENSING)
IN_PLAY = (UnitStatus.QUEUED.value, UnitStatus.IN_FLIGHT.value)


# --- reading the ledger --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ledger:
    """One order's money, from its rows only (payment_receipts, dispenses, refunds)."""

    paid: int  # every payment the gateway reported, any transaction
    kept: int  # price of the units that dropped: what the customer pays for
    in_play: int  # price of the units that may still drop
    refunded: int  # refunds that went back (ours and the gateway's)
    committed: int  # refunds paid, being paid or held
    held: int  # refunds waiting for an operator's decision

    @property
    def owed(self) -> int:
        return refund_owed(self.paid, self.kept, self.in_play, self.refunded)

    @property
    def refundable(self) -> int:
        """Room for a new refund: owed and not yet covered by a pending or held one."""
        return max(0, self.paid - self.kept - self.in_play - self.committed)


def _sum(column: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(column), 0)


async def ledger(conn: AsyncConnection, order_id: str) -> Ledger:
    paid = await conn.scalar(
        sa.select(_sum(payment_receipts.c.amount)).where(payment_receipts.c.order_id == order_id)
    )
    units = (
        await conn.execute(
            sa.select(
                _sum(
                    sa.case(
                        (dispenses.c.status == UnitStatus.DROPPED.value, dispenses.c.unit_price),
                        else_=0,
                    )
                ),
                _sum(sa.case((dispenses.c.status.in_(IN_PLAY), dispenses.c.unit_price), else_=0)),
            ).where(dispenses.c.order_id == order_id)
        )
    ).one()
    money = (
        await conn.execute(
            sa.select(
                _sum(sa.case((refunds.c.status == SUCCEEDED, refunds.c.amount), else_=0)),
                _sum(sa.case((refunds.c.status.in_(COMMITTED), refunds.c.amount), else_=0)),
                _sum(sa.case((refunds.c.status == HELD, refunds.c.amount), else_=0)),
            ).where(refunds.c.order_id == order_id)
        )
    ).one()
    return Ledger(
        paid=int(paid or 0),
        kept=int(units[0]),
        in_play=int(units[1]),
        refunded=int(money[0]),
        committed=int(money[1]),
        held=int(money[2]),
    )


# --- owing ---------------------------------------------------------------------------------


async def owe(
    conn: AsyncConnection,
    order_id: str,
    *,
    key: str,
    amount: int,
    reason: str,
    now: datetime,
    dispense_id: str | None = None,
    receipt_id: str | None = None,
) -> int:
    """Write a PENDING refund for `amount`, capped by what the order can still refund; the
    caller holds the order's lock. Returns the amount owed (0: nothing to refund, no row)."""
    amount = min(amount, (await ledger(conn, order_id)).refundable)
    if amount <= 0:
        # A zero-price unit, or money the gateway already gave back: nothing is owed.
        log.info("refund %s order=%s: nothing to refund", key, order_id)
        return 0
    await conn.execute(
        sa.insert(refunds).values(
            id=new_id(),
            order_id=order_id,
            dispense_id=dispense_id,
            receipt_id=receipt_id,
            refund_key=key[:64],
            amount=amount,
            status=PENDING,
            reason=reason[:64],
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
    )
    return amount


async def owe_unit_refund(conn: AsyncConnection, unit: Row, reason: str, now: datetime) -> int:
    # refund_key is deterministic per unit so no retry anywhere can refund it twice.
    return await owe(
        conn,
        unit["order_id"],
        key=f"refund-{unit['id']}",
        amount=int(unit["unit_price"]),
        reason=reason,
        now=now,
        dispense_id=unit["id"],
    )


async def owe_payment_back(
    conn: AsyncConnection, order_id: str, receipt: Row, *, late: bool, now: datetime
) -> int:
    """A payment the order does not need (it was closed, or already paid): owed back once."""
    n = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(payment_receipts)
        .where(payment_receipts.c.order_id == order_id)
    )
    if late:
        # The first late payment keeps the key it always had.
        late_before = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(refunds)
            .where(refunds.c.order_id == order_id, refunds.c.reason == "LATE_PAYMENT")
        )
        key = f"late-{order_id}" if not late_before else f"late-{order_id}-{n}"
    else:
        key = f"extra-{order_id}-{n}"
    return await owe(
        conn,
        order_id,
        key=key,
        amount=int(receipt["amount"]),
        reason="LATE_PAYMENT" if late else "EXTRA_PAYMENT",
        now=now,
        receipt_id=receipt["id"],
    )


# --- paying out ----------------------------------------------------------------------------


async def execute_due_refunds(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, limit: int = 20
) -> int:
    """Try every refund whose time has come; returns how many succeeded."""
    async with ctx.engine.connect() as conn:
        due = (
            await conn.scalars(
                sa.select(refunds.c.id)
                .where(refunds.c.status == PENDING, _due(ctx.clock()))
                .order_by(refunds.c.next_attempt_at, refunds.c.id)
                .limit(limit)
            )
        ).all()
    done = 0
    for refund_id in due:
        done += bool(
            await isolated(
                ctx,
                "refunds",
                f"refund {refund_id}",
                partial(execute_refund, ctx, provider, policy, refund_id),
            )
        )
    return done


async def execute_refund(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, refund_id: str
) -> bool:
    row = await _claim(ctx, policy, refund_id)
    if row is None:
        return False  # not due, or another worker holds it
    request = RefundRequest(
        order_id=row["order_id"],
        refund_key=row["refund_key"],
        amount=row["amount"],
        reason=f"vendhub: {row['reason']}"[:255],
        transaction_id=await _other_transaction(ctx, row),
    )
    try:
        result = await provider.refund(request)
    except GatewayError as exc:
        await _record_failure(ctx, policy, row, exc)
        return False
    async with ctx.engine.begin() as conn:
        await mark_succeeded(ctx, conn, row["id"], result.provider_ref)
    log.info(
        "refund order=%s key=%s amount=%s succeeded",
        row["order_id"],
        row["refund_key"],
        row["amount"],
    )
    return True


async def _other_transaction(ctx: ServiceContext, row: Row) -> str | None:
    """The transaction a payment-back refund returns, unless it is the order's first (then the
    order id names it, as for every other refund)."""
    if row["receipt_id"] is None:
        return None
    async with ctx.engine.connect() as conn:
        receipts = await every(
            conn,
            sa.select(payment_receipts.c.id, payment_receipts.c.transaction_id)
            .where(payment_receipts.c.order_id == row["order_id"])
            .order_by(payment_receipts.c.received_at, payment_receipts.c.id),
        )
    if not receipts or receipts[0]["id"] == row["receipt_id"]:
        return None
    return next((str(r["transaction_id"]) for r in receipts if r["id"] == row["receipt_id"]), None)


def _due(now: datetime) -> sa.ColumnElement[bool]:
    # A row written without a next attempt time (by any code path) is due at once.
    return sa.or_(refunds.c.next_attempt_at.is_(None), refunds.c.next_attempt_at <= now)


async def _claim(ctx: ServiceContext, policy: PaymentPolicy, refund_id: str) -> Row | None:
    """Take the row for one attempt: a conditional update only one worker can win."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        won = await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == PENDING, _due(now))
            .values(
                attempts=refunds.c.attempts + 1,
                next_attempt_at=now + timedelta(seconds=policy.lease_s),
                updated_at=now,
            )
        )
        if won.rowcount != 1:
            return None
        return await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))


async def _record_failure(
    ctx: ServiceContext, policy: PaymentPolicy, row: Row, exc: GatewayError
) -> None:
    now = ctx.clock()
    attempts = int(row["attempts"])
    # Timeouts and 5xx may hide a refund that happened; the same refund_key makes the
    # retry safe, so those are retried for as long as it takes. Refusals are bounded.
    give_up = not exc.retryable and attempts >= policy.refund_max_attempts
    log.warning(
        "refund order=%s key=%s attempt=%s failed (%s): %s",
        row["order_id"],
        row["refund_key"],
        attempts,
        "giving up" if give_up else "will retry",
        exc,
    )
    values: dict[str, Any] = {"last_error": str(exc)[:1000], "updated_at": now}
    if give_up:
        check_refund_transition(RefundStatus.PENDING, RefundStatus.FAILED)
        values.update(status=FAILED, next_attempt_at=None)
    else:
        values["next_attempt_at"] = now + timedelta(seconds=policy.backoff(attempts))
    async with ctx.engine.begin() as conn:
        changed = await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == row["id"], refunds.c.status == PENDING)
            .values(**values)
        )
        if give_up and changed.rowcount == 1:
            await _alert(
                ctx,
                conn,
                row,
                "REFUND_FAILED",
                f"refund {row['refund_key']} of Rp {row['amount']} for order {row['order_id']} "
                f"was refused by the gateway; pay it back by hand ({str(exc)[:200]})",
            )


async def _alert(
    ctx: ServiceContext, conn: AsyncConnection, row: Row, kind: str, message: str
) -> None:
    machine_id = await conn.scalar(
        sa.select(orders.c.machine_id).where(orders.c.id == row["order_id"])
    )
    await alerts.record(
        conn,
        machine_id=machine_id or "-",
        kind=kind,
        message=message,
        severity=alerts.Severity.CRITICAL,
        now=ctx.clock(),
        details={
            "order_id": row["order_id"],
            "refund_id": row["id"],
            "refund_key": row["refund_key"],
            "amount": row["amount"],
        },
    )


async def mark_succeeded(
    ctx: ServiceContext, conn: AsyncConnection, refund_id: str, provider_ref: str | None
) -> bool:
    """Book a refund as paid out, once; a fully refunded FAILED order becomes REFUNDED."""
    row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    # The order is locked first, as everywhere else, so refund and dispense paths agree.
    order = await dispatch.lock_order(conn, row["order_id"])
    if order is None:
        raise NotFound(f"order {row['order_id']} not found")
    if row["status"] == SUCCEEDED:
        return False
    check_refund_transition(RefundStatus(row["status"]), RefundStatus.SUCCEEDED)
    now = ctx.clock()
    changed = await conn.execute(
        sa.update(refunds)
        .where(refunds.c.id == refund_id, refunds.c.status != SUCCEEDED)
        .values(
            status=SUCCEEDED,
            provider_ref=(provider_ref or "")[:64] or None,
            completed_at=now,
            next_attempt_at=None,
            updated_at=now,
        )
    )
    if changed.rowcount != 1:
        return False
    await _refresh_order(conn, order, now)
    return True


async def _refresh_order(conn: AsyncConnection, order: Row, now: datetime) -> None:
    """orders.refunded_amount and the statuses follow the ledger rows."""
    money = await ledger(conn, order["id"])
    fully = money.paid > 0 and money.refunded >= money.paid
    if order["status"] == OrderStatus.FAILED.value and fully:
        await dispatch.set_order_status(
            conn, order, OrderStatus.REFUNDED, now, refunded_amount=money.refunded
        )
    else:
        await conn.execute(
            sa.update(orders)
            .where(orders.c.id == order["id"])
            .values(refunded_amount=money.refunded, updated_at=now)
        )
    if fully:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order["id"])
            .values(status=PaymentStatus.REFUNDED.value, updated_at=now)
        )


# --- what the gateway reports --------------------------------------------------------------


async def record_gateway_refunds(
    ctx: ServiceContext, conn: AsyncConnection, order: Row, note: Notification
) -> bool:
    """A refund notification lists every refund of the transaction so far: ours are confirmed
    by refund_key, any other (made in the Midtrans dashboard) becomes a SUCCEEDED row."""
    now = ctx.clock()
    changed = await confirm_by_keys(ctx, conn, order["id"], note.refund_keys, note.transaction_id)
    ours = set(
        (
            await conn.scalars(
                sa.select(refunds.c.refund_key).where(refunds.c.order_id == order["id"])
            )
        ).all()
    )
    listed_total = 0
    for key, gateway_id, amount in note.refund_items:
        listed_total += amount
        if key is not None and key in ours:
            continue
        external = f"gw-{key}" if key else f"gw-{note.transaction_id}-{gateway_id or listed_total}"
        changed |= await _record_external(ctx, conn, order, external[:64], amount, gateway_id, now)
    if not note.refund_items and note.refund_amount:
        # No list: whatever the cumulative amount says beyond what we know went back.
        extra = note.refund_amount - (await ledger(conn, order["id"])).refunded
        key = f"gw-{note.transaction_id}-total-{note.refund_amount}"[:64]
        if extra > 0:
            changed |= await _record_external(ctx, conn, order, key, extra, None, now)
    if changed:
        await _cancel_covered(conn, order["id"], now)
        await _refresh_order(conn, order, now)
    return changed


async def _record_external(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order: Row,
    key: str,
    amount: int,
    gateway_id: str | None,
    now: datetime,
) -> bool:
    if amount <= 0 or await conn.scalar(sa.select(refunds.c.id).where(refunds.c.refund_key == key)):
        return False
    log.warning("gateway refund order=%s key=%s amount=%s recorded", order["id"], key, amount)
    await conn.execute(
        sa.insert(refunds).values(
            id=new_id(),
            order_id=order["id"],
            refund_key=key,
            amount=amount,
            status=SUCCEEDED,
            reason="GATEWAY_REFUND",
            provider_ref=(gateway_id or None),
            created_at=now,
            updated_at=now,
            completed_at=now,
        )
    )
    return True


async def _cancel_covered(conn: AsyncConnection, order_id: str, now: datetime) -> None:
    """Money refunded at the gateway covers refunds we still meant to pay. The notification
    lists every refund of the transaction, so ours not listed did not happen: those are
    cancelled (or cut down, or replaced by a smaller one under a new key) as far as covered."""
    money = await ledger(conn, order_id)
    excess = money.committed - max(0, money.paid - money.kept - money.in_play)
    waiting = await every(
        conn,
        sa.select(refunds)
        .where(refunds.c.order_id == order_id, refunds.c.status == PENDING)
        .order_by(refunds.c.id.desc()),
    )
    for row in waiting:
        if excess <= 0:
            return
        amount = int(row["amount"])
        if amount > excess and row["attempts"] == 0:
            # Never sent: its key is unused at the gateway, so its amount may still change.
            await conn.execute(
                sa.update(refunds)
                .where(refunds.c.id == row["id"], refunds.c.status == PENDING)
                .values(amount=amount - excess, updated_at=now)
            )
            return
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == row["id"], refunds.c.status == PENDING)
            .values(
                status=CANCELLED,
                next_attempt_at=None,
                last_error="covered by a refund made at the gateway",
                updated_at=now,
            )
        )
        log.info(
            "refund %s order=%s cancelled: covered at the gateway", row["refund_key"], order_id
        )
        if amount > excess:
            # Sent before under its key: the rest goes out under a new one.
            n = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(refunds)
                .where(refunds.c.order_id == order_id)
            )
            await conn.execute(
                sa.insert(refunds).values(
                    id=new_id(),
                    order_id=order_id,
                    refund_key=f"{str(row['refund_key'])[:50]}-rest-{n}",
                    amount=amount - excess,
                    status=PENDING,
                    reason=row["reason"],
                    created_at=now,
                    updated_at=now,
                    next_attempt_at=now,
                )
            )
        excess -= amount


async def confirm_by_keys(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order_id: str,
    keys: Sequence[str],
    provider_ref: str | None,
) -> bool:
    """A gateway refund notification naming our refund_keys settles those rows."""
    if not keys:
        return False
    ids = (
        await conn.scalars(
            sa.select(refunds.c.id).where(
                refunds.c.order_id == order_id,
                refunds.c.refund_key.in_(list(keys)),
                refunds.c.status != SUCCEEDED,
            )
        )
    ).all()
    confirmed = False
    for refund_id in ids:
        confirmed |= await mark_succeeded(ctx, conn, refund_id, provider_ref)
    return confirmed


# --- held refunds (a late "dropped" result) ------------------------------------------------


async def hold_unit_refund(conn: AsyncConnection, unit_id: str, now: datetime) -> str | None:
    """The unit dropped after all: its refund waits for an operator unless already paid.
    Returns the refund's status afterwards (None: the unit owed none)."""
    row = await first(conn, sa.select(refunds).where(refunds.c.dispense_id == unit_id))
    if row is None:
        return None
    status = RefundStatus(row["status"])
    if status in (RefundStatus.PENDING, RefundStatus.FAILED):
        check_refund_transition(status, RefundStatus.HELD)
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == row["id"], refunds.c.status == status.value)
            .values(status=HELD, updated_at=now)
        )
        return HELD
    return status.value


async def release_held(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, refund_id: str
) -> dict[str, Any]:
    """Operator: pay the held refund after all (the customer did not get the item)."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        row = await _held(conn, refund_id)
        money = await ledger(conn, row["order_id"])
        # Never more than was paid, whatever else went back meanwhile.
        room = money.paid - (money.committed - int(row["amount"]))
        if room < int(row["amount"]):
            raise Conflict(f"refund {refund_id}: only Rp {max(room, 0)} left of what was paid")
        check_refund_transition(RefundStatus.HELD, RefundStatus.PENDING)
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == HELD)
            .values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        )
    log.warning("held refund %s released by an operator", refund_id)
    await execute_refund(ctx, provider, policy, refund_id)
    return await get_refund(ctx, refund_id)


async def cancel_held(ctx: ServiceContext, refund_id: str) -> dict[str, Any]:
    """Operator: the unit did drop, nothing is owed for it."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        await _held(conn, refund_id)
        check_refund_transition(RefundStatus.HELD, RefundStatus.CANCELLED)
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == HELD)
            .values(status=CANCELLED, next_attempt_at=None, updated_at=now)
        )
    log.warning("held refund %s cancelled by an operator", refund_id)
    return await get_refund(ctx, refund_id)


async def _held(conn: AsyncConnection, refund_id: str) -> Row:
    row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    await dispatch.lock_order(conn, row["order_id"])
    row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
    if row is None or row["status"] != HELD:
        raise Conflict(f"refund {refund_id} is not held")
    return row


async def get_refund(ctx: ServiceContext, refund_id: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
    if row is None:
        raise NotFound(f"refund {refund_id} not found")
    return dict(row)


async def list_refunds(
    ctx: ServiceContext, status: str | None, window: Window
) -> Slice[dict[str, Any]]:
    stmt = sa.select(refunds).order_by(refunds.c.created_at.desc(), refunds.c.id.desc())
    if status:
        stmt = stmt.where(refunds.c.status == status)
    async with ctx.engine.connect() as conn:
        return Slice.of([dict(r) for r in await every(conn, window.apply(stmt))], window)


# --- manual refunds ------------------------------------------------------------------------


async def request_manual_refund(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, order_id: str
) -> dict[str, Any]:
    """Operator's refund of whatever was paid and neither kept nor refunded. Calling again
    returns the last manual refund while nothing more is owed; once one was refused (or more
    became owed) the next call makes a new one (manual-{order}-{n})."""
    # A concurrent call may create the same key first: same refund, returned below.
    with contextlib.suppress(IntegrityError):
        await _create_manual(ctx, order_id)
    async with ctx.engine.connect() as conn:
        manual = await every(
            conn,
            sa.select(refunds).where(refunds.c.order_id == order_id, refunds.c.reason == "MANUAL"),
        )
    row = max(manual, key=_manual_number, default=None)
    if row is None:
        raise Conflict(f"order {order_id} has nothing left to refund")
    if row["status"] == PENDING:
        await execute_refund(ctx, provider, policy, row["id"])
        return await get_refund(ctx, row["id"])
    return dict(row)


async def _create_manual(ctx: ServiceContext, order_id: str) -> None:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        order = await dispatch.lock_order(conn, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        money = await ledger(conn, order_id)
        if money.paid == 0:
            raise Conflict(f"order {order_id} has no payment to refund")
        if OrderStatus(order["status"]) in STILL_DISPENSING or money.in_play:
            raise Conflict(f"order {order_id} is still dispensing; refund it once it has settled")
        if money.refundable <= 0:
            return  # nothing more owed: the last manual refund (if any) is the answer
        n = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(refunds)
            .where(refunds.c.order_id == order_id, refunds.c.reason == "MANUAL")
        )
        key = f"manual-{order_id}" if not n else f"manual-{order_id}-{int(n) + 1}"
        await owe(conn, order_id, key=key, amount=money.refundable, reason="MANUAL", now=now)
        log.info(
            "manual refund order=%s key=%s amount=%s requested", order_id, key, money.refundable
        )


def _manual_number(row: Row) -> int:
    """manual-{order} is the first, manual-{order}-{n} the n-th."""
    suffix = str(row["refund_key"]).removeprefix(f"manual-{row['order_id']}")
    return int(suffix[1:]) if suffix.startswith("-") and suffix[1:].isdigit() else 1


# --- the operator's list of refunds owed ---------------------------------------------------


async def owed(ctx: ServiceContext, limit: int = 200) -> list[dict[str, Any]]:
    """Refunds not yet paid out (PENDING, FAILED), oldest first, with their machine."""
    stmt = (
        sa.select(refunds, orders.c.machine_id)
        .join(orders, orders.c.id == refunds.c.order_id)
        .where(refunds.c.status.in_((PENDING, FAILED)))
        .order_by(refunds.c.created_at, refunds.c.id)
        .limit(limit)
    )
    async with ctx.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def retry_now(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, refund_id: str
) -> bool:
    """Operator's "retry now": a FAILED refund gets a fresh round of attempts, due at once,
    unless the money went back another way meanwhile (a manual or dashboard refund)."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
        if row is None:
            raise NotFound(f"refund {refund_id} not found")
        await dispatch.lock_order(conn, row["order_id"])
        row = await first(conn, sa.select(refunds).where(refunds.c.id == refund_id))
        if row is None or row["status"] not in (PENDING, FAILED):
            raise Conflict(f"refund {refund_id} is not owed (already paid out, or unknown)")
        if row["status"] == FAILED:
            money = await ledger(conn, row["order_id"])
            # A FAILED row is not in `committed`: it fits only if the order still owes it.
            if money.refundable < int(row["amount"]):
                raise Conflict(
                    f"refund {refund_id}: only Rp {money.refundable} is still owed on its order"
                )
            check_refund_transition(RefundStatus.FAILED, RefundStatus.PENDING)
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == row["status"])
            .values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        )
    return await execute_refund(ctx, provider, policy, refund_id)
