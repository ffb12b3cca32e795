"""Machine presence and telemetry from the fleet."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import dispenses, machine_events, machines, slots, telemetry
from vendhub.protocol.messages import PresenceStatus, StatusMessage, SyncCommand, Telemetry
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import dispatch_next, lock_machine
from vendhub.services.errors import NotFound
from vendhub.services.outbox import enqueue
from vendhub.services.passes import isolated

log = logging.getLogger(__name__)


# Not frozen: a frozen dataclass's __init__ sets every field through object.__setattr__
# (~1.2 µs instead of ~0.3), once per message of a burst. Nothing changes one once built.
@dataclass(slots=True)
class TelemetryReading:
    machine_id: str
    received_at: datetime
    reading: Telemetry
    raw: dict[str, Any]
    # The payload as received (validated JSON): stored as it came on PostgreSQL (COPY),
    # which saves encoding `raw` again.
    text: bytes | None = None


async def store_telemetry(ctx: ServiceContext, batch: list[TelemetryReading]) -> int:
    """One transaction for the whole batch; readings of unknown machines are skipped.

    Should the database refuse the batch, each reading is stored on its own, so one bad
    reading costs only itself (counted as a failed row of the "telemetry" pass)."""
    if not batch:
        return 0
    try:
        stored, offline = await _store(ctx, batch)
    except Exception as exc:
        first_line = (str(exc).splitlines() or [""])[0][:300]
        log.warning(
            "telemetry batch of %d refused (%s); storing one by one", len(batch), first_line
        )
        stored, offline = 0, {}
        for reading in batch:
            one = await isolated(
                ctx, "telemetry", f"machine {reading.machine_id}", partial(_store, ctx, [reading])
            )
            if one is not None:
                stored += one[0]
                offline.update(one[1])
    for machine_id, heard_at in offline.items():
        await isolated(
            ctx,
            "presence",
            f"machine {machine_id}",
            partial(back_online, ctx, machine_id, heard_at),
        )
    return stored


async def _store(
    ctx: ServiceContext, batch: list[TelemetryReading]
) -> tuple[int, dict[str, datetime]]:
    """Returns the readings stored and the OFFLINE machines heard from (with when)."""
    async with ctx.engine.begin() as conn:
        known = {
            r.id: r
            for r in await conn.execute(
                sa.select(machines.c.id, machines.c.status, machines.c.updated_at).where(
                    machines.c.id.in_({r.machine_id for r in batch})
                )
            )
        }
        kept = [r for r in batch if r.machine_id in known]
        if kept:
            await _insert_readings(conn, kept)
        levels = [
            {"m": r.machine_id, "n": s.id, "level": s.level.value, "at": r.received_at}
            for r in batch
            if r.machine_id in known
            for s in r.reading.slots
        ]
        if levels:
            # Sensed level only: counted stock comes from dispenses and restocks.
            await conn.execute(
                sa.update(slots)
                .where(
                    slots.c.machine_id == sa.bindparam("m"),
                    slots.c.slot_number == sa.bindparam("n"),
                )
                .values(sensed_level=sa.bindparam("level"), sensed_at=sa.bindparam("at")),
                levels,
            )
        last_seen: dict[str, datetime] = {}
        for r in batch:
            if r.machine_id in known:
                last_seen[r.machine_id] = max(
                    r.received_at, last_seen.get(r.machine_id, r.received_at)
                )
        if last_seen:
            await conn.execute(
                sa.update(machines)
                .where(machines.c.id == sa.bindparam("mid"))
                .values(last_seen_at=sa.bindparam("seen")),
                [{"mid": m, "seen": t} for m, t in last_seen.items()],
            )
    if len(kept) < len(batch):
        log.info("dropped %d telemetry reading(s) from unknown machines", len(batch) - len(kept))
    offline = {
        m: t
        for m, t in last_seen.items()
        if known[m].status == PresenceStatus.OFFLINE.value
        # Only what was heard after it went OFFLINE (a late reading queued before the
        # device's last will must not revive it).
        and (known[m].updated_at is None or known[m].updated_at <= t)
    }
    return len(kept), offline


async def back_online(ctx: ServiceContext, machine_id: str, heard_at: datetime) -> bool:
    """A machine OFFLINE (silent, or by its last will) that speaks again is ONLINE: it gets a
    sync and the units waiting for it go out."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        machine = await lock_machine(conn, machine_id)
        if (
            machine is None
            or machine["status"] != PresenceStatus.OFFLINE.value
            or (machine["updated_at"] is not None and machine["updated_at"] > heard_at)
        ):
            return False
        await conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(status=PresenceStatus.ONLINE.value, updated_at=now)
        )
        await conn.execute(
            sa.insert(machine_events).values(
                machine_id=machine_id,
                event_type="STATUS",
                status=PresenceStatus.ONLINE.value,
                severity="info",
                message=f"machine {machine_id} is ONLINE (heard from again)",
                created_at=now,
            )
        )
        await enqueue(conn, ctx.tunables.topic_prefix, machine_id, SyncCommand(), now)
        await dispatch_next(ctx, conn, machine_id)
    log.info("machine %s is ONLINE again: heard from after being OFFLINE", machine_id)
    ctx.wake_outbox()
    return True


COPY_COLUMNS = (
    "machine_id",
    "received_at",
    "device_ts",
    "temperature",
    "humidity",
    "rssi",
    "door",
    "payload",
)


async def _insert_readings(conn: AsyncConnection, readings: list[TelemetryReading]) -> None:
    """PostgreSQL: COPY on the transaction's own asyncpg connection (one round trip, no
    per-row statement building). SQLite and MariaDB: one executemany (their drivers send it
    as one prepared statement run per row / one multi-row INSERT)."""
    if conn.dialect.name != "postgresql":
        await conn.execute(sa.insert(telemetry), [_telemetry_row(r) for r in readings])
        return
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    # The column is a naive UTC timestamp (adapters/db/types.py: UTCDateTime).
    naive: dict[datetime, datetime] = {}
    records = []
    for r in readings:
        at = naive.get(r.received_at)
        if at is None:
            at = naive[r.received_at] = r.received_at.astimezone(UTC).replace(tzinfo=None)
        t = r.reading
        text = r.text.decode("utf-8") if r.text is not None else json.dumps(r.raw)
        records.append((r.machine_id, at, t.ts, t.temperature, t.humidity, t.rssi, t.door, text))
    await driver.copy_records_to_table("telemetry", records=records, columns=COPY_COLUMNS)


def _telemetry_row(r: TelemetryReading) -> dict[str, Any]:
    return {
        "machine_id": r.machine_id,
        "received_at": r.received_at,
        "device_ts": r.reading.ts,
        "temperature": r.reading.temperature,
        "humidity": r.reading.humidity,
        "rssi": r.reading.rssi,
        "door": r.reading.door,
        "payload": r.raw,
    }


async def apply_status(ctx: ServiceContext, machine_id: str, message: StatusMessage) -> bool:
    """Record presence; returns True when a sync was queued (device online or rebooted)."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        machine = await lock_machine(conn, machine_id)
        if machine is None:
            log.info("status from unknown machine %s ignored", machine_id)
            return False
        changed = machine["status"] != message.status.value
        rebooted = bool(message.boot_id) and message.boot_id != machine["boot_id"]
        values: dict[str, Any] = {
            "status": message.status.value,
            "last_seen_at": now,
            "updated_at": now,
        }
        if message.fw:
            values["fw"] = message.fw
        if message.boot_id:
            values["boot_id"] = message.boot_id
        await conn.execute(sa.update(machines).where(machines.c.id == machine_id).values(**values))
        if changed or rebooted:
            text = f"machine {machine_id} is {message.status.value}"
            if rebooted:
                text += f" (boot {message.boot_id})"
            await conn.execute(
                sa.insert(machine_events).values(
                    machine_id=machine_id,
                    event_type="STATUS",
                    status=message.status.value,
                    severity="info" if message.status is PresenceStatus.ONLINE else "warning",
                    message=text,
                    details=message.model_dump(mode="json", by_alias=True),
                    created_at=now,
                )
            )
        sync = message.status is PresenceStatus.ONLINE and (changed or rebooted)
        if sync:
            await enqueue(conn, ctx.tunables.topic_prefix, machine_id, SyncCommand(), now)
        if message.status is PresenceStatus.ONLINE:
            # Units that waited for this machine go out now (no-op if one is in flight). Its
            # row is locked above, and now ONLINE: no second lock.
            locked = {**machine, "status": message.status.value}
            sync = await dispatch_next(ctx, conn, machine_id, locked=locked) or sync
    if sync:
        ctx.wake_outbox()
    return sync


async def mark_silent_machines_offline(ctx: ServiceContext) -> list[str]:
    """ONLINE machines not heard from for `presence_intervals` telemetry intervals → OFFLINE."""
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    machines.c.id, machines.c.last_seen_at, machines.c.telemetry_interval_s
                ).where(
                    machines.c.status == PresenceStatus.ONLINE.value,
                    machines.c.last_seen_at.is_not(None),
                )
            )
        ).all()
    silent = [
        (r.id, r.last_seen_at)
        for r in rows
        if r.last_seen_at
        < now - timedelta(seconds=r.telemetry_interval_s * ctx.tunables.presence_intervals)
    ]
    marked = []
    for machine_id, seen in silent:
        if await isolated(
            ctx, "presence", f"machine {machine_id}", partial(_mark_offline, ctx, machine_id, seen)
        ):
            marked.append(machine_id)
    return marked


async def _mark_offline(ctx: ServiceContext, machine_id: str, seen: datetime) -> bool:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        result = await conn.execute(
            sa.update(machines)
            .where(
                machines.c.id == machine_id,
                machines.c.status == PresenceStatus.ONLINE.value,
                # Heard from meanwhile (telemetry since the scan): not silent after all.
                machines.c.last_seen_at <= seen,
            )
            .values(status=PresenceStatus.OFFLINE.value, updated_at=now)
        )
        if result.rowcount != 1:
            return False
        await conn.execute(
            sa.insert(machine_events).values(
                machine_id=machine_id,
                event_type="STATUS",
                status=PresenceStatus.OFFLINE.value,
                severity="warning",
                created_at=now,
                message=f"machine {machine_id} is OFFLINE (silent for "
                f"{ctx.tunables.presence_intervals} telemetry intervals)",
            )
        )
    log.warning("machine %s marked OFFLINE: nothing heard since its last heartbeat", machine_id)
    return True


async def set_status_by_operator(
    ctx: ServiceContext,
    machine_id: str,
    status: PresenceStatus,
    username: str | None,
    reason: str | None = None,
) -> None:
    """An operator's status (e.g. MAINTENANCE); the device's own next status message wins.

    Unlike a device's message it is no sign of life: last_seen_at stays as it was.
    """
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        machine = await lock_machine(conn, machine_id)
        if machine is None:
            raise NotFound(f"machine {machine_id} not found")
        await conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(status=status.value, updated_at=now)
        )
        await conn.execute(
            sa.insert(machine_events).values(
                machine_id=machine_id,
                event_type="STATUS",
                status=status.value,
                severity="info" if status is PresenceStatus.ONLINE else "warning",
                message=f"machine {machine_id} set {status.value} by {username or 'an operator'}",
                details={"by": username, "reason": reason},
                created_at=now,
            )
        )
        # Units that waited for this machine go out now (no-op if one is in flight).
        woke = status is PresenceStatus.ONLINE and await dispatch_next(ctx, conn, machine_id)
    if woke:
        ctx.wake_outbox()
    log.info(
        "machine %s set %s by operator %s (%s)", machine_id, status.value, username, reason or "-"
    )


async def machines_awaiting_results(ctx: ServiceContext) -> list[str]:
    """Active machines with a command in flight: the only ones a missed result can be from."""
    async with ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(dispenses.c.inflight_machine)
            .join(machines, machines.c.id == dispenses.c.inflight_machine)
            .where(dispenses.c.inflight_machine.is_not(None), machines.c.is_active.is_(True))
            .order_by(dispenses.c.inflight_machine)
        )
        return [str(machine_id) for machine_id in rows.scalars()]
