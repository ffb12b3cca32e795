"""Interfaces the use cases need from the outside world (implemented in adapters/)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vendhub.domain.payments import PaymentStatus


class InvalidNotification(ValueError):
    """A gateway notification that is malformed or not signed by the gateway."""


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified notification, normalised; `raw` is the body exactly as received."""

    order_id: str
    transaction_id: str
    transaction_status: str
    status: PaymentStatus | None
    gross_amount: str
    amount: int | None
    status_code: str
    fraud_status: str | None = None
    payment_type: str | None = None
    raw: str = ""


@dataclass(frozen=True, slots=True)
class PaymentLine:
    id: str
    name: str
    price: int
    quantity: int


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    order_id: str
    amount: int
    lines: list[PaymentLine]
    expiry_minutes: int
    payment_method: str | None = None
    customer_phone: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentInstructions:
    provider: str
    token: str | None = None
    redirect_url: str | None = None
    qr_string: str | None = None
    transaction_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


class PaymentProvider(Protocol):
    name: str

    async def create_payment(self, request: PaymentRequest) -> PaymentInstructions: ...

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification: ...

    async def cancel(self, order_id: str) -> None: ...
