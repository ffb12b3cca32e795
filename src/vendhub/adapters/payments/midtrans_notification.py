"""Midtrans HTTP notification format: parse and verify, or build one (for the sandbox)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vendhub.domain.payments import (
    format_rupiah,
    map_midtrans_status,
    midtrans_signature,
    parse_rupiah,
    signature_valid,
)
from vendhub.services.ports import InvalidNotification, Notification

REQUIRED = ("order_id", "status_code", "gross_amount", "signature_key", "transaction_status")


def verify(body: bytes, server_key: str) -> Notification:
    """Raise InvalidNotification unless the body is a Midtrans notification signed with our key."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidNotification("body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise InvalidNotification("body is not a JSON object")
    missing = [k for k in REQUIRED if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise InvalidNotification(f"missing or non-string field(s): {', '.join(missing)}")
    if not signature_valid(
        data["order_id"],
        data["status_code"],
        data["gross_amount"],
        server_key,
        data["signature_key"],
    ):
        raise InvalidNotification("signature_key does not match")
    return _normalise(data, body)


def _normalise(data: Mapping[str, Any], body: bytes) -> Notification:
    fraud = data.get("fraud_status")
    return Notification(
        order_id=data["order_id"],
        # Some notifications (e.g. expire of an unopened Snap) carry no transaction_id.
        transaction_id=str(data.get("transaction_id") or "-"),
        transaction_status=data["transaction_status"],
        status=map_midtrans_status(data["transaction_status"], fraud if fraud else None),
        gross_amount=data["gross_amount"],
        amount=parse_rupiah(data["gross_amount"]),
        status_code=data["status_code"],
        fraud_status=fraud if isinstance(fraud, str) else None,
        payment_type=data.get("payment_type")
        if isinstance(data.get("payment_type"), str)
        else None,
        raw=body.decode("utf-8"),
    )


STATUS_CODES = {
    "settlement": "200",
    "capture": "200",
    "pending": "201",
    "deny": "202",
    "cancel": "202",
    "expire": "407",
    "failure": "202",
}


def build(
    order_id: str,
    amount: int,
    transaction_status: str,
    server_key: str,
    *,
    transaction_id: str,
    payment_type: str = "qris",
    transaction_time: str = "",
) -> dict[str, Any]:
    """A notification as Midtrans would send it, correctly signed with `server_key`."""
    status_code = STATUS_CODES.get(transaction_status, "200")
    gross = format_rupiah(amount)
    return {
        "transaction_time": transaction_time,
        "transaction_status": transaction_status,
        "transaction_id": transaction_id,
        "status_message": f"midtrans payment notification ({transaction_status})",
        "status_code": status_code,
        "signature_key": midtrans_signature(order_id, status_code, gross, server_key),
        "payment_type": payment_type,
        "order_id": order_id,
        "merchant_id": "SANDBOX",
        "gross_amount": gross,
        "fraud_status": "accept",
        "currency": "IDR",
    }
