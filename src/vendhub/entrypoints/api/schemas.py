"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from vendhub.domain.model import OrderStatus
from vendhub.domain.payments import PaymentStatus
from vendhub.protocol.messages import PresenceStatus
from vendhub.services.auth import Role
from vendhub.services.stock import ChangeType
from vendhub.services.views import (
    MachineView,
    ProductView,
    SlotView,
)

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


def _seed_id(value: Any) -> Any:
    """The seed's ids were integers: a number is accepted where we expect an id string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _seed_method(value: Any) -> Any:
    """The seed's payment_method values, any case; "midtrans" is the Snap page."""
    if isinstance(value, str):
        value = value.strip().lower()
        return "snap" if value == "midtrans" else value
    return value


SeedId = Annotated[str, BeforeValidator(_seed_id)]
PaymentMethod = Annotated[
    Literal["qris", "snap", "gopay", "shopeepay", "va"], BeforeValidator(_seed_method)
]


class ErrorBody(BaseModel):
    error: str
    message: str
    details: Any | None = None


class LoginRequest(BaseModel):
    model_config = Strict
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class UserPublic(BaseModel):
    id: str
    username: str | None
    role: str


class UserAccount(BaseModel):
    """An operator account as the users API shows it (never its password hash)."""

    id: str
    username: str | None
    role: str
    is_active: bool
    created_at: datetime | None = None


class KioskKeyIssued(BaseModel):
    """A machine's kiosk key, shown once; the server keeps only its hash."""

    machine_id: str
    kiosk_key: str
    header: str = "X-Kiosk-Key"


class TokenResponse(BaseModel):
    success: bool = True
    token: str
    token_type: str = "bearer"
    user: UserPublic


class OrderLineIn(BaseModel):
    model_config = Strict
    slot_number: int | None = Field(default=None, ge=1, le=1000)
    slot_id: SeedId | None = Field(default=None, max_length=40)
    quantity: int = Field(default=1, ge=1, le=20)

    @model_validator(mode="after")
    def _one_slot(self) -> OrderLineIn:
        if (self.slot_number is None) == (self.slot_id is None):
            raise ValueError("give exactly one of slot_number or slot_id")
        return self


class OrderCreate(OrderLineIn):
    machine_id: str | None = Field(default=None, max_length=50)
    customer_phone: str | None = Field(default=None, max_length=32)
    payment_method: PaymentMethod | None = None


class MultiOrderCreate(BaseModel):
    model_config = Strict
    machine_id: str | None = Field(default=None, max_length=50)
    items: list[OrderLineIn] = Field(min_length=1, max_length=20)
    customer_phone: str | None = Field(default=None, max_length=32)
    payment_method: PaymentMethod | None = None


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


class OrderStatusPublic(BaseModel):
    """What anyone holding the order id may read: its state, never who the customer is.

    The seed's kiosk fields are flat: for a multi-item order `product_name`, `slot_number`
    and `unit_price` are those of the first item and `quantity` counts every unit.
    """

    success: bool = True
    order_id: str
    machine_id: str
    status: str
    payment_status: str | None
    product_name: str
    slot_number: int
    quantity: int
    unit_price: int
    total_amount: int
    refunded_amount: int
    # True while the ledger says money is owed back (a refund PENDING, or FAILED and not yet
    # paid another way).
    refund_pending: bool = False
    expires_at: datetime
    paid_at: datetime | None
    payment_processed_at: datetime | None
    dispensed_at: datetime | None
    created_at: datetime
    items: list[OrderItemPublic]
    dispenses: list[DispensePublic]


class OrderPublic(OrderStatusPublic):
    """The whole order: the creator (access token) and operators read this."""

    customer_phone: str | None = None
    payment_method: str | None = None
    # The seed's flat payment fields, copied from `payment`.
    payment_url: str | None = None
    payment_token: str | None = None
    qr_string: str | None = None
    refunds: list[RefundPublic]
    payment: PaymentInfo | None
    # The money ledger (payment_receipts, units, refunds): every payment of any transaction,
    # what is still owed back, and refunds held for an operator after a late drop.
    # (None in the public view of an order read without its access token.)
    paid_amount: int | None = None
    refund_owed: int | None = None
    refund_held: int | None = None
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
    model_config = ConfigDict(from_attributes=True)
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

    @classmethod
    def of(cls, view: MachineView) -> MachinePublic:
        return cls.model_validate(view)


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
    model_config = ConfigDict(from_attributes=True)
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

    @classmethod
    def of(cls, view: SlotView) -> SlotPublic:
        return cls.model_validate(view)


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
    # The seed's names: product_id/product_name, the slot's final_price and current_stock
    # (here the units a customer can still buy: counted stock minus open reservations).
    product_id: str
    product_name: str
    final_price: int
    current_stock: int | None = None
    capacity: int | None = None

    @classmethod
    def of(cls, view: ProductView) -> ProductPublic:
        return cls(
            **view.model_dump(),
            product_id=view.id,
            product_name=view.name,
            final_price=view.price,
            current_stock=view.available,
        )


class StockUpdate(BaseModel):
    """Ours: slot_number + change_type + quantity_change | new_stock.

    The seed's: slot_id + quantity, a change (RESTOCK by default) or, for AUDIT, the count.
    """

    model_config = Strict
    machine_id: str | None = Field(default=None, max_length=50)
    slot_number: int | None = Field(default=None, ge=1, le=1000)
    slot_id: SeedId | None = Field(default=None, min_length=1, max_length=40)
    change_type: ChangeType = Field(default=ChangeType.RESTOCK, strict=False)
    quantity_change: int | None = Field(default=None, ge=-1000, le=1000)
    new_stock: int | None = Field(default=None, ge=0, le=1000)
    quantity: int | None = Field(default=None, ge=-1000, le=1000)
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _one_slot(self) -> StockUpdate:
        if (self.slot_number is None) == (self.slot_id is None):
            raise ValueError("give exactly one of slot_number or slot_id")
        if self.quantity is not None and (
            self.quantity_change is not None or self.new_stock is not None
        ):
            raise ValueError("give quantity, or quantity_change / new_stock, not both")
        return self

    @property
    def slot_ref(self) -> str | int:
        return self.slot_number if self.slot_number is not None else str(self.slot_id)

    @property
    def delta(self) -> int | None:
        if self.quantity is not None and self.change_type is not ChangeType.AUDIT:
            return self.quantity
        return self.quantity_change

    @property
    def count(self) -> int | None:
        if self.quantity is not None and self.change_type is ChangeType.AUDIT:
            return self.quantity
        return self.new_stock


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


class SeedPaymentStatus(StrEnum):
    """The seed's words for a payment outcome (`POST /api/debug/update-payment/{id}`)."""

    SUCCESS = "SUCCESS"  # the seed's synonym for PAID
    PAID = PaymentStatus.PAID.value
    PENDING = PaymentStatus.PENDING.value
    FAILED = PaymentStatus.FAILED.value
    EXPIRED = PaymentStatus.EXPIRED.value
    CANCELLED = OrderStatus.CANCELLED.value


class PaymentUpdate(BaseModel):
    model_config = Strict
    status: SeedPaymentStatus = Field(strict=False)  # JSON strings, checked against the enum


class MachineCredentials(BaseModel):
    """A machine's MQTT login, shown once (username = machine id)."""

    username: str
    password: str


def _seed_presence(value: Any) -> Any:
    """The seed's admin words for a machine's state, any case, onto our presence states."""
    if isinstance(value, str):
        value = value.strip().upper()
        return {"ACTIVE": PresenceStatus.ONLINE, "INACTIVE": PresenceStatus.OFFLINE}.get(
            value, value
        )
    return value


class MachineStatusChange(BaseModel):
    model_config = Strict
    status: Annotated[PresenceStatus, BeforeValidator(_seed_presence)] = Field(strict=False)
    reason: str | None = Field(default=None, max_length=500)


class SlotAssign(BaseModel):
    model_config = Strict
    slot_number: int | None = Field(default=None, ge=1, le=1000)
    slot_id: SeedId | None = Field(default=None, min_length=1, max_length=40)
    product_id: SeedId = Field(min_length=1, max_length=40)
    capacity: int | None = Field(default=None, ge=0, le=1000)
    price_override: int | None = Field(default=None, ge=0, le=100_000_000)
    motor_duration_ms: int | None = Field(default=None, ge=100, le=60_000)
    is_active: bool | None = None

    @model_validator(mode="after")
    def _one_slot(self) -> SlotAssign:
        if (self.slot_number is None) == (self.slot_id is None):
            raise ValueError("give exactly one of slot_number or slot_id")
        return self

    @property
    def slot_ref(self) -> str | int:
        return self.slot_number if self.slot_number is not None else str(self.slot_id)


class PaymentMethodChange(BaseModel):
    model_config = Strict
    payment_method: PaymentMethod | None = None


class VerifyClaim(BaseModel):
    """The seed's verify body; whatever status it claims is read by no one."""

    model_config = ConfigDict(extra="ignore")
    status: str | None = Field(default=None, max_length=32)
