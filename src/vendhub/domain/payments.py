"""Payment gateway notifications: signature rule and status mapping (Midtrans semantics)."""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal, InvalidOperation
from enum import StrEnum


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    REFUNDED = "REFUNDED"


# Midtrans transaction_status → our normalised status. capture depends on fraud_status.
_MIDTRANS_STATUS = {
    "settlement": PaymentStatus.PAID,
    "pending": PaymentStatus.PENDING,
    "authorize": PaymentStatus.PENDING,
    "deny": PaymentStatus.FAILED,
    "cancel": PaymentStatus.FAILED,
    "failure": PaymentStatus.FAILED,
    "expire": PaymentStatus.EXPIRED,
    "refund": PaymentStatus.REFUNDED,
    "partial_refund": PaymentStatus.REFUNDED,
}


def map_midtrans_status(transaction_status: str, fraud_status: str | None) -> PaymentStatus | None:
    """None for a status we do not know (recorded, never applied)."""
    if transaction_status == "capture":
        # Card captures flagged "challenge" wait for a human decision at Midtrans.
        if fraud_status in (None, "", "accept"):
            return PaymentStatus.PAID
        if fraud_status == "deny":
            return PaymentStatus.FAILED
        return PaymentStatus.PENDING
    return _MIDTRANS_STATUS.get(transaction_status)


def midtrans_signature(order_id: str, status_code: str, gross_amount: str, server_key: str) -> str:
    """sha512 over the raw strings exactly as sent (gross_amount keeps its ".00")."""
    raw = f"{order_id}{status_code}{gross_amount}{server_key}".encode()
    return hashlib.sha512(raw).hexdigest()


def signature_valid(
    order_id: str, status_code: str, gross_amount: str, server_key: str, signature: str
) -> bool:
    expected = midtrans_signature(order_id, status_code, gross_amount, server_key)
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


def parse_rupiah(amount: str | int) -> int | None:
    """A gateway amount string ("15000.00") as whole rupiah, or None if not a whole number."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return None
    if not value.is_finite() or value != value.to_integral_value() or value < 0:
        return None
    return int(value)


def format_rupiah(amount: int) -> str:
    """How Midtrans writes gross_amount in notifications."""
    return f"{amount}.00"
