"""Server-Sent Events: one order's public progress (kiosk) and the fleet board (console)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette import EventSourceResponse

from vendhub.domain.model import FINAL_ORDER_STATUSES
from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.web.session import session_claims
from vendhub.services import auth, overview
from vendhub.services.errors import Unauthorized

router = APIRouter(tags=["live"])

# Server-Sent Events: each `data:` line is one JSON object (described on each endpoint).
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a stream of Server-Sent Events, one JSON object per event",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
_bearer = HTTPBearer(auto_error=False)

# Streams read the database (so every replica sees every change) this often; a kiosk
# sees a vend within half a second, and an idle stream costs one small query per tick.
ORDER_POLL_S = 0.5
FLEET_POLL_S = 1.0
# A stream ends after this; EventSource reconnects by itself, so nothing is lost.
STREAM_MAX_S = 15 * 60
FINAL = {s.value for s in FINAL_ORDER_STATUSES}


async def _changes(
    request: Request,
    read: Callable[[], Awaitable[Any]],
    event: str,
    every_s: float,
    done: Callable[[Any], bool] = lambda _: False,
) -> AsyncIterator[dict[str, str]]:
    last = None
    deadline = time.monotonic() + STREAM_MAX_S
    while time.monotonic() < deadline and not await request.is_disconnected():
        data = json.dumps(await read(), default=str, sort_keys=True)
        if data != last:
            last = data
            yield {"event": event, "data": data}
            if done(json.loads(data)):
                return
        await asyncio.sleep(every_s)


@router.get("/api/orders/{order_id}/events", response_class=EventSourceResponse, responses=STREAM)
async def order_events(order_id: str, request: Request, container: ContainerDep) -> Any:
    """Public: status, units dropped/failed of the total, refund amount; ends when final."""
    ctx = container.ctx
    await overview.public_order_status(ctx, order_id)  # 404 before the stream opens
    stream = _changes(
        request,
        lambda: overview.public_order_status(ctx, order_id),
        "order",
        ORDER_POLL_S,
        lambda s: s["status"] in FINAL,
    )
    return EventSourceResponse(stream, ping=15)


@router.get("/api/fleet/events", response_class=EventSourceResponse, responses=STREAM)
async def fleet_events(request: Request, container: ContainerDep) -> Any:
    """Operators (bearer token or console session): presence, reading, low stock, alerts."""
    secret = container.settings.jwt_secret
    creds: HTTPAuthorizationCredentials | None = await _bearer(request)
    if creds is not None:
        auth.read_token(creds.credentials, secret)
    elif session_claims(request, secret) is None:
        raise Unauthorized("sign in (bearer token or console session) to follow the fleet")
    stream = _changes(request, lambda: overview.fleet(container.ctx), "fleet", FLEET_POLL_S)
    return EventSourceResponse(stream, ping=15)
