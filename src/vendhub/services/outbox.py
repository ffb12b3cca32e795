"""Writing commands to the outbox inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import outbox
from vendhub.protocol.messages import AckCommand, DispenseCommand, MachineConfig, SyncCommand
from vendhub.protocol.topics import TopicKind, topic


class OutboxKind(StrEnum):
    DISPENSE = "dispense"
    ACK = "ack"
    SYNC = "sync"
    CONFIG = "config"


async def enqueue(
    conn: AsyncConnection,
    prefix: str,
    machine_id: str,
    message: DispenseCommand | AckCommand | SyncCommand | MachineConfig,
    now: datetime,
    *,
    dispense_id: str | None = None,
) -> None:
    if isinstance(message, MachineConfig):
        kind, kind_topic, retain = OutboxKind.CONFIG, TopicKind.CONFIG, True
    else:
        kind = OutboxKind(message.cmd)
        kind_topic, retain = TopicKind.COMMAND, False
    await conn.execute(
        sa.insert(outbox).values(
            kind=kind.value,
            machine_id=machine_id,
            topic=topic(prefix, machine_id, kind_topic),
            payload=message.to_bytes().decode(),
            qos=1,
            retain=retain,
            dispense_id=dispense_id,
            created_at=now,
        )
    )
