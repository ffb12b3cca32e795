"""Turning a paid order into dispense units and sending them one at a time per machine."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.fast import Row
from vendhub.adapters.db.tables import dispenses, machines, order_items, orders, outbox, slots
from vendhub.domain.model import (
    LATE_DROP_ORDER_CORRECTION,
    OrderStatus,
    UnitFailure,
    UnitStatus,
    check_late_drop,
    check_late_payment_revival,
    check_order_transition,
    check_unit_transition,
    order_outcome,
)
from vendhub.domain.money import rupiah
from vendhub.protocol.messages import DispenseCommand, PresenceStatus
from vendhub.services import alerts, refunds, stock
from vendhub.services import outbox as outbox_rows
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Conflict, NotFound
from vendhub.services.ids import new_id
from vendhub.services.outbox import enqueue
from vendhub.services.rows import every

log = logging.getLogger(__name__)

# Machines in these states get no new commands; UNKNOWN (never heard from) still does.
UNREACHABLE = frozenset({PresenceStatus.OFFLINE.value, PresenceStatus.MAINTENANCE.value})


async def set_order_status(
    conn: AsyncConnection, order: Row, new: OrderStatus, now: datetime, **values: Any
) -> OrderStatus:
    """The only way an order's status changes: validated, and conditional on the old value."""
    return await move_order(conn, order["id"], OrderStatus(order["status"]), new, now, **values)


async def move_order(
    conn: AsyncConnection,
    order_id: str,
    current: OrderStatus,
    new: OrderStatus,
    now: datetime,
    *,
    via: OrderStatus | None = None,
    **values: Any,
) -> OrderStatus:
    """`via`: two transitions in one write (current → via → new), each checked."""
    steps = [current, new] if via is None else [current, via, new]
    for old, nxt in itertools.pairwise(steps):
        check_order_transition(old, nxt)
    changed = await _move_order_query(tuple(sorted(values))).count(
        conn,
        b_id=order_id,
        b_current=current.value,
        b_new=new.value,
        b_now=now,
        **{f"b_{k}": v for k, v in values.items()},
    )
    if changed != 1:
        raise RuntimeError(f"order {order_id} changed under a lock")
    log.info("order %s %s", order_id, " → ".join(s.value for s in steps))
    return new


_MOVE_ORDER: dict[tuple[str, ...], fast.Query] = {}


def _move_order_query(extra: tuple[str, ...]) -> fast.Query:
    """The conditional status UPDATE, one prepared statement per set of extra columns."""
    query = _MOVE_ORDER.get(extra)
    if query is None:
        query = _MOVE_ORDER[extra] = fast.Query(
            lambda: (
                sa.update(orders)
                .where(
                    orders.c.id == sa.bindparam("b_id"),
                    orders.c.status == sa.bindparam("b_current"),
                )
                .values(
                    status=sa.bindparam("b_new"),
                    updated_at=sa.bindparam("b_now"),
                    **{k: sa.bindparam(f"b_{k}") for k in extra},
                )
            )
        )
    return query


async def commands_out(conn: AsyncConnection, order_ids: set[str], now: datetime) -> None:
    """A command of each of these orders went out: those waiting (PENDING_DISPENSE) are now
    DISPENSING. One statement for a batch, conditional on the old status (others stay)."""
    if not order_ids:
        return
    current, new = OrderStatus.PENDING_DISPENSE, OrderStatus.DISPENSING
    check_order_transition(current, new)
    await conn.execute(
        sa.update(orders)
        .where(orders.c.id.in_(order_ids), orders.c.status == current.value)
        .values(status=new.value, updated_at=now)
    )


async def revive_order(
    conn: AsyncConnection, order_id: str, current: OrderStatus, now: datetime
) -> None:
    """EXPIRED/CANCELLED → PAID for a late payment the operator chose to dispense."""
    new = check_late_payment_revival(current)
    result = await conn.execute(
        sa.update(orders)
        .where(orders.c.id == order_id, orders.c.status == current.value)
        .values(status=new.value, updated_at=now, paid_at=now)
    )
    if result.rowcount != 1:
        raise RuntimeError(f"order {order_id} changed under a lock")
    log.info("order %s %s → %s (late payment dispensed)", order_id, current.value, new.value)


# NO KEY UPDATE (PostgreSQL): does not wait for orders being inserted for this machine,
# whose foreign-key checks hold KEY SHARE on it; plain FOR UPDATE deadlocked there.
_LOCK_MACHINE = fast.Query(
    lambda: (
        sa.select(machines)
        .where(machines.c.id == sa.bindparam("machine_id"))
        .with_for_update(key_share=True)
    )
)
_LOCK_ORDER = fast.Query(
    lambda: (
        sa.select(orders)
        .where(orders.c.id == sa.bindparam("order_id"))
        .with_for_update(key_share=True)
    )
)


def _order_with_items() -> sa.Select[Any]:
    motor = (
        sa.select(slots.c.motor_duration_ms)
        .where(slots.c.id == order_items.c.slot_id)
        .scalar_subquery()
        .label("item_motor_duration_ms")
    )
    return (
        sa.select(
            orders,
            order_items.c.id.label("item_id"),
            order_items.c.slot_id.label("item_slot_id"),
            order_items.c.slot_number.label("item_slot_number"),
            order_items.c.unit_price.label("item_unit_price"),
            order_items.c.quantity.label("item_quantity"),
            motor,
        )
        .join(order_items, order_items.c.order_id == orders.c.id)
        .where(orders.c.id == sa.bindparam("order_id"))
        .order_by(order_items.c.id)
        .with_for_update(key_share=True)
    )


_LOCK_ORDER_WITH_ITEMS = fast.Query(_order_with_items)


async def lock_machine(conn: AsyncConnection, machine_id: str) -> Row | None:
    return await _LOCK_MACHINE.first(conn, machine_id=machine_id)


async def lock_order(conn: AsyncConnection, order_id: str) -> Row | None:
    return await _LOCK_ORDER.first(conn, order_id=order_id)


async def lock_order_with_items(
    conn: AsyncConnection, order_id: str
) -> tuple[Row | None, list[Row]]:
    """The order, locked, with its items and each slot's motor time, in one statement. The
    items' rows are locked with it (only ever changed under the order's lock); the slots are
    read, not locked (a subquery)."""
    rows = await _LOCK_ORDER_WITH_ITEMS.all(conn, order_id=order_id)
    if not rows:
        return await lock_order(conn, order_id), []
    items: list[Row] = [
        {
            "id": r["item_id"],
            "slot_id": r["item_slot_id"],
            "slot_number": r["item_slot_number"],
            "unit_price": r["item_unit_price"],
            "quantity": r["item_quantity"],
            "motor_duration_ms": r["item_motor_duration_ms"],
        }
        for r in rows
    ]
    return rows[0], items


async def create_units(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order_id: str,
    machine_id: str,
    *,
    current: OrderStatus = OrderStatus.PAID,
    items: Sequence[Any] | None = None,
    **order_values: Any,
) -> None:
    """For an order being paid (`current` PENDING, moved through PAID) or PAID: one dispense
    row per physical unit; the first is written already in flight (its command in the
    outbox) when the machine is free, else they queue behind the unit in flight."""
    now = ctx.clock()
    if items is None:
        items = await every(
            conn,
            sa.select(order_items, slots.c.motor_duration_ms)
            .join(slots, slots.c.id == order_items.c.slot_id)
            .where(order_items.c.order_id == order_id)
            .order_by(order_items.c.id),
        )
    rows = [
        {
            "id": new_id(),
            "order_id": order_id,
            "order_item_id": item["id"],
            "machine_id": machine_id,
            "slot_id": item["slot_id"],
            "slot_number": item["slot_number"],
            "unit_price": item["unit_price"],
            "status": UnitStatus.QUEUED.value,
            "inflight_machine": None,
            "timeout_ms": item["motor_duration_ms"] + ctx.tunables.motor_margin_ms,
            # While queued, expires_at is the latest time the unit may still be sent.
            "expires_at": now + timedelta(seconds=ctx.tunables.queue_ttl_s),
            "dispatched_at": None,
            "created_at": now,
        }
        for item in items or []
        for _ in range(item["quantity"])
    ]
    via = OrderStatus.PAID if current is not OrderStatus.PAID else None
    if _fk_checks_lock_rows(conn):
        # MariaDB: inserting the units takes shared locks on their slot and machine rows
        # (foreign-key checks) that a checkout's reservation or another dispatcher may hold;
        # taken before the machine's lock, as every other transaction takes them.
        await _INSERT_UNITS.many(conn, rows)
        machine = await lock_machine(conn, machine_id)
        target = _start_status(ctx, machine)
        await move_order(conn, order_id, current, target, now, via=via, **order_values)
        await dispatch_next(ctx, conn, machine_id, locked=machine)
        return
    # Serialises the dispatchers of this machine; locked once for the reachability answer
    # and the dispatch. (PostgreSQL's foreign-key checks take KEY SHARE, which this lock,
    # NO KEY UPDATE, does not block.)
    machine = await lock_machine(conn, machine_id)
    target = _start_status(ctx, machine)
    in_flight = queued = True
    if machine is not None and machine["status"] not in UNREACHABLE:
        # The same conditions as dispatch_next: is a unit in flight here, or one waiting
        # that may still be sent (it goes first)?
        busy = await _BUSY.first(conn, machine_id=machine_id, now=now)
        assert busy is not None
        in_flight, queued = bool(busy["in_flight"]), bool(busy["queued"])
    first_unit = rows[0] if rows and not in_flight and not queued else None
    if first_unit is not None:
        # The machine is free: the first unit goes out now, without a QUEUED step on disk.
        check_unit_transition(UnitStatus.QUEUED, UnitStatus.IN_FLIGHT)
        first_unit.update(
            status=UnitStatus.IN_FLIGHT.value,
            inflight_machine=machine_id,
            expires_at=now + timedelta(seconds=ctx.tunables.command_ttl_s),
            dispatched_at=now,
        )
    if rows and fast.writes_in_ctes(conn):
        # PostgreSQL: the order's move, its units and the first one's command, one statement.
        await _write_units(
            ctx, conn, order_id, current, target, now, via, order_values, rows, first_unit
        )
    else:
        await move_order(conn, order_id, current, target, now, via=via, **order_values)
        await _INSERT_UNITS.many(conn, rows)
        if first_unit is not None:
            await _send(ctx, conn, first_unit, now)
    if first_unit is None and queued and not in_flight:
        await dispatch_next(ctx, conn, machine_id, locked=machine)


_UNIT_COLUMNS = (
    "id",
    "order_id",
    "order_item_id",
    "machine_id",
    "slot_id",
    "slot_number",
    "unit_price",
    "status",
    "inflight_machine",
    "timeout_ms",
    "expires_at",
    "dispatched_at",
    "created_at",
)
_INSERT_UNITS = fast.Query(lambda: sa.insert(dispenses), columns=_UNIT_COLUMNS)
# Is a unit in flight on this machine; is one waiting that may still be sent?
_BUSY = fast.Query(
    lambda: sa.select(
        sa.exists()
        .where(dispenses.c.inflight_machine == sa.bindparam("machine_id"))
        .label("in_flight"),
        sa.exists()
        .where(
            dispenses.c.machine_id == sa.bindparam("machine_id"),
            dispenses.c.status == UnitStatus.QUEUED.value,
            dispenses.c.expires_at > sa.bindparam("now", type_=dispenses.c.expires_at.type),
        )
        .label("queued"),
    )
)


def _fk_checks_lock_rows(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "mysql"


def _start_status(ctx: ServiceContext, machine: Row | None) -> OrderStatus:
    reachable = ctx.mqtt_connected() and (machine["status"] if machine else None) not in UNREACHABLE
    return OrderStatus.DISPENSING if reachable else OrderStatus.PENDING_DISPENSE


def _command(unit: Mapping[str, Any]) -> DispenseCommand:
    return DispenseCommand(
        command_id=unit["id"],
        order_id=unit["order_id"],
        slot=unit["slot_number"],
        timeout_ms=unit["timeout_ms"],
        expires_at=int(unit["expires_at"].timestamp()),
    )


async def _send(
    ctx: ServiceContext, conn: AsyncConnection, unit: Mapping[str, Any], now: datetime
) -> None:
    """The dispense command of a unit just put in flight, into the outbox."""
    await enqueue(
        conn,
        ctx.tunables.topic_prefix,
        unit["machine_id"],
        _command(unit),
        now,
        dispense_id=unit["id"],
    )


_WRITE_UNITS: dict[tuple[int, bool, tuple[str, ...]], fast.Query] = {}


def _units_written(units: int, sends: bool, extra: tuple[str, ...]) -> sa.Select[Any]:
    """One statement (PostgreSQL, writes in WITH): the order's conditional status UPDATE (as
    `move_order`), `units` dispense rows, and (`sends`) the first one's outbox row; returns
    how many orders moved (1, or 0 if the order changed under its lock) and the outbox id."""
    moved = (
        _move_order_query(extra).statement.returning(orders.c.id)  # type: ignore[attr-defined]
    ).cte("moved")
    unit_rows = (
        sa.insert(dispenses)
        .values(
            [
                {c: sa.bindparam(f"u{n}_{c}", type_=dispenses.c[c].type) for c in _UNIT_COLUMNS}
                for n in range(units)
            ]
        )
        .cte("units")
    )
    answer = [sa.select(sa.func.count()).select_from(moved).scalar_subquery().label("moved")]
    if sends:
        sent = (
            fast.insert_values(outbox, outbox_rows.COLUMNS, "o_").returning(outbox.c.id).cte("sent")
        )
        answer.append(sa.select(sent.c.id).scalar_subquery().label("outbox_id"))
    return sa.select(*answer).add_cte(unit_rows)


async def _write_units(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order_id: str,
    current: OrderStatus,
    target: OrderStatus,
    now: datetime,
    via: OrderStatus | None,
    order_values: Mapping[str, Any],
    rows: list[dict[str, Any]],
    first_unit: Mapping[str, Any] | None,
) -> None:
    steps = [current, target] if via is None else [current, via, target]
    for old, nxt in itertools.pairwise(steps):
        check_order_transition(old, nxt)
    extra = tuple(sorted(order_values))
    key = (len(rows), first_unit is not None, extra)
    query = _WRITE_UNITS.get(key)
    if query is None:
        query = _WRITE_UNITS[key] = fast.Query(partial(_units_written, *key))
    params: dict[str, Any] = {
        "b_id": order_id,
        "b_current": current.value,
        "b_new": target.value,
        "b_now": now,
        **{f"b_{k}": v for k, v in order_values.items()},
    }
    for n, row in enumerate(rows):
        params.update(fast.prefixed(f"u{n}_", row))
    command = None
    if first_unit is not None:
        command = outbox_rows.prepare(
            ctx.tunables.topic_prefix,
            first_unit["machine_id"],
            _command(first_unit),
            now,
            dispense_id=first_unit["id"],
        )
        params.update(fast.prefixed("o_", command.values))
    written = await query.first(conn, **params)
    if written is None or written["moved"] != 1:
        raise RuntimeError(f"order {order_id} changed under a lock")
    if command is not None:
        command.written(written["outbox_id"])
    log.info("order %s %s", order_id, " → ".join(s.value for s in steps))


_INFLIGHT = dispenses.alias("inflight")
_NEXT_UNIT = fast.Query(
    lambda: (
        sa.select(dispenses)
        .where(
            dispenses.c.machine_id == sa.bindparam("machine_id"),
            dispenses.c.status == UnitStatus.QUEUED.value,
            # Past its queue deadline a unit is refunded (give_up_due), never sent.
            dispenses.c.expires_at > sa.bindparam("now", type_=dispenses.c.expires_at.type),
            # One query with the "is a unit already in flight here" check.
            ~sa.exists().where(_INFLIGHT.c.inflight_machine == sa.bindparam("machine_id")),
        )
        .order_by(dispenses.c.id)
        .limit(1)
    )
)
_PUT_IN_FLIGHT = fast.Query(
    lambda: (
        sa.update(dispenses)
        .where(dispenses.c.id == sa.bindparam("b_id"))
        .values(
            status=UnitStatus.IN_FLIGHT.value,
            inflight_machine=sa.bindparam("b_machine"),
            expires_at=sa.bindparam("b_expires_at"),
            dispatched_at=sa.bindparam("b_now"),
        )
    )
)


async def dispatch_next(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    *,
    locked: Row | None = None,
) -> bool:
    """Put the oldest queued unit of this machine in flight, unless one already is or the
    machine is known to be offline (then it waits; a status ONLINE dispatches it).
    `locked`: the machine row, if the caller already holds its lock in this transaction."""
    # Serialises dispatchers of one machine (a no-op on SQLite, which serialises writers).
    machine = locked if locked is not None else await lock_machine(conn, machine_id)
    status = machine["status"] if machine else None
    if status in UNREACHABLE:
        return False
    unit = await _NEXT_UNIT.first(conn, machine_id=machine_id, now=ctx.clock())
    if unit is None:
        return False
    now = ctx.clock()
    expires_at = now + timedelta(seconds=ctx.tunables.command_ttl_s)
    check_unit_transition(UnitStatus(unit["status"]), UnitStatus.IN_FLIGHT)
    await _PUT_IN_FLIGHT.count(
        conn, b_id=unit["id"], b_machine=machine_id, b_expires_at=expires_at, b_now=now
    )
    await _send(ctx, conn, {**unit, "expires_at": expires_at}, now)
    return True


_SETTLED_COLUMNS = (
    "status",
    "inflight_machine",
    "completed_at",
    "success",
    "drop_detected",
    "duration_ms",
    "error_message",
    "next_attempt_at",
)


def _settled_values(
    new: UnitStatus,
    now: datetime,
    *,
    success: bool | None,
    drop_detected: bool | None,
    duration_ms: int | None,
    error: str | None,
) -> dict[str, object]:
    return {
        "status": new.value,
        "inflight_machine": None,
        "completed_at": now,
        "success": success,
        "drop_detected": drop_detected,
        "duration_ms": duration_ms,
        "error_message": error,
        "next_attempt_at": None,
    }


async def settle_unit(
    ctx: ServiceContext,
    conn: AsyncConnection,
    unit: Row,
    *,
    dropped: bool,
    success: bool | None,
    drop_detected: bool | None,
    duration_ms: int | None,
    error: str | None,
) -> None:
    """Apply the one outcome of a unit (read and locked by the caller): stock, refund owed,
    order status, next unit."""
    now = ctx.clock()
    new = UnitStatus.DROPPED if dropped else UnitStatus.FAILED
    check_unit_transition(UnitStatus(unit["status"]), new)
    changed = await conn.execute(
        sa.update(dispenses)
        .where(dispenses.c.id == unit["id"], dispenses.c.status == unit["status"])
        .values(
            **_settled_values(
                new,
                now,
                success=success,
                drop_detected=drop_detected,
                duration_ms=duration_ms,
                error=error,
            )
        )
    )
    if changed.rowcount != 1:
        raise RuntimeError(f"dispense {unit['id']} changed under a lock")
    await _after_settling(ctx, conn, unit, dropped=dropped, error=error, now=now)


def _settle_in_flight_update() -> sa.Update:
    return (
        sa.update(dispenses)
        .where(
            dispenses.c.id == sa.bindparam("b_id"),
            dispenses.c.machine_id == sa.bindparam("b_machine"),
            dispenses.c.order_id == sa.bindparam("b_order"),
            dispenses.c.slot_number == sa.bindparam("b_slot"),
            dispenses.c.status == UnitStatus.IN_FLIGHT.value,
        )
        .values({k: sa.bindparam(f"b_{k}") for k in _SETTLED_COLUMNS})
    )


def _commands_closed(settled: sa.CTE) -> sa.CTE:
    """Its commands are done: the publisher's deferred mark (if still pending) is no longer
    needed, and the poll never sends a settled unit's command again."""
    return (
        sa.update(outbox)
        .where(outbox.c.dispense_id == settled.c.id, outbox.c.published_at.is_(None))
        .values(published_at=sa.bindparam("b_completed_at", type_=outbox.c.published_at.type))
        .cte("closed")
    )


def _settle_and_close() -> sa.Select[Any]:
    settled = _settle_in_flight_update().returning(*dispenses.c).cte("settled")
    return sa.select(settled).add_cte(_commands_closed(settled))


_SETTLE_IN_FLIGHT = fast.Query(lambda: _settle_in_flight_update().returning(*dispenses.c))
# PostgreSQL: the unit settled and its outbox rows closed in one statement.
_SETTLE_IN_FLIGHT_AND_CLOSE = fast.Query(_settle_and_close)


async def settle_in_flight(
    ctx: ServiceContext,
    conn: AsyncConnection,
    machine_id: str,
    command_id: str,
    *,
    order_id: str,
    slot_number: int,
    dropped: bool,
    success: bool | None,
    drop_detected: bool | None,
    duration_ms: int | None,
    error: str | None,
) -> Row | None:
    """The common case of a result, in one statement where the database returns what it
    updated (PostgreSQL, SQLite): settle the unit if it is this machine's command for this
    order and slot and still in flight. None (nothing changed) otherwise, or on MariaDB (no
    UPDATE … RETURNING): the caller then reads and locks the unit and decides."""
    if not conn.dialect.update_returning:
        return None
    now = ctx.clock()
    new = UnitStatus.DROPPED if dropped else UnitStatus.FAILED
    check_unit_transition(UnitStatus.IN_FLIGHT, new)
    closes = fast.writes_in_ctes(conn)
    unit = await (_SETTLE_IN_FLIGHT_AND_CLOSE if closes else _SETTLE_IN_FLIGHT).first(
        conn,
        b_id=command_id,
        b_machine=machine_id,
        b_order=order_id,
        b_slot=slot_number,
        **fast.prefixed(
            "b_",
            _settled_values(
                new,
                now,
                success=success,
                drop_detected=drop_detected,
                duration_ms=duration_ms,
                error=error,
            ),
        ),
    )
    if unit is not None:
        await _after_settling(
            ctx, conn, unit, dropped=dropped, error=error, now=now, commands_closed=closes
        )
    return unit


_CLOSE_COMMANDS = fast.Query(
    lambda: (
        sa.update(outbox)
        .where(outbox.c.dispense_id == sa.bindparam("unit_id"), outbox.c.published_at.is_(None))
        .values(published_at=sa.bindparam("now"))
    )
)


async def _after_settling(
    ctx: ServiceContext,
    conn: AsyncConnection,
    unit: Row,
    *,
    dropped: bool,
    error: str | None,
    now: datetime,
    commands_closed: bool = False,
) -> None:
    # Its commands are done: the publisher's deferred mark (if still pending) is no longer
    # needed, and the poll never sends a settled unit's command again.
    if not commands_closed:
        await _CLOSE_COMMANDS.count(conn, unit_id=unit["id"], now=now)
    # The publish is marked later (or never, see above): the dispatch is the closest time.
    sent_at = unit["command_sent_at"] or unit["dispatched_at"]
    ctx.unit_settled(dropped, (now - sent_at).total_seconds() if sent_at else None)
    if dropped:
        await stock.consume_reserved_unit(
            conn, unit["slot_id"], now, order_id=unit["order_id"], dispense_id=unit["id"]
        )
    else:
        await stock.release(
            conn,
            unit["slot_id"],
            1,
            now,
            order_id=unit["order_id"],
            dispense_id=unit["id"],
            reason=f"unit of order {unit['order_id']} failed ({error or 'unknown'})",
        )
        await refunds.owe_unit_refund(conn, unit, error or UnitFailure.UNSPECIFIED.value, now)
        await alerts.record(
            conn,
            machine_id=unit["machine_id"],
            kind="VEND_FAILED",
            severity=alerts.Severity.WARNING,
            message=f"slot {unit['slot_number']} failed to vend for order {unit['order_id']} "
            f"({error or 'unknown'}); {rupiah(unit['unit_price'])} is owed back",
            details={"order_id": unit["order_id"], "command_id": unit["id"]},
            now=now,
        )
    outcome = OrderStatus.COMPLETED if dropped else OrderStatus.FAILED
    if not await _settle_one_unit_order(conn, unit["order_id"], outcome, now):
        await _settle_order(conn, unit["order_id"], now)
    await dispatch_next(ctx, conn, unit["machine_id"])


def _one_unit_order_update(dropped: bool) -> sa.Update:
    one_unit = (
        sa.select(sa.func.coalesce(sa.func.sum(order_items.c.quantity), 0))
        .where(order_items.c.order_id == sa.bindparam("b_id"))
        .scalar_subquery()
    )
    extra: dict[str, Any] = {"dispensed_at": sa.bindparam("b_now")} if dropped else {}
    return (
        sa.update(orders)
        .where(
            orders.c.id == sa.bindparam("b_id"),
            orders.c.status == sa.bindparam("b_current"),
            one_unit == 1,
        )
        .values(status=sa.bindparam("b_new"), updated_at=sa.bindparam("b_now"), **extra)
    )


# By outcome: COMPLETED (True) also stamps dispensed_at.
_SETTLE_ONE_UNIT_ORDER = {
    dropped: fast.Query(partial(_one_unit_order_update, dropped)) for dropped in (True, False)
}


async def _settle_one_unit_order(
    conn: AsyncConnection, order_id: str, outcome: OrderStatus, now: datetime
) -> bool:
    """A DISPENSING order of one unit ends with it: one conditional UPDATE. False for an
    order of several units, or one in another status (e.g. still PENDING_DISPENSE because the
    command's mark has not moved it yet): the caller then reads its units under its lock."""
    current = OrderStatus.DISPENSING
    check_order_transition(current, outcome)
    dropped = outcome is OrderStatus.COMPLETED
    changed = await _SETTLE_ONE_UNIT_ORDER[dropped].count(
        conn, b_id=order_id, b_current=current.value, b_new=outcome.value, b_now=now
    )
    if changed != 1:
        return False
    log.info("order %s %s → %s", order_id, current.value, outcome.value)
    return True


async def _settle_order(conn: AsyncConnection, order_id: str, now: datetime) -> None:
    order = await lock_order(conn, order_id)
    if order is None:
        raise RuntimeError(f"order {order_id} vanished")
    statuses = (
        (await conn.execute(sa.select(dispenses.c.status).where(dispenses.c.order_id == order_id)))
        .scalars()
        .all()
    )
    outcome = order_outcome([UnitStatus(s) for s in statuses])
    if outcome is None:
        return
    current = OrderStatus(order["status"])
    if current in (OrderStatus.PAID, OrderStatus.PENDING_DISPENSE) and (
        outcome is OrderStatus.COMPLETED
    ):
        # A unit can only drop after its command went out; catch up with that fact.
        current = await move_order(conn, order_id, current, OrderStatus.DISPENSING, now)
    extra: dict[str, Any] = {"dispensed_at": now} if outcome is OrderStatus.COMPLETED else {}
    await move_order(conn, order_id, current, outcome, now, **extra)


async def correct_late_drop(
    ctx: ServiceContext,
    conn: AsyncConnection,
    unit: Row,
    *,
    drop_detected: bool,
    duration_ms: int | None,
) -> tuple[str | None, bool]:
    """A given-up unit reported dropped: it counts as sold, stock follows, its refund (if not
    yet paid) is held for an operator. Returns the refund's status and whether stock moved."""
    now = ctx.clock()
    new = check_late_drop(UnitStatus(unit["status"]))
    changed = await conn.execute(
        sa.update(dispenses)
        .where(dispenses.c.id == unit["id"], dispenses.c.status == unit["status"])
        .values(
            status=new.value,
            success=True,
            drop_detected=drop_detected,
            duration_ms=duration_ms,
            error_message=f"dropped after {unit['error_message'] or 'give-up'}"[:200],
        )
    )
    if changed.rowcount != 1:
        raise RuntimeError(f"dispense {unit['id']} changed under a lock")
    stocked = await stock.consume_late_unit(
        conn, unit["slot_id"], now, order_id=unit["order_id"], dispense_id=unit["id"]
    )
    refund_status = await refunds.hold_unit_refund(conn, unit["id"], now)
    order = await lock_order(conn, unit["order_id"])
    if order is None:
        raise RuntimeError(f"order {unit['order_id']} vanished")
    current = OrderStatus(order["status"])
    statuses = await conn.scalars(
        sa.select(dispenses.c.status).where(dispenses.c.order_id == unit["order_id"])
    )
    outcome = order_outcome([UnitStatus(s) for s in statuses.all()])
    if current in LATE_DROP_ORDER_CORRECTION and outcome is OrderStatus.COMPLETED:
        await conn.execute(
            sa.update(orders)
            .where(orders.c.id == order["id"], orders.c.status == current.value)
            .values(
                status=LATE_DROP_ORDER_CORRECTION[current].value, updated_at=now, dispensed_at=now
            )
        )
        log.info("order %s %s → COMPLETED (late drop)", order["id"], current.value)
    return refund_status, stocked


async def trigger(ctx: ServiceContext, order_id: str) -> str:
    """The seed's /api/dispense/trigger: start a PAID order or nudge a waiting one."""
    async with ctx.engine.begin() as conn:
        order = await lock_order(conn, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        status = OrderStatus(order["status"])
        has_units = await conn.scalar(
            sa.select(dispenses.c.id).where(dispenses.c.order_id == order_id).limit(1)
        )
        if status is OrderStatus.PAID and has_units is None:
            await create_units(ctx, conn, order_id, order["machine_id"])
        elif status in (OrderStatus.PAID, OrderStatus.PENDING_DISPENSE, OrderStatus.DISPENSING):
            await dispatch_next(ctx, conn, order["machine_id"])
        else:
            raise Conflict(f"order {order_id} is {status.value}; only paid orders dispense")
    ctx.wake_outbox()
    async with ctx.engine.connect() as conn:
        return str(await conn.scalar(sa.select(orders.c.status).where(orders.c.id == order_id)))
