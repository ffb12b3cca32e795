"""Sandbox gateway: no money moves; its pay page sends a signed Midtrans-format notification."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from vendhub.adapters.payments import midtrans_notification
from vendhub.services.ports import (
    Notification,
    PaymentInstructions,
    PaymentRequest,
    RefundRequest,
    RefundResult,
)


class SandboxProvider:
    name = "sandbox"

    def __init__(self, server_key: str, base_url: str) -> None:
        self._server_key = server_key
        self._base_url = base_url.rstrip("/")

    async def create_payment(self, request: PaymentRequest) -> PaymentInstructions:
        pay_url = f"{self._base_url}/api/payments/sandbox/{request.order_id}"
        return PaymentInstructions(
            provider=self.name,
            token=secrets.token_urlsafe(16),
            redirect_url=pay_url,
            # Scanning it with any phone opens the pay page: the sandbox's stand-in for QRIS.
            qr_string=pay_url,
        )

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        return midtrans_notification.verify(body, self._server_key)

    def signed_notification(self, order_id: str, amount: int, status: str) -> bytes:
        body = midtrans_notification.build(
            order_id,
            amount,
            status,
            self._server_key,
            transaction_id=f"sandbox-{order_id}",
        )
        return json.dumps(body).encode()

    async def fetch_status(self, order_id: str) -> Notification | None:
        # Everything the sandbox knows arrived through its own pay page: nothing to catch up.
        return None

    async def cancel(self, order_id: str) -> None:
        return None

    async def expire(self, order_id: str) -> None:
        return None

    async def refund(self, request: RefundRequest) -> RefundResult:
        # No money moved, so the refund "succeeds" at once; the ledger still records it.
        return RefundResult(
            refund_key=request.refund_key,
            amount=request.amount,
            provider_ref=f"sandbox-{request.refund_key}",
        )
