"""Typed read views the services return, and the window (limit/offset) every list is read in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
# The most rows one list request may ask for: enough for a chart, small enough for one query.
MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Window:
    limit: int = 100
    offset: int = 0

    def apply(self, stmt: Any) -> Any:
        """One row more than asked for tells whether another page follows."""
        return stmt.limit(self.limit + 1).offset(self.offset)


@dataclass(frozen=True, slots=True)
class Slice(Generic[T]):
    items: list[T]
    window: Window
    more: bool

    @classmethod
    def of(cls, rows: list[T], window: Window) -> Slice[T]:
        """From rows read through `Window.apply` (up to limit + 1 of them)."""
        return cls(rows[: window.limit], window, len(rows) > window.limit)

    @classmethod
    def cut(cls, rows: list[T], window: Window) -> Slice[T]:
        """From a complete list held in memory (a machine's slots)."""
        return cls.of(rows[window.offset : window.offset + window.limit + 1], window)

    @property
    def next_offset(self) -> int | None:
        return self.window.offset + len(self.items) if self.more else None


class View(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class StockLogView(View):
    id: int
    machine_id: str
    slot_id: str
    slot_number: int
    product_id: str | None
    change_type: str
    quantity_change: int
    stock_before: int
    stock_after: int
    reason: str | None
    order_id: str | None
    dispense_id: str | None
    user_id: str | None
    created_at: datetime


class DispenseLogView(View):
    """One unit: the seed's dispense_logs row plus our command id, state and attempts."""

    command_id: str
    order_id: str
    machine_id: str
    slot_number: int
    status: str
    attempts: int
    timeout_ms: int
    command_sent_at: datetime | None
    completed_at: datetime | None
    success: bool | None
    drop_detected: bool | None
    duration_ms: int | None
    error_message: str | None
    created_at: datetime


class TelemetryView(View):
    id: int
    machine_id: str
    received_at: datetime
    device_ts: int | None
    temperature: float | None
    humidity: float | None
    rssi: int | None
    door: str | None
    payload: dict[str, Any]


class HourlyView(View):
    """One machine-hour of telemetry, rolled up (min/avg/max)."""

    machine_id: str
    hour: datetime
    readings: int
    temperature_min: float | None
    temperature_avg: float | None
    temperature_max: float | None
    humidity_min: float | None
    humidity_avg: float | None
    humidity_max: float | None
    rssi_min: int | None
    rssi_avg: float | None
    rssi_max: int | None


class OrderSummaryView(View):
    order_id: str
    machine_id: str
    status: str
    total_amount: int
    refunded_amount: int
    payment_method: str | None
    customer_phone: str | None  # operators only: this list needs a bearer token
    expires_at: datetime
    paid_at: datetime | None
    dispensed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class PaymentView(View):
    """An order's payment; without the order's access token only the first four are shown."""

    order_id: str
    provider: str
    status: str
    amount: int
    transaction_id: str | None = None
    payment_type: str | None = None
    redirect_url: str | None = None
    qr_string: str | None = None
    qr_url: str | None = None
    gateway_expires_at: datetime | None = None
    paid_at: datetime | None = None


class ProductView(View):
    """A product; listed for a machine, also the slot selling it and how many can be bought."""

    id: str
    name: str
    price: int
    description: str | None = None
    category: str | None = None
    image_url: str | None = None
    is_active: bool = True
    slot_number: int | None = None
    slot_id: str | None = None
    machine_id: str | None = None
    available: int | None = None
    capacity: int | None = None


class TemperatureView(View):
    temperature: float
    humidity: float | None
    recorded_at: datetime


class MachineView(View):
    id: str
    name: str
    location: str | None
    status: str
    is_active: bool
    fw: str | None
    boot_id: str | None
    last_seen_at: datetime | None
    config_version: int
    telemetry_interval_s: int
    created_at: datetime
    updated_at: datetime


class SlotView(View):
    """A slot's set-up and stock; `price` is what it sells at, `available` what can be bought."""

    id: str
    machine_id: str
    slot_number: int
    product_id: str | None
    product_name: str | None
    description: str | None
    category: str | None
    image_url: str | None
    price: int | None
    price_override: int | None
    capacity: int
    current_stock: int
    reserved: int
    available: int
    motor_duration_ms: int
    is_active: bool
    sensed_level: str | None
    sensed_at: datetime | None
