"""Midtrans over httpx: Snap and QRIS charges, status, expire/cancel and refunds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx

from vendhub.adapters.payments import midtrans_notification
from vendhub.services.ports import (
    GatewayError,
    Notification,
    PaymentInstructions,
    PaymentRequest,
    RefundRequest,
    RefundResult,
)

log = logging.getLogger(__name__)

SANDBOX_API = "https://api.sandbox.midtrans.com"
SANDBOX_SNAP = "https://app.sandbox.midtrans.com/snap"
PRODUCTION_API = "https://api.midtrans.com"
PRODUCTION_SNAP = "https://app.midtrans.com/snap"
# Midtrans writes times as Jakarta wall-clock time without an offset; WIB has no DST.
WIB = timezone(timedelta(hours=7))
# Midtrans refuses item names longer than 50 characters.
ITEM_NAME_MAX = 50
# Direct charges that are not QRIS go through Snap with only that channel enabled.
SNAP_CHANNELS = {
    "gopay": ["gopay"],
    "shopeepay": ["shopeepay"],
    # The seed's "va": the bank virtual accounts Snap offers.
    "va": ["bca_va", "bni_va", "bri_va", "permata_va", "echannel", "other_va"],
}


@dataclass(frozen=True, slots=True)
class MidtransConfig:
    server_key: str
    api_base_url: str = SANDBOX_API
    snap_base_url: str = SANDBOX_SNAP
    # A payment call that hangs holds a customer at the kiosk: fail fast, retry later.
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0

    @classmethod
    def for_environment(
        cls,
        server_key: str,
        *,
        production: bool,
        api_base_url: str | None = None,
        snap_base_url: str | None = None,
        read_timeout_s: float = 15.0,
    ) -> MidtransConfig:
        return cls(
            server_key=server_key,
            api_base_url=(api_base_url or (PRODUCTION_API if production else SANDBOX_API)),
            snap_base_url=(snap_base_url or (PRODUCTION_SNAP if production else SANDBOX_SNAP)),
            read_timeout_s=read_timeout_s,
        )


class MidtransProvider:
    name = "midtrans"

    def __init__(
        self, config: MidtransConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        self._api = config.api_base_url.rstrip("/")
        self._snap = config.snap_base_url.rstrip("/")
        # Building the client does no I/O; connections open on the first request.
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(config.server_key, ""),
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- creating payments --------------------------------------------------------------

    async def create_payment(self, request: PaymentRequest) -> PaymentInstructions:
        if request.payment_method == "qris":
            data = await self._post(
                f"{self._api}/v2/charge", qris_charge_body(request), f"charge-{request.order_id}"
            )
            return parse_qris_charge(data, self.name)
        data = await self._post(
            f"{self._snap}/v1/transactions", snap_body(request), f"snap-{request.order_id}"
        )
        if not isinstance(data.get("token"), str):
            raise GatewayError("Snap answered without a token", retryable=True)
        return PaymentInstructions(
            provider=self.name, token=data["token"], redirect_url=data.get("redirect_url")
        )

    # --- notifications and status -------------------------------------------------------

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        return midtrans_notification.verify(body, self._config.server_key)

    async def fetch_status(self, order_id: str) -> Notification | None:
        try:
            response = await self._client.get(f"{self._api}/v2/{_path(order_id)}/status")
        except httpx.HTTPError as exc:
            raise GatewayError(f"status {order_id}: {type(exc).__name__}") from exc
        try:
            data = check_response(response)
        except GatewayError as exc:
            if exc.status_code == "404":  # no transaction yet: a Snap page never opened
                return None
            raise
        log.debug("status order=%s transaction_status=%s", order_id, data.get("transaction_status"))
        return midtrans_notification.from_status(response.content, self._config.server_key)

    # --- closing and refunding ----------------------------------------------------------

    async def cancel(self, order_id: str) -> None:
        await self._close(order_id, "cancel")

    async def expire(self, order_id: str) -> None:
        await self._close(order_id, "expire")

    async def _close(self, order_id: str, action: str) -> None:
        try:
            await self._post(
                f"{self._api}/v2/{_path(order_id)}/{action}", {}, f"{action}-{order_id}"
            )
        except GatewayError as exc:
            # 404: Midtrans never saw a transaction (Snap page unopened): nothing to close.
            if exc.status_code != "404":
                raise
            log.info("%s order=%s: no transaction at Midtrans", action, order_id)

    async def refund(self, request: RefundRequest) -> RefundResult:
        body = {
            "refund_key": request.refund_key,
            "amount": request.amount,
            "reason": request.reason,
        }
        data = await self._post(
            f"{self._api}/v2/{_path(request.transaction_id or request.order_id)}/refund",
            body,
            request.refund_key,
        )
        ref = data.get("refund_chargeback_id") or data.get("transaction_id")
        return RefundResult(
            refund_key=request.refund_key,
            amount=request.amount,
            provider_ref=str(ref) if ref is not None else None,
        )

    async def _post(self, url: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        # The same Idempotency-Key makes Midtrans answer a retry with the first answer
        # instead of acting twice (a refund that timed out on our side may have happened).
        try:
            response = await self._client.post(
                url, json=body, headers={"Idempotency-Key": idempotency_key}
            )
        except httpx.HTTPError as exc:
            raise GatewayError(f"POST {url}: {type(exc).__name__} {exc}".strip()) from exc
        return check_response(response)


def _path(order_id: str) -> str:
    return quote(order_id, safe="")


# Midtrans answers some refusals with HTTP 200 and the real code in the body; expire succeeds
# with "407" (the transaction is now expired).
SUCCESS_CODES = frozenset({"200", "201", "407"})
RETRYABLE_CODES = frozenset({"408", "429"})


def check_response(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful answer, else GatewayError saying whether to retry."""
    if response.status_code >= 500:
        raise GatewayError(
            f"Midtrans HTTP {response.status_code}", status_code=str(response.status_code)
        )
    try:
        data = response.json()
    except ValueError:
        raise GatewayError(f"Midtrans HTTP {response.status_code}: body is not JSON") from None
    if not isinstance(data, dict):
        raise GatewayError(f"Midtrans HTTP {response.status_code}: body is not an object")
    code = str(data.get("status_code") or response.status_code)
    if code in SUCCESS_CODES and response.is_success:
        return data
    message = data.get("status_message") or "; ".join(map(str, data.get("error_messages") or []))
    retryable = code.startswith("5") or code in RETRYABLE_CODES
    raise GatewayError(f"Midtrans {code}: {message}", retryable=retryable, status_code=code)


def _items(request: PaymentRequest) -> list[dict[str, Any]]:
    # Midtrans rejects a charge whose item_details do not sum to gross_amount.
    return [
        {
            "id": line.id,
            "price": line.price,
            "quantity": line.quantity,
            "name": line.name[:ITEM_NAME_MAX],
        }
        for line in request.lines
    ]


def _base(request: PaymentRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_details": {"order_id": request.order_id, "gross_amount": request.amount},
        "item_details": _items(request),
    }
    if request.customer_phone:
        body["customer_details"] = {"phone": request.customer_phone}
    return body


def snap_body(request: PaymentRequest) -> dict[str, Any]:
    body = _base(request)
    body["expiry"] = {"unit": "minute", "duration": request.expiry_minutes}
    channels = SNAP_CHANNELS.get(request.payment_method or "")
    if channels:
        body["enabled_payments"] = channels
    return body


def qris_charge_body(request: PaymentRequest) -> dict[str, Any]:
    body = _base(request)
    body["payment_type"] = "qris"
    body["custom_expiry"] = {"expiry_duration": request.expiry_minutes, "unit": "minute"}
    return body


def parse_qris_charge(data: Mapping[str, Any], provider: str) -> PaymentInstructions:
    qr_string = data.get("qr_string")
    if not isinstance(qr_string, str) or not qr_string:
        raise GatewayError("QRIS charge answered without qr_string", retryable=False)
    listed = data.get("actions")
    actions: list[Any] = listed if isinstance(listed, list) else []
    qr_url = next(
        (
            a.get("url")
            for a in actions
            if isinstance(a, dict) and a.get("name") == "generate-qr-code"
        ),
        None,
    )
    # Midtrans spells it both ways across products and versions.
    expiry = data.get("expiry_time") or data.get("expire_time")
    return PaymentInstructions(
        provider=provider,
        qr_string=qr_string,
        qr_url=qr_url if isinstance(qr_url, str) else None,
        redirect_url=qr_url if isinstance(qr_url, str) else None,
        transaction_id=str(data["transaction_id"]) if data.get("transaction_id") else None,
        expires_at=parse_midtrans_time(expiry) if isinstance(expiry, str) else None,
    )


def parse_midtrans_time(value: str) -> datetime | None:
    """'2026-11-27 15:15:00' (Jakarta time) or ISO 8601 with an offset, as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=WIB)
    return parsed.astimezone(UTC)
