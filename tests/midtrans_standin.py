"""A local Midtrans over real HTTP for tests: Snap, QRIS charge, status, expire/cancel, refund.

Checks Basic auth (server key, empty password), replays an Idempotency-Key's first answer
without acting twice, queues signed notifications that a test delivers when and how it
likes (in order, reversed, twice, or never), and injects faults per endpoint:
"500", "timeout" (hang before acting), "timeout_after_effect" (act, then hang), "412".
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vendhub.adapters.payments import midtrans_notification
from vendhub.domain.payments import format_rupiah, midtrans_signature

WIB = timezone(timedelta(hours=7))
STATUS_CODES = {**midtrans_notification.STATUS_CODES, "expire": "407"}


@dataclass
class Txn:
    order_id: str
    gross_amount: int
    payment_type: str
    transaction_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "pending"
    opened: bool = True  # a Snap transaction exists at Midtrans only once the page is used
    refunds: list[dict[str, Any]] = field(default_factory=list)
    expiry_time: str | None = None  # as answered to the charge (Asia/Jakarta wall time)

    @property
    def refunded(self) -> int:
        return sum(int(r["amount"]) for r in self.refunds)


class MidtransStandIn:
    def __init__(self, server_key: str, hang_s: float = 1.5) -> None:
        self.server_key = server_key
        self.hang_s = hang_s
        self.url = ""
        self.webhook_url = ""
        self.txns: dict[str, Txn] = {}
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.refund_effects: list[tuple[str, str, int]] = []
        self.queued: list[dict[str, Any]] = []
        self.delivered: list[tuple[dict[str, Any], int]] = []
        self.app = Starlette(
            routes=[
                Route("/snap/v1/transactions", self._snap, methods=["POST"]),
                Route("/v2/charge", self._charge, methods=["POST"]),
                Route("/v2/{order_id}/status", self._status, methods=["GET"]),
                Route("/v2/{order_id}/{action:str}", self._action, methods=["POST"]),
            ]
        )

    # --- test controls ------------------------------------------------------------------

    def fail(self, endpoint: str, *kinds: str) -> None:
        """The next requests to `endpoint` (snap, charge, status, expire, cancel, refund)."""
        self.faults[endpoint].extend(kinds)

    def pay(self, order_id: str, *, notify: bool = True) -> None:
        """The customer pays: settlement at Midtrans, and (unless not) a queued notification."""
        txn = self.txns[order_id]
        txn.opened, txn.status = True, "settlement"
        if notify:
            self.queue(order_id)

    def notification(self, order_id: str, status: str | None = None) -> dict[str, Any]:
        txn = self.txns[order_id]
        status = status or txn.status
        body = midtrans_notification.build(
            order_id,
            txn.gross_amount,
            status,
            self.server_key,
            transaction_id=txn.transaction_id,
            payment_type=txn.payment_type,
            refunds=[_public_refund(r) for r in txn.refunds] if "refund" in status else None,
        )
        body["status_code"] = STATUS_CODES.get(status, "200")
        body["signature_key"] = midtrans_signature(
            order_id, body["status_code"], body["gross_amount"], self.server_key
        )
        return body

    def queue(self, order_id: str, status: str | None = None) -> None:
        self.queued.append(self.notification(order_id, status))

    async def deliver(self, *, reverse: bool = False, twice: bool = False) -> list[int]:
        """POST every queued notification to the webhook; returns the HTTP status codes."""
        batch, self.queued = self.queued, []
        if reverse:
            batch.reverse()
        codes = []
        async with httpx.AsyncClient(timeout=10) as client:
            for body in batch:
                for _ in range(2 if twice else 1):
                    response = await client.post(self.webhook_url, json=body)
                    self.delivered.append((body, response.status_code))
                    codes.append(response.status_code)
        return codes

    def drop_notifications(self) -> None:
        """The notifications that never come."""
        self.queued.clear()

    def posts_without_idempotency_key(self) -> list[str]:
        return [p for m, p, h, _ in self.requests if m == "POST" and "idempotency-key" not in h]

    # --- endpoints ----------------------------------------------------------------------

    async def _snap(self, request: Request) -> Response:
        async def act(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            problem = _check_order_body(body)
            expiry = body.get("expiry") or {}
            if expiry and (
                expiry.get("unit") != "minute" or not isinstance(expiry.get("duration"), int)
            ):
                problem = "expiry must be {unit: minute, duration: int}"
            if problem:
                return 400, {"error_messages": [problem]}
            order_id = body["transaction_details"]["order_id"]
            if order_id in self.txns:
                return 400, {"error_messages": ["transaction_details.order_id sudah digunakan"]}
            amount = body["transaction_details"]["gross_amount"]
            self.txns[order_id] = Txn(order_id, amount, "qris", opened=False)
            token = uuid.uuid4().hex
            return 201, {"token": token, "redirect_url": f"{self.url}/snap/v4/redirection/{token}"}

        return await self._handle(request, "snap", act)

    async def _charge(self, request: Request) -> Response:
        async def act(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            problem = _check_order_body(body) or (
                None if body.get("payment_type") == "qris" else "payment_type must be qris"
            )
            if problem:
                return 400, {"status_code": "400", "status_message": problem}
            details = body["transaction_details"]
            txn = Txn(details["order_id"], details["gross_amount"], "qris")
            self.txns[txn.order_id] = txn
            minutes = int((body.get("custom_expiry") or {}).get("expiry_duration") or 15)
            expiry = datetime.now(UTC).astimezone(WIB) + timedelta(minutes=minutes)
            txn.expiry_time = expiry.strftime("%Y-%m-%d %H:%M:%S")
            return 200, {
                **self._status_body(txn),
                "status_code": "201",
                "status_message": "QRIS transaction is created",
                "qr_string": f"00020101021226650013ID.CO.QRIS.WWW{txn.transaction_id}6304ABCD",
                "acquirer": "gopay",
                "expiry_time": txn.expiry_time,
                "actions": [
                    {
                        "name": "generate-qr-code",
                        "method": "GET",
                        "url": f"{self.url}/v2/qris/{txn.transaction_id}/qr-code",
                    }
                ],
            }

        return await self._handle(request, "charge", act)

    async def _status(self, request: Request) -> Response:
        async def act(_: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            txn = self.txns.get(request.path_params["order_id"])
            if txn is None or not txn.opened:
                return 404, {"status_code": "404", "status_message": "Transaction doesn't exist."}
            return 200, self._status_body(txn)

        return await self._handle(request, "status", act)

    async def _action(self, request: Request) -> Response:
        action = request.path_params["action"]
        handlers = {"expire": self._expire, "cancel": self._cancel, "refund": self._refund}
        if action not in handlers:
            return JSONResponse({"status_code": "404"}, status_code=404)
        txn = self.txns.get(request.path_params["order_id"])

        async def act(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            if txn is None or not txn.opened:
                return 404, {"status_code": "404", "status_message": "Transaction doesn't exist."}
            return handlers[action](txn, body)

        return await self._handle(request, action, act)

    def _expire(self, txn: Txn, _: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if txn.status != "pending":
            return 200, {
                "status_code": "412",
                "status_message": "Transaction status cannot be updated",
            }
        txn.status = "expire"
        self.queue(txn.order_id)
        return 200, {**self._status_body(txn), "status_code": "407"}

    def _cancel(self, txn: Txn, _: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if txn.status != "pending":
            return 200, {
                "status_code": "412",
                "status_message": "Transaction status cannot be updated",
            }
        txn.status = "cancel"
        self.queue(txn.order_id)
        return 200, {**self._status_body(txn), "status_code": "200"}

    def _refund(self, txn: Txn, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key, amount = body.get("refund_key"), body.get("amount")
        if txn.status not in ("settlement", "partial_refund"):
            return 200, {"status_code": "412", "status_message": "Transaction cannot be refunded"}
        if not isinstance(amount, int) or amount <= 0 or txn.refunded + amount > txn.gross_amount:
            return 200, {"status_code": "412", "status_message": "Refund amount exceeds the rest"}
        if any(r["refund_key"] == key for r in txn.refunds):
            return 200, {"status_code": "412", "status_message": "refund_key already used"}
        refund = {"refund_key": key, "amount": amount, "id": len(txn.refunds) + 1}
        txn.refunds.append(refund)
        self.refund_effects.append((txn.order_id, str(key), amount))
        txn.status = "refund" if txn.refunded == txn.gross_amount else "partial_refund"
        self.queue(txn.order_id)
        return 200, {
            **self._status_body(txn),
            "status_code": "200",
            "status_message": "Success, refund request is approved",
            "refund_chargeback_id": refund["id"],
            "refund_amount": format_rupiah(amount),
            "refund_key": key,
        }

    # --- plumbing -----------------------------------------------------------------------

    def _status_body(self, txn: Txn) -> dict[str, Any]:
        body = self.notification(txn.order_id)
        body["status_message"] = "Success, transaction is found"
        return body

    async def _handle(self, request: Request, endpoint: str, act: Any) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.method, request.url.path, headers, body))
        if not _authorised(headers.get("authorization", ""), self.server_key):
            return JSONResponse(
                {"status_code": "401", "status_message": "Access denied"}, status_code=401
            )
        fault = self.faults[endpoint].popleft() if self.faults[endpoint] else None
        if fault == "500":
            return JSONResponse({"status_code": "500"}, status_code=500)
        if fault == "412":
            return JSONResponse({"status_code": "412", "status_message": "refused (fault)"})
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
            return JSONResponse({"status_code": "504"}, status_code=504)
        key = headers.get("idempotency-key")
        slot = f"{request.url.path}|{key}" if key and request.method == "POST" else None
        if slot is not None and slot in self.idempotent:
            status, answer = self.idempotent[slot]  # replay: no second effect
        else:
            status, answer = await act(body)
            if slot is not None:
                self.idempotent[slot] = (status, answer)
        if fault == "timeout_after_effect":
            await asyncio.sleep(self.hang_s)
        return JSONResponse(answer, status_code=status)


def _authorised(header: str, server_key: str) -> bool:
    expected = base64.b64encode(f"{server_key}:".encode()).decode()
    return header == f"Basic {expected}"


def _check_order_body(body: dict[str, Any]) -> str | None:
    details = body.get("transaction_details") or {}
    amount = details.get("gross_amount")
    if not isinstance(details.get("order_id"), str) or not isinstance(amount, int):
        return "transaction_details needs order_id and an integer gross_amount"
    items = body.get("item_details")
    if items is not None:
        total = sum(i["price"] * i["quantity"] for i in items)
        if total != amount or any(len(i["name"]) > 50 for i in items):
            return "item_details must sum to gross_amount (names up to 50 characters)"
    return None


def _public_refund(refund: dict[str, Any]) -> dict[str, Any]:
    return {
        "refund_chargeback_id": refund["id"],
        "refund_amount": format_rupiah(refund["amount"]),
        "refund_key": refund["refund_key"],
        "reason": "",
    }


@asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1:port in this event loop; yields its base URL.

    Uvicorn's own serve loop polls every 0.1 s for start and for exit and then waits for
    clients: ~0.4 s per test with two servers (22 s over the gateway tests). Here the
    listener is started and closed directly; handlers still hanging on purpose are cancelled."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        pending = list(server.server_state.tasks)
        for handler in pending:
            handler.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for listener in server.servers:
            await listener.wait_closed()
