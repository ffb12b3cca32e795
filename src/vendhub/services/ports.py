"""Interfaces the use cases need from the outside world (implemented in adapters/)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from vendhub.domain.payments import PaymentStatus


class InvalidNotification(ValueError):
    """A gateway notification that is malformed or not signed by the gateway."""


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached; `retryable` says whether to try again."""

    def __init__(
        self, message: str, *, retryable: bool = True, status_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code  # the gateway's own code ("412", "404"), when it gave one


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
    # Refund notifications: the cumulative amount refunded and the refund_keys they confirm.
    refund_amount: int | None = None
    refund_keys: tuple[str, ...] = ()
    # Every refund listed so far: (refund_key or None, the gateway's id or None, amount).
    refund_items: tuple[tuple[str | None, str | None, int], ...] = ()
    source: str = "webhook"  # or "status" (reconciliation asked the gateway)

    @property
    def dedup_id(self) -> str:
        """What makes this notification distinct beyond (order, transaction, status).

        Each partial refund is a new event with the same transaction and status, told apart
        only by the cumulative refunded amount.
        """
        if self.refund_amount is not None:
            return _fit(f"{self.transaction_id}#refund-{self.refund_amount}")
        if self.transaction_status == "capture" and self.fraud_status:
            # A challenged capture and its later approval are two events of one transaction.
            return _fit(f"{self.transaction_id}#fraud-{self.fraud_status}")
        return self.transaction_id


def _fit(dedup_id: str) -> str:
    """The dedup column holds 64 characters; a longer id is replaced by its digest."""
    if len(dedup_id) <= 64:
        return dedup_id
    return "sha256:" + hashlib.sha256(dedup_id.encode()).hexdigest()[:57]


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
    qr_url: str | None = None
    expires_at: datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundRequest:
    order_id: str
    refund_key: str  # deterministic per owed refund: the gateway refunds a key at most once
    amount: int
    reason: str
    # Set when the money to give back came with another transaction than the order's first
    # (a second payment for one order): the gateway refunds that transaction.
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_key: str
    amount: int
    provider_ref: str | None = None


class PaymentProvider(Protocol):
    name: str

    async def create_payment(self, request: PaymentRequest) -> PaymentInstructions: ...

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification: ...

    async def fetch_status(self, order_id: str) -> Notification | None:
        """The gateway's current view; None when it knows no transaction for the order yet."""
        ...

    async def cancel(self, order_id: str) -> None:
        """Close an unpaid transaction the customer abandoned (GatewayError on refusal)."""
        ...

    async def expire(self, order_id: str) -> None:
        """Close an unpaid transaction whose time ran out (GatewayError on refusal)."""
        ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...
