"""What every use case needs: the engine, tunables, a clock and a way to wake the publisher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    # How long a paid unit may wait for its machine (busy or offline) before it is refunded.
    queue_ttl_s: int = 600
    # A machine silent for this many telemetry intervals is considered offline (protocol.md).
    presence_intervals: int = 3
    # "refund" every payment for an already-closed order, or "dispense" it if stock allows.
    late_payment_policy: str = "refund"
    order_ttl_s: int = 900
    default_machine_id: str = "VM01"


@dataclass(frozen=True, slots=True)
class PaymentPolicy:
    """How hard the payment jobs chase the gateway (settings RECONCILE_*, REFUND_*)."""

    reconcile_after_s: int = 120  # a webhook normally comes within seconds; then ask
    reconcile_every_s: int = 60  # and ask again this often while the order stays unpaid
    refund_max_attempts: int = 5  # gateway refusals (4xx) before a refund is FAILED
    backoff_base_s: int = 30
    backoff_max_s: int = 3600
    # A claimed refund/close is left alone this long, longer than any HTTP call takes, so
    # a crashed worker's claim lapses and another worker retries with the same key.
    lease_s: int = 120

    def backoff(self, attempts: int) -> int:
        """Seconds before attempt `attempts + 1`: doubling from the base, capped."""
        return int(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1)))


@dataclass(slots=True)
class ServiceContext:
    engine: AsyncEngine
    tunables: Tunables = field(default_factory=Tunables)
    clock: Callable[[], datetime] = utcnow
    # Called after a commit that wrote outbox rows, so the publisher need not poll.
    wake_outbox: Callable[[], None] = lambda: None
    # The in-process publisher: committed outbox rows go to it at once (services/outbox.py).
    # None (CLI, tests): rows wait for whoever polls the outbox.
    hand_off: Callable[[Sequence[Any]], None] | None = None
    mqtt_connected: Callable[[], bool] = lambda: False
    # Called when a unit settles: (dropped, seconds from first send to result or None).
    unit_settled: Callable[[bool, float | None], None] = lambda dropped, latency: None
    # Called when one row of a periodic pass failed (label: the pass); the pass goes on.
    row_failed: Callable[[str], None] = lambda pass_name: None
