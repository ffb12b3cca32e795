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
    data = _json_object(body)
    missing = [k for k in REQUIRED if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise InvalidNotification(f"missing or non-string field(s): {', '.join(missing)}")
    _check_signature(data, server_key)
    return _normalise(data, body)


def from_status(body: bytes, server_key: str) -> Notification:
    """A GET /v2/{order_id}/status answer as a Notification.

    It came from the API over TLS with our key, so it needs no signature; a signature_key it
    does carry must still match (a mismatch means something is wrong in between).
    """
    data = _json_object(body)
    missing = [k for k in REQUIRED if k != "signature_key" and not isinstance(data.get(k), str)]
    if missing:
        raise InvalidNotification(f"status answer lacks field(s): {', '.join(missing)}")
    if isinstance(data.get("signature_key"), str) and data["signature_key"]:
        _check_signature(data, server_key)
    return _normalise(data, body, source="status")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        # Not UTF-8, not JSON, an integer too long to convert, or nested too deep.
        raise InvalidNotification("body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise InvalidNotification("body is not a JSON object")
    return data


def _check_signature(data: Mapping[str, Any], server_key: str) -> None:
    if not signature_valid(
        data["order_id"],
        data["status_code"],
        data["gross_amount"],
        server_key,
        data["signature_key"],
    ):
        raise InvalidNotification("signature_key does not match")


RefundItem = tuple[str | None, str | None, int]


def _refund_fields(
    data: Mapping[str, Any],
) -> tuple[int | None, tuple[str, ...], tuple[RefundItem, ...]]:
    """Cumulative refunded amount, the refund_keys and every listed refund (key, gateway id,
    amount) of a refund/partial_refund notification."""
    if data.get("transaction_status") not in ("refund", "partial_refund"):
        return None, (), ()
    listed = data.get("refunds")
    items: list[RefundItem] = []
    for r in listed if isinstance(listed, list) else []:
        if not isinstance(r, dict):
            continue
        each = parse_rupiah(str(r.get("refund_amount") or "0")) or 0
        key = str(r["refund_key"])[:60] if r.get("refund_key") else None
        ref = r.get("refund_chargeback_id")
        items.append((key, str(ref)[:40] if ref is not None else None, each))
    keys = tuple(k for k, _, _ in items if k)
    total = parse_rupiah(str(data.get("refund_amount") or "0"))
    return (total if total is not None else 0), keys, tuple(items)


# The columns these fields are stored in; anything longer (or holding NUL) is refused.
FIELD_LIMITS = {
    "order_id": 40,
    "transaction_id": 64,
    "transaction_status": 32,
    "fraud_status": 32,
    "status_code": 8,
    "gross_amount": 32,
    "payment_type": 32,
}


def _check_fields(data: Mapping[str, Any]) -> None:
    for key, limit in FIELD_LIMITS.items():
        value = data.get(key)
        if isinstance(value, str) and (len(value) > limit or "\x00" in value):
            raise InvalidNotification(f"{key} is longer than {limit} characters or holds NUL")


def _normalise(data: Mapping[str, Any], body: bytes, source: str = "webhook") -> Notification:
    _check_fields(data)
    fraud = data.get("fraud_status")
    refund_amount, refund_keys, refund_items = _refund_fields(data)
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
        refund_amount=refund_amount,
        refund_keys=refund_keys,
        refund_items=refund_items,
        source=source,
    )


STATUS_CODES = {
    "settlement": "200",
    "capture": "200",
    "pending": "201",
    "deny": "202",
    "cancel": "202",
    "expire": "407",
    "failure": "202",
    "refund": "200",
    "partial_refund": "200",
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
    refunds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A notification as Midtrans would send it, correctly signed with `server_key`."""
    status_code = STATUS_CODES.get(transaction_status, "200")
    gross = format_rupiah(amount)
    body: dict[str, Any] = {
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
    if refunds is not None:
        # Midtrans lists every refund so far and their total in refund_amount.
        body["refunds"] = refunds
        body["refund_amount"] = format_rupiah(
            sum(parse_rupiah(r["refund_amount"]) or 0 for r in refunds)
        )
    return body
