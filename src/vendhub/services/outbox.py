"""Writing commands to the outbox inside the caller's transaction, and handing them over."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.tables import outbox
from vendhub.protocol.messages import AckCommand, DispenseCommand, MachineConfig, SyncCommand
from vendhub.protocol.topics import TopicKind, topic

if TYPE_CHECKING:
    from vendhub.services.context import ServiceContext

# Longer than a batch's publishes can take (each waits at most MQTT_PUBLISH_TIMEOUT_S, 10 s);
# rows claimed by a replica (or a hand-off) that died go out again after it.
CLAIM_LEASE_S = 30


class OutboxKind(StrEnum):
    DISPENSE = "dispense"
    ACK = "ack"
    SYNC = "sync"
    CONFIG = "config"


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
    # False for a dispense whose unit settled or expired meanwhile: not worth sending.
    sendable: bool = True
    timeout_ms: int = 0
    order_id: str | None = None
    # An ack written already marked sent (see `enqueue`): published after the commit, never
    # marked. `acks` is the commandId it acknowledges.
    premarked: bool = False
    acks: str | None = None


# Rows written while a hand-off is open (see `handing_off`) are claimed at insert and
# collected here, to be published by this process right after the commit.
_collecting: ContextVar[list[OutboxItem] | None] = ContextVar("outbox_handoff", default=None)


@contextmanager
def handing_off(ctx: ServiceContext) -> Iterator[list[OutboxItem]]:
    """Around one transaction: the outbox rows it writes are returned for `hand_off` after
    the commit. Without an in-process publisher (CLI, tests) nothing is collected or claimed."""
    items: list[OutboxItem] = []
    token = _collecting.set(items if ctx.hand_off is not None else None)
    try:
        yield items
    finally:
        _collecting.reset(token)


def hand_off(ctx: ServiceContext, items: list[OutboxItem]) -> None:
    """After the commit: committed rows go to the publisher now; the outbox poll is only the
    fallback (a lost hand-off is published again once its claim lapses)."""
    if ctx.hand_off is None:
        ctx.wake_outbox()
    elif items:
        # Every row of the transaction is in `items`: nothing for the poll to find.
        ctx.hand_off(items)


COLUMNS = (
    "kind",
    "machine_id",
    "topic",
    "payload",
    "qos",
    "retain",
    "dispense_id",
    "created_at",
    "published_at",
    "claimed_until",
)
_INSERT = fast.Query(lambda: sa.insert(outbox), columns=COLUMNS)
_INSERT_ALONG: dict[tuple[str, tuple[str, ...]], fast.Query] = {}


def _insert_along(table: sa.Table, columns: tuple[str, ...]) -> fast.Query:
    """The outbox row and a row of `table` in one statement (PostgreSQL: an INSERT in WITH);
    the outbox row's parameters are named `o_<column>`, the other row's `w_<column>`."""
    key = (table.name, columns)
    query = _INSERT_ALONG.get(key)
    if query is None:
        along = fast.insert_values(table, columns, "w_").cte(f"along_{table.name}")
        query = _INSERT_ALONG[key] = fast.Query(
            lambda: fast.insert_values(outbox, COLUMNS, "o_").add_cte(along).returning(outbox.c.id)
        )
    return query


async def enqueue(
    conn: AsyncConnection,
    prefix: str,
    machine_id: str,
    message: DispenseCommand | AckCommand | SyncCommand | MachineConfig,
    now: datetime,
    *,
    dispense_id: str | None = None,
    along: tuple[sa.Table, Mapping[str, Any]] | None = None,
) -> None:
    """`along`: a row of another table written by the same statement (PostgreSQL only, see
    `fast.writes_in_ctes`)."""
    row = prepare(prefix, machine_id, message, now, dispense_id=dispense_id)
    if along is None:
        row_id = await _INSERT.insert_id(conn, **row.values)
    else:
        table, other = along
        row_id = await _insert_along(table, tuple(other)).insert_id(
            conn, **fast.prefixed("o_", row.values), **fast.prefixed("w_", other)
        )
    row.written(row_id)


@dataclass(slots=True)
class Prepared:
    """An outbox row about to be written by the caller's statement (`values`, by column);
    `written(id)` once it is, to hand it off after the commit."""

    values: dict[str, Any]
    item: OutboxItem | None

    def written(self, row_id: object) -> None:
        if self.item is None:
            return
        if row_id is None:
            raise RuntimeError("outbox insert returned no id")
        collected = _collecting.get()
        assert collected is not None
        collected.append(replace(self.item, id=int(row_id)))  # type: ignore[call-overload]


def prepare(
    prefix: str,
    machine_id: str,
    message: DispenseCommand | AckCommand | SyncCommand | MachineConfig,
    now: datetime,
    *,
    dispense_id: str | None = None,
) -> Prepared:
    if isinstance(message, MachineConfig):
        kind, kind_topic, retain = OutboxKind.CONFIG, TopicKind.CONFIG, True
    else:
        kind = OutboxKind(message.cmd)
        kind_topic, retain = TopicKind.COMMAND, False
    collected = _collecting.get()
    row_topic = topic(prefix, machine_id, kind_topic)
    payload = message.to_bytes()
    # An ack handed off in process is written already marked sent: if its publish is lost
    # (crash, broker away), the device re-publishes its result until acked (device obligation
    # 3) and the duplicate result is acked again. Without a hand-off the poll sends it.
    premarked = collected is not None and kind is OutboxKind.ACK
    values: dict[str, Any] = dict(
        kind=kind.value,
        machine_id=machine_id,
        topic=row_topic,
        payload=payload.decode(),
        qos=1,
        retain=retain,
        dispense_id=dispense_id,
        created_at=now,
        published_at=now if premarked else None,
        # Handed off: the poll leaves it alone unless this process never marks it sent.
        claimed_until=(
            now + timedelta(seconds=CLAIM_LEASE_S)
            if collected is not None and not premarked
            else None
        ),
    )
    if collected is None:
        return Prepared(values, None)
    return Prepared(
        values,
        OutboxItem(
            0,
            kind,
            machine_id,
            row_topic,
            payload,
            1,
            retain,
            dispense_id,
            timeout_ms=message.timeout_ms if isinstance(message, DispenseCommand) else 0,
            order_id=message.order_id if isinstance(message, DispenseCommand) else None,
            premarked=premarked,
            acks=message.command_id if isinstance(message, AckCommand) else None,
        ),
    )
