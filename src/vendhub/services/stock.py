"""Stock reservation, release, decrement and operator adjustments, each logged."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.tables import slots, stock_logs
from vendhub.domain.model import OutOfStock
from vendhub.services.errors import InvalidRequest, NotFound
from vendhub.services.rows import first


class ChangeType(StrEnum):
    RESTOCK = "RESTOCK"
    DISPENSE = "DISPENSE"
    MANUAL_ADJUST = "MANUAL_ADJUST"
    AUDIT = "AUDIT"
    RELEASE = "RELEASE"


async def lock_slot(conn: AsyncConnection, slot_id: str) -> RowMapping:
    row = await first(
        conn, sa.select(slots).where(slots.c.id == slot_id).with_for_update(key_share=True)
    )
    if row is None:
        raise NotFound(f"slot {slot_id} not found")
    return row


async def reserve(conn: AsyncConnection, slot_id: str, quantity: int, now: datetime) -> None:
    """Atomic check-and-reserve; the CHECK constraint backs it up if anything races."""
    result = await conn.execute(
        sa.update(slots)
        .where(
            slots.c.id == slot_id,
            slots.c.is_active.is_(True),
            slots.c.current_stock - slots.c.reserved >= quantity,
        )
        .values(reserved=slots.c.reserved + quantity, updated_at=now)
    )
    if result.rowcount != 1:
        raise OutOfStock("not enough stock for this slot")


async def release(
    conn: AsyncConnection,
    slot_id: str,
    quantity: int,
    now: datetime,
    *,
    reason: str,
    order_id: str | None = None,
    dispense_id: str | None = None,
) -> None:
    changed = await conn.execute(
        sa.update(slots)
        .where(slots.c.id == slot_id)
        .values(reserved=slots.c.reserved - quantity, updated_at=now)
    )
    if changed.rowcount != 1:
        raise NotFound(f"slot {slot_id} not found")
    # Counted stock does not change; the log shows when availability came back.
    await _log_from_slot(
        conn,
        slot_id,
        ChangeType.RELEASE,
        0,
        now,
        reason,
        order_id=order_id,
        dispense_id=dispense_id,
    )


def _consume_reserved_update() -> sa.Update:
    """Stock −1 and its reservation with it, on the slot `b_slot`."""
    return (
        sa.update(slots)
        .where(slots.c.id == sa.bindparam("b_slot"))
        .values(
            current_stock=slots.c.current_stock - 1,
            reserved=slots.c.reserved - 1,
            updated_at=sa.bindparam("b_now"),
        )
    )


_CONSUME_RESERVED = fast.Query(_consume_reserved_update)


async def consume_reserved_unit(
    conn: AsyncConnection, slot_id: str, now: datetime, *, order_id: str, dispense_id: str
) -> None:
    """A unit dropped: stock −1 and its reservation with it, logged once per dispense."""
    reason = f"dispensed for order {order_id}"
    if fast.writes_in_ctes(conn):
        logged = await _CONSUME_RESERVED_AND_LOG.count(
            conn,
            b_slot=slot_id,
            b_type=ChangeType.DISPENSE.value,
            b_change=-1,
            b_reason=reason,
            b_now=now,
            b_order=order_id,
            b_dispense=dispense_id,
        )
        if logged != 1:
            raise NotFound(f"slot {slot_id} not found")
        return
    if await _CONSUME_RESERVED.count(conn, b_slot=slot_id, b_now=now) != 1:
        raise NotFound(f"slot {slot_id} not found")
    await _log_from_slot(
        conn,
        slot_id,
        ChangeType.DISPENSE,
        -1,
        now,
        reason,
        order_id=order_id,
        dispense_id=dispense_id,
    )


async def _log_from_slot(
    conn: AsyncConnection,
    slot_id: str,
    change_type: ChangeType,
    change: int,
    now: datetime,
    reason: str | None,
    *,
    order_id: str | None,
    dispense_id: str | None,
) -> None:
    """The log row of a change this transaction just made to the slot, its counts read from
    the (updated, locked) row by the INSERT itself: no separate read."""
    await _LOG_FROM_SLOT.count(
        conn,
        b_slot=slot_id,
        b_type=change_type.value,
        b_change=change,
        b_reason=reason,
        b_now=now,
        b_order=order_id,
        b_dispense=dispense_id,
    )


def _log_from_slot_insert(slot: sa.TableClause | sa.CTE = slots) -> sa.Insert:
    """INSERT … SELECT of the log row from `slot`: the slot table (the row this transaction
    just updated, by id), or the RETURNING of that update as a CTE (PostgreSQL)."""
    c = stock_logs.c
    change = sa.bindparam("b_change", type_=c.quantity_change.type)
    values: list[tuple[sa.Column[Any], sa.ColumnElement[Any]]] = [
        (c.machine_id, slot.c.machine_id),
        (c.slot_id, slot.c.id),
        (c.slot_number, slot.c.slot_number),
        (c.product_id, slot.c.product_id),
        (c.change_type, sa.bindparam("b_type", type_=c.change_type.type)),
        (c.quantity_change, change),
        (c.stock_before, slot.c.current_stock - change),
        (c.stock_after, slot.c.current_stock),
        (c.reason, sa.bindparam("b_reason", type_=c.reason.type)),
        (c.created_at, sa.bindparam("b_now", type_=c.created_at.type)),
        (c.order_id, sa.bindparam("b_order", type_=c.order_id.type)),
        (c.dispense_id, sa.bindparam("b_dispense", type_=c.dispense_id.type)),
    ]
    select = sa.select(*(v for _, v in values))
    if slot is slots:
        select = select.where(slots.c.id == sa.bindparam("b_slot"))
    return sa.insert(stock_logs).from_select([col for col, _ in values], select)


def _consume_reserved_and_log() -> sa.Insert:
    changed = (
        _consume_reserved_update()
        .returning(
            slots.c.id,
            slots.c.machine_id,
            slots.c.slot_number,
            slots.c.product_id,
            slots.c.current_stock,
        )
        .cte("changed")
    )
    return _log_from_slot_insert(changed)


_LOG_FROM_SLOT = fast.Query(_log_from_slot_insert)
# PostgreSQL: the decrement and its log row in one statement (one row logged = one changed).
_CONSUME_RESERVED_AND_LOG = fast.Query(_consume_reserved_and_log)


async def consume_late_unit(
    conn: AsyncConnection, slot_id: str, now: datetime, *, order_id: str, dispense_id: str
) -> bool:
    """A unit given up on (its reservation released) dropped after all: counted stock −1.
    False when every counted unit is reserved by open orders: the count is wrong somewhere
    and an operator must count the slot (the CHECK would refuse the decrement)."""
    slot = await lock_slot(conn, slot_id)
    changed = await conn.execute(
        sa.update(slots)
        .where(slots.c.id == slot_id, slots.c.current_stock > slots.c.reserved)
        .values(current_stock=slots.c.current_stock - 1, updated_at=now)
    )
    if changed.rowcount != 1:
        return False
    await _log(
        conn,
        slot,
        ChangeType.DISPENSE,
        -1,
        slot["current_stock"] - 1,
        now,
        f"dropped for order {order_id} after it was given up",
        order_id=order_id,
        dispense_id=dispense_id,
    )
    return True


async def adjust(
    conn: AsyncConnection,
    slot: RowMapping,
    change_type: ChangeType,
    now: datetime,
    *,
    quantity_change: int | None,
    new_stock: int | None,
    reason: str | None,
    user_id: str | None,
) -> int:
    """Operator change: by delta or to an absolute count. Returns the new counted stock."""
    if change_type in (ChangeType.DISPENSE, ChangeType.RELEASE):
        raise InvalidRequest(f"{change_type} changes are made by the system, not by hand")
    before = int(slot["current_stock"])
    if (quantity_change is None) == (new_stock is None):
        raise InvalidRequest("give exactly one of quantity_change or new_stock")
    after = before + quantity_change if quantity_change is not None else int(new_stock or 0)
    if after < int(slot["reserved"]):
        raise InvalidRequest(
            f"stock {after} would be below the {slot['reserved']} unit(s) reserved by open orders"
        )
    if after > int(slot["capacity"]):
        raise InvalidRequest(f"stock {after} exceeds the slot capacity {slot['capacity']}")
    await conn.execute(
        sa.update(slots).where(slots.c.id == slot["id"]).values(current_stock=after, updated_at=now)
    )
    await _log(conn, slot, change_type, after - before, after, now, reason, user_id=user_id)
    return after


async def _log(
    conn: AsyncConnection,
    slot: RowMapping,
    change_type: ChangeType,
    change: int,
    after: int,
    now: datetime,
    reason: str | None,
    **extra: Any,
) -> None:
    await conn.execute(
        sa.insert(stock_logs).values(
            machine_id=slot["machine_id"],
            slot_id=slot["id"],
            slot_number=slot["slot_number"],
            product_id=slot["product_id"],
            change_type=change_type.value,
            quantity_change=change,
            stock_before=after - change,
            stock_after=after,
            reason=reason,
            created_at=now,
            **extra,
        )
    )


async def update_stock(
    ctx: Any,
    machine_id: str,
    slot_number: int,
    change_type: ChangeType,
    *,
    quantity_change: int | None,
    new_stock: int | None,
    reason: str | None,
    user_id: str | None,
) -> dict[str, int]:
    """Operator restock/adjust/audit of one slot, in one transaction, logged."""
    async with ctx.engine.begin() as conn:
        slot_id = await conn.scalar(
            sa.select(slots.c.id).where(
                slots.c.machine_id == machine_id, slots.c.slot_number == slot_number
            )
        )
        if slot_id is None:
            raise NotFound(f"slot {slot_number} not found on machine {machine_id}")
        slot = await lock_slot(conn, slot_id)
        after = await adjust(
            conn,
            slot,
            change_type,
            ctx.clock(),
            quantity_change=quantity_change,
            new_stock=new_stock,
            reason=reason,
            user_id=user_id,
        )
    return {
        "slot_number": slot_number,
        "stock_before": int(slot["current_stock"]),
        "current_stock": after,
        "reserved": int(slot["reserved"]),
        "available": after - int(slot["reserved"]),
    }


async def fill_machine(ctx: Any, machine_id: str, *, user_id: str | None) -> int:
    """Fill all: every stocked slot of the machine to its capacity, in one transaction."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        slot_ids = (
            await conn.scalars(
                sa.select(slots.c.id)
                .where(
                    slots.c.machine_id == machine_id,
                    slots.c.product_id.is_not(None),
                    slots.c.current_stock < slots.c.capacity,
                )
                .order_by(slots.c.id)  # the global lock order (see orders.place_order)
            )
        ).all()
        for slot_id in slot_ids:
            slot = await lock_slot(conn, slot_id)
            await adjust(
                conn,
                slot,
                ChangeType.RESTOCK,
                now,
                quantity_change=None,
                new_stock=int(slot["capacity"]),
                reason="fill all",
                user_id=user_id,
            )
    return len(slot_ids)
