"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from vendhub.services.auth import Role
from vendhub.services.stock import ChangeType

Strict = ConfigDict(extra="forbid", strict=True)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
BIGINT_MAX = 2**63 - 1


def _in_utc_range(value: datetime) -> datetime:
    """An aware datetime in UTC, within what every database stores (a naive one is left
    naive, for the handler to judge)."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("datetime is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("datetime must be between 1970 and 9999")
    return value if value.tzinfo is None else utc


# Use for every datetime a client sends: out-of-range values are a 422, not an overflow.
SafeDatetime = Annotated[datetime, AfterValidator(_in_utc_range)]


class ErrorBody(BaseModel):
    error: str
    message: str
    details: Any | None = None


class LoginRequest(BaseModel):
    model_config = Strict
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenResponse(BaseModel):
    success: bool = True
    token: str
    token_type: str = "bearer"
    user: dict[str, Any]


class OrderLineIn(BaseModel):
    model_config = Strict
    slot_number: int | None = Field(default=None, ge=1, le=1000)
    slot_id: str | None = Field(default=None, max_length=40)
    quantity: int = Field(default=1, ge=1, le=20)

    @model_validator(mode="after")
    def _one_slot(self) -> OrderLineIn:
        if (self.slot_number is None) == (self.slot_id is None):
            raise ValueError("give exactly one of slot_number or slot_id")
        return self


class OrderCreate(OrderLineIn):
    machine_id: str | None = Field(default=None, max_length=50)
    customer_phone: str | None = Field(default=None, max_length=32)
    payment_method: Literal["qris", "snap", "gopay", "shopeepay"] | None = None


class MultiOrderCreate(BaseModel):
    model_config = Strict
    machine_id: str | None = Field(default=None, max_length=50)
    items: list[OrderLineIn] = Field(min_length=1, max_length=20)
    customer_phone: str | None = Field(default=None, max_length=32)
    payment_method: Literal["qris", "snap", "gopay", "shopeepay"] | None = None


class PaymentInfo(BaseModel):
    """What a kiosk needs to take the payment: a QR to show, or a Snap page to open."""

    provider: str
    status: str
    token: str | None = None
    redirect_url: str | None = None
    qr_string: str | None = None
    qr_url: str | None = None
    transaction_id: str | None = None
    payment_type: str | None = None
    gateway_expires_at: datetime | None = None


class OrderItemPublic(BaseModel):
    slot_number: int
    product_id: str
    product_name: str
    unit_price: int
    quantity: int
    subtotal: int


class DispensePublic(BaseModel):
    command_id: str
    slot_number: int
    status: str
    attempts: int
    command_sent_at: datetime | None
    completed_at: datetime | None
    success: bool | None
    drop_detected: bool | None
    duration_ms: int | None
    error_message: str | None


class RefundPublic(BaseModel):
    id: str
    dispense_id: str | None
    refund_key: str
    amount: int
    status: str  # PENDING (owed, being paid out), SUCCEEDED, FAILED (needs a human)
    reason: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    provider_ref: str | None
    completed_at: datetime | None


class OrderPublic(BaseModel):
    order_id: str
    machine_id: str
    status: str
    total_amount: int
    refunded_amount: int
    expires_at: datetime
    paid_at: datetime | None
    dispensed_at: datetime | None
    created_at: datetime
    items: list[OrderItemPublic]
    dispenses: list[DispensePublic]
    refunds: list[RefundPublic]
    # True while any refund of this order is still owed (PENDING) or was refused (FAILED).
    refund_pending: bool = False
    payment: PaymentInfo | None
    # Only in the creation response: the secret that reads and cancels this order anonymously
    # (send it as X-Order-Token or ?token=); the server keeps only its hash.
    access_token: str | None = None


class MachineCreate(BaseModel):
    model_config = Strict
    id: str = Field(min_length=1, max_length=50)
    name: str = Field(min_length=1, max_length=120)
    location: str | None = Field(default=None, max_length=255)
    telemetry_interval_s: int | None = Field(default=None, ge=5, le=3600)


class MachineUpdate(BaseModel):
    model_config = Strict
    name: str | None = Field(default=None, min_length=1, max_length=120)
    location: str | None = Field(default=None, max_length=255)
    is_active: bool | None = None
    telemetry_interval_s: int | None = Field(default=None, ge=5, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        return reject_nulls(data, {"name", "is_active", "telemetry_interval_s"})


class MachinePublic(BaseModel):
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


class SlotUpdate(BaseModel):
    model_config = Strict
    product_id: str | None = Field(default=None, max_length=40)
    capacity: int | None = Field(default=None, ge=0, le=1000)
    price_override: int | None = Field(default=None, ge=0, le=100_000_000)
    motor_duration_ms: int | None = Field(default=None, ge=100, le=60_000)
    is_active: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        return reject_nulls(data, {"capacity", "motor_duration_ms", "is_active"})


class SlotPublic(BaseModel):
    id: str
    machine_id: str
    slot_number: int
    product_id: str | None
    product_name: str | None
    price: int | None
    capacity: int
    current_stock: int
    reserved: int
    available: int
    motor_duration_ms: int
    is_active: bool
    sensed_level: str | None


class ProductIn(BaseModel):
    model_config = Strict
    name: str = Field(min_length=1, max_length=120)
    price: int = Field(ge=0, le=100_000_000)
    description: str | None = Field(default=None, max_length=2000)
    category: str | None = Field(default=None, max_length=60)
    image_url: str | None = Field(default=None, max_length=500)
    is_active: bool = True


class ProductPublic(BaseModel):
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


class StockUpdate(BaseModel):
    model_config = Strict
    machine_id: str | None = Field(default=None, max_length=50)
    slot_number: int = Field(ge=1, le=1000)
    change_type: ChangeType = Field(strict=False)
    quantity_change: int | None = Field(default=None, ge=-1000, le=1000)
    new_stock: int | None = Field(default=None, ge=0, le=1000)
    reason: str | None = Field(default=None, max_length=500)


class DispenseTrigger(BaseModel):
    model_config = Strict
    order_id: str = Field(min_length=1, max_length=40)


class UserCreate(BaseModel):
    model_config = Strict
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    role: Role = Field(strict=False)


class UserUpdate(BaseModel):
    model_config = Strict
    is_active: bool | None = None
    role: Role | None = Field(default=None, strict=False)
    password: str | None = Field(default=None, min_length=8, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        return reject_nulls(data, {"is_active", "role", "password"})


def reject_nulls(data: Any, not_null: set[str]) -> Any:
    """An explicit null for a column that cannot hold one is a 422, not a database error."""
    if isinstance(data, dict):
        nulls = sorted(k for k in not_null if k in data and data[k] is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
    return data


class SimulatedResult(BaseModel):
    """The seed's body for /api/debug/mqtt/simulate-dispense-result."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    order_id: str = Field(alias="orderId", min_length=1, max_length=40)
    slot: int = Field(ge=1, le=1000)
    success: bool = True
    drop_detected: bool = Field(default=True, alias="dropDetected")
    duration_ms: int = Field(default=1850, alias="durationMs", ge=0)
    machine_id: str | None = Field(default=None, alias="machineId", max_length=50)
    command_id: str | None = Field(default=None, alias="commandId", max_length=40)
    error: str | None = Field(default=None, max_length=64)


class TestCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    machine_id: str | None = Field(default=None, alias="machineId", max_length=50)
    slot: int = Field(default=1, ge=1, le=1000)


class PaymentUpdate(BaseModel):
    model_config = Strict
    status: Literal["SUCCESS", "PAID", "PENDING", "FAILED", "EXPIRED", "CANCELLED"]
