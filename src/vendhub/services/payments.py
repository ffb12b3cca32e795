"""Applying verified gateway notifications to orders: once, in order, whatever arrives twice."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.engine import retry_on_disconnect
from vendhub.adapters.db.fast import Row
from vendhub.adapters.db.tables import (
    order_items,
    payment_notifications,
    payment_receipts,
    payments,
)
from vendhub.domain.model import OrderStatus, OutOfStock
from vendhub.domain.payments import PaymentStatus
from vendhub.services import outbox, stock
from vendhub.services import refunds as refunds_service
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import (
    create_units,
    lock_order,
    lock_order_with_items,
    revive_order,
)
from vendhub.services.errors import InvalidRequest, NotFound
from vendhub.services.ids import new_id
from vendhub.services.orders import close_unpaid
from vendhub.services.ports import Notification, PaymentProvider
from vendhub.services.rows import first

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PAID = "paid"
    ALREADY_PAID = "already_paid"
    CLOSED = "closed"
    PENDING = "pending"
    IGNORED = "ignored"
    LATE_PAYMENT = "late_payment"
    LATE_PAYMENT_DISPENSED = "late_payment_dispensed"
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    REFUND_CONFIRMED = "refund_confirmed"
    EXTRA_PAYMENT = "extra_payment"  # another transaction paid an already-paid order


async def receive_notification(
    ctx: ServiceContext, provider: PaymentProvider, headers: Mapping[str, str], body: bytes
) -> Outcome:
    """Verify (raises InvalidNotification), store durably, apply; duplicates change nothing."""
    return await apply_notification(ctx, provider.verify_notification(headers, body))


async def apply_notification(ctx: ServiceContext, note: Notification) -> Outcome:
    """The one path for a verified notification, from the webhook or from a status query."""
    try:
        with outbox.handing_off(ctx) as handed:
            outcome = await retry_on_disconnect(partial(_store_and_apply, ctx, note))
    except IntegrityError:
        # The unique (order, transaction, status) row exists: this exact notification was
        # already stored and applied in a committed transaction.
        log.info(
            "duplicate notification order=%s status=%s", note.order_id, note.transaction_status
        )
        return Outcome.DUPLICATE
    log.info(
        "notification order=%s status=%s source=%s outcome=%s",
        note.order_id,
        note.transaction_status,
        note.source,
        outcome.value,
    )
    outbox.hand_off(ctx, handed)
    return outcome


async def _store_and_apply(ctx: ServiceContext, note: Notification) -> Outcome:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        items: list[Row] = []
        if note.status is PaymentStatus.PAID:
            # What paying needs, in the statement that locks the order.
            order, items = await lock_order_with_items(conn, note.order_id)
        else:
            order = await lock_order(conn, note.order_id)
        if order is None:
            raise NotFound(f"order {note.order_id} not found")
        if note.amount != order["total_amount"]:
            log.warning(
                "amount mismatch order=%s notified=%s expected=%s",
                note.order_id,
                note.gross_amount,
                order["total_amount"],
            )
            raise InvalidRequest(
                f"gross_amount {note.gross_amount} does not match the order total "
                f"{order['total_amount']}"
            )
        if (
            note.status is PaymentStatus.PAID
            and order["status"] == OrderStatus.PENDING.value
            and fast.writes_in_ctes(conn)
        ):
            # The common notification, on PostgreSQL: the ledger's receipt, the payment row
            # and the notification in one statement, then the units.
            await _PAY_PENDING.count(
                conn,
                **fast.prefixed("r_", _receipt(ctx, order, note)),
                **fast.prefixed("n_", _notification(note, Outcome.PAID, now)),
                **_payment_values(order["id"], note, now),
            )
            await _create_paid_units(ctx, conn, order, items, now)
            return Outcome.PAID
        outcome = await _apply(ctx, conn, order, note, items)
        # Stored last, with its outcome (one statement): a copy of a stored notification
        # fails here on the unique key and rolls back everything it would have done.
        await _STORE_NOTIFICATION.count(conn, **_notification(note, outcome, now))
    return outcome


def _notification(note: Notification, outcome: Outcome, now: datetime) -> dict[str, Any]:
    return {
        "order_id": note.order_id,
        "transaction_id": note.dedup_id,
        "transaction_status": note.transaction_status,
        "source": note.source,
        "fraud_status": note.fraud_status,
        "status_code": note.status_code,
        "gross_amount": note.gross_amount,
        "outcome": outcome.value,
        "raw": note.raw,
        "received_at": now,
    }


_NOTIFICATION_COLUMNS = (
    "order_id",
    "transaction_id",
    "transaction_status",
    "source",
    "fraud_status",
    "status_code",
    "gross_amount",
    "outcome",
    "raw",
    "received_at",
)
_STORE_NOTIFICATION = fast.Query(
    lambda: sa.insert(payment_notifications), columns=_NOTIFICATION_COLUMNS
)
_RECEIPT_COLUMNS = (
    "id",
    "order_id",
    "transaction_id",
    "transaction_status",
    "amount",
    "payment_type",
    "source",
    "received_at",
)
_STORE_RECEIPT = fast.Query(lambda: sa.insert(payment_receipts), columns=_RECEIPT_COLUMNS)


def _record_payment_update() -> sa.Update:
    return (
        sa.update(payments)
        .where(payments.c.order_id == sa.bindparam("b_order"), payments.c.paid_at.is_(None))
        .values(
            status=PaymentStatus.PAID.value,
            transaction_id=sa.bindparam("b_transaction"),
            payment_type=sa.bindparam("b_type"),
            paid_at=sa.bindparam("b_now"),
            updated_at=sa.bindparam("b_now"),
        )
    )


_RECORD_PAYMENT = fast.Query(_record_payment_update)
# PostgreSQL: receipt, notification and payment row of a PENDING order paid, one statement.
_PAY_PENDING = fast.Query(
    lambda: (
        _record_payment_update()
        .add_cte(fast.insert_values(payment_receipts, _RECEIPT_COLUMNS, "r_").cte("receipt"))
        .add_cte(
            fast.insert_values(payment_notifications, _NOTIFICATION_COLUMNS, "n_").cte(
                "notification"
            )
        )
    )
)


async def _apply(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order: Row,
    note: Notification,
    items: list[Row],
) -> Outcome:
    status = OrderStatus(order["status"])
    if note.status is PaymentStatus.PAID:
        receipt_id = await _record_receipt(ctx, conn, order, note)
        if receipt_id is None:
            # This transaction's money is already in the ledger (capture then settlement,
            # webhook then status): whatever it led to, it must not lead to it twice.
            return Outcome.ALREADY_PAID
        if status is OrderStatus.PENDING:
            await _mark_paid(ctx, conn, order, note, items)
            return Outcome.PAID
        closed = status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED)
        if closed and await _dispense_late_payment(ctx, conn, order, note):
            return Outcome.LATE_PAYMENT_DISPENSED
        now = ctx.clock()
        if closed:
            log.warning("late payment order=%s status=%s: refund owed", order["id"], status)
            # The money is in: the payment row shows it paid (the order stays closed).
            await _record_payment(conn, order["id"], note, now)
        else:
            log.warning("extra payment order=%s transaction=%s", order["id"], note.transaction_id)
        receipt = await first(
            conn, sa.select(payment_receipts).where(payment_receipts.c.id == receipt_id)
        )
        if receipt is None:
            raise RuntimeError(f"receipt {receipt_id} vanished")
        await refunds_service.owe_payment_back(conn, order["id"], receipt, late=closed, now=now)
        return Outcome.LATE_PAYMENT if closed else Outcome.EXTRA_PAYMENT
    if note.status in (PaymentStatus.FAILED, PaymentStatus.EXPIRED):
        new = OrderStatus.EXPIRED if note.status is PaymentStatus.EXPIRED else OrderStatus.CANCELLED
        closed = await close_unpaid(ctx, conn, order["id"], new)
        return Outcome.CLOSED if closed else Outcome.IGNORED
    if note.status is PaymentStatus.PENDING:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order["id"], payments.c.transaction_id.is_(None))
            .values(
                transaction_id=note.transaction_id,
                payment_type=note.payment_type,
                updated_at=ctx.clock(),
            )
        )
        return Outcome.PENDING
    if note.status is PaymentStatus.REFUNDED:
        # Usually the echo of a refund we made; it also settles one whose answer we lost,
        # and books one made at the gateway (dashboard) that we never asked for.
        changed = await refunds_service.record_gateway_refunds(ctx, conn, order, note)
        return Outcome.REFUND_CONFIRMED if changed else Outcome.RECORDED
    return Outcome.RECORDED


async def _record_receipt(
    ctx: ServiceContext, conn: AsyncConnection, order: Row, note: Notification
) -> str | None:
    """Books a gateway payment in the ledger; its id, or None if this transaction is already
    booked."""
    # An order still PENDING has no receipt: booking one moves it on in the same transaction
    # (paid, or refund owed), and nothing moves an order back to PENDING. The unique key
    # (order, transaction) backs this up.
    if order["status"] != OrderStatus.PENDING.value:
        exists = await conn.scalar(
            sa.select(payment_receipts.c.id).where(
                payment_receipts.c.order_id == order["id"],
                payment_receipts.c.transaction_id == note.transaction_id[:64],
            )
        )
        if exists is not None:
            return None
    receipt = _receipt(ctx, order, note)
    await _STORE_RECEIPT.count(conn, **receipt)
    return str(receipt["id"])


def _receipt(ctx: ServiceContext, order: Row, note: Notification) -> dict[str, Any]:
    return {
        "id": new_id(),
        "order_id": order["id"],
        "transaction_id": note.transaction_id[:64],
        "transaction_status": note.transaction_status[:32],
        "amount": int(order["total_amount"]),
        "payment_type": (note.payment_type or None) and note.payment_type[:32],
        "source": note.source,
        "received_at": ctx.clock(),
    }


async def _mark_paid(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order: Row,
    note: Notification,
    items: list[Row],
) -> None:
    now = ctx.clock()
    await _record_payment(conn, order["id"], note, now)
    await _create_paid_units(ctx, conn, order, items, now)


async def _create_paid_units(
    ctx: ServiceContext, conn: AsyncConnection, order: Row, items: list[Row], now: datetime
) -> None:
    # PENDING → PAID → DISPENSING (or PENDING_DISPENSE) in one write, with the units.
    await create_units(
        ctx,
        conn,
        order["id"],
        order["machine_id"],
        current=OrderStatus.PENDING,
        items=items or None,
        paid_at=now,
    )


async def _record_payment(
    conn: AsyncConnection, order_id: str, note: Notification, now: datetime
) -> None:
    """The order's payment (checkout) row shows it paid; the ledger is payment_receipts."""
    await _RECORD_PAYMENT.count(conn, **_payment_values(order_id, note, now))


def _payment_values(order_id: str, note: Notification, now: datetime) -> dict[str, Any]:
    return {
        "b_order": order_id,
        "b_transaction": note.transaction_id[:64],
        "b_type": note.payment_type,
        "b_now": now,
    }


async def _dispense_late_payment(
    ctx: ServiceContext, conn: AsyncConnection, order: Row, note: Notification
) -> bool:
    """With LATE_PAYMENT_POLICY=dispense: reserve the stock again and vend; False (refund
    instead) when the policy is refund or any slot no longer has the units."""
    if ctx.tunables.late_payment_policy != "dispense":
        return False
    now = ctx.clock()
    items = (
        await conn.execute(
            sa.select(order_items.c.slot_id, order_items.c.quantity)
            .where(order_items.c.order_id == order["id"])
            .order_by(order_items.c.slot_id)  # the global lock order, as at checkout
        )
    ).all()
    try:
        # A savepoint: a slot that ran short undoes the reservations made before it.
        async with conn.begin_nested():
            for item in items:
                await stock.reserve(conn, item.slot_id, item.quantity, now)
    except OutOfStock:
        log.warning("late payment order=%s: stock gone, refunding instead", order["id"])
        return False
    await revive_order(conn, order["id"], OrderStatus(order["status"]), now)
    await conn.execute(
        sa.update(order_items).where(order_items.c.order_id == order["id"]).values(released=0)
    )
    await _record_payment(conn, order["id"], note, now)
    await create_units(ctx, conn, order["id"], order["machine_id"])
    return True
