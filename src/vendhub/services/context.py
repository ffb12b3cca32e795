"""What every use case needs: the engine, tunables, a clock and a way to wake the publisher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Tunables:
    topic_prefix: str = "vm"
    motor_margin_ms: int = 650
    result_grace_ms: int = 5000
    dispense_max_attempts: int = 3
    command_ttl_s: int = 120
    order_ttl_s: int = 900
    default_machine_id: str = "VM01"


@dataclass(slots=True)
class ServiceContext:
    engine: AsyncEngine
    tunables: Tunables = field(default_factory=Tunables)
    clock: Callable[[], datetime] = utcnow
    # Called after a commit that wrote outbox rows, so the publisher need not poll.
    wake_outbox: Callable[[], None] = lambda: None
    mqtt_connected: Callable[[], bool] = lambda: False
