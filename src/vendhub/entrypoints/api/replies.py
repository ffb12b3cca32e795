"""Replies of the HTTP API: the list envelope and the small acknowledgements."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from vendhub.entrypoints.api.schemas import (
    DispensePublic,
    MachinePublic,
    OrderStatusPublic,
    ProductPublic,
    RefundPublic,
    SlotPublic,
)
from vendhub.services.views import Slice, TemperatureView


class StockUpdated(BaseModel):
    success: bool = True
    machine_id: str
    slot_number: int
    stock_before: int
    current_stock: int
    reserved: int
    available: int


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """Every list: the seed's envelope (success, data, count) and where the next page starts."""

    success: bool = True
    data: list[T]
    count: int
    limit: int
    offset: int
    next_offset: int | None = None

    @classmethod
    def of(cls, part: Slice[Any]) -> Page[T]:
        return cls(
            data=part.items,
            count=len(part.items),
            limit=part.window.limit,
            offset=part.window.offset,
            next_offset=part.next_offset,
        )


class ProductPage(Page[ProductPublic]):
    """The seed's older scripts read the list as `products`."""

    products: list[ProductPublic]

    @classmethod
    def of(cls, part: Slice[Any]) -> ProductPage:
        items = [ProductPublic.of(p) for p in part.items]
        return cls(
            data=items,
            products=items,
            count=len(items),
            limit=part.window.limit,
            offset=part.window.offset,
            next_offset=part.next_offset,
        )


class ConfigPushed(BaseModel):
    success: bool = True
    config: dict[str, Any]


class MachineStatusChanged(BaseModel):
    success: bool = True
    data: MachinePublic


class SlotAssigned(BaseModel):
    success: bool = True
    data: SlotPublic


class RefundResponse(BaseModel):
    success: bool
    order_id: str
    refund: RefundPublic


class PaymentOutcome(BaseModel):
    success: bool = True
    order_id: str | None = None
    outcome: str


class OrderCancelled(BaseModel):
    success: bool = True
    order_id: str
    status: str


class PaymentVerified(BaseModel):
    success: bool = True
    order_id: str
    status: str
    payment_status: str | None
    paid: bool
    # Whether the gateway was asked by this call (not for paid/closed orders, nor twice in 5 s).
    asked_gateway: bool
    order: OrderStatusPublic


class DispenseTriggered(BaseModel):
    success: bool = True
    order_id: str
    status: str


class DispenseStatus(BaseModel):
    order_id: str
    status: str
    dispenses: list[DispensePublic]


class TemperaturePage(Page[TemperatureView]):
    """The seed's temperature reply: the newest reading flat, the series in `data`."""

    machine_id: str
    temperature: float | None = None
    humidity: float | None = None
    recorded_at: datetime | None = None

    @classmethod
    def of_readings(cls, machine_id: str, part: Slice[TemperatureView]) -> TemperaturePage:
        newest = part.items[0] if part.items and part.window.offset == 0 else None
        return cls(
            machine_id=machine_id,
            temperature=newest.temperature if newest else None,
            humidity=newest.humidity if newest else None,
            recorded_at=newest.recorded_at if newest else None,
            data=part.items,
            count=len(part.items),
            limit=part.window.limit,
            offset=part.window.offset,
            next_offset=part.next_offset,
        )


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    database: bool
    mqtt: bool


class MqttStatus(BaseModel):
    success: bool = True
    mqtt: dict[str, Any]


class Published(BaseModel):
    success: bool = True
    topic: str
    payload: dict[str, Any]


class ProductSales(BaseModel):
    product_id: str
    product_name: str
    units_sold: int
    revenue: int


class FinanceSummary(BaseModel):
    """Payments received in [from, to); fields added later pass through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    machine_id: str | None
    start: datetime | None = Field(alias="from")
    end: datetime | None = Field(alias="to")
    orders_paid: int
    gross_paid: int
    refunded: int
    refund_pending: int
    net: int
    units_dropped: int
    units_failed: int
    failed_vend_rate: float
    products: list[ProductSales]
