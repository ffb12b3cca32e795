"""Who may create, read and cancel an order: anonymous clients, kiosks, token holders, operators."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from vendhub.entrypoints.api.deps import ContainerDep, OptionalUser
from vendhub.entrypoints.api.security import kiosk_machine, scope_client, sha256_hex
from vendhub.services import orders
from vendhub.services.errors import Forbidden, Unauthorized
from vendhub.services.orders import OrderOrigin

ORDER_TOKEN_HEADER = "X-Order-Token"
KIOSK_KEY_HEADER = "X-Kiosk-Key"


@dataclass(frozen=True, slots=True)
class Origin:
    """Who is placing an order, and the access token the response hands back."""

    order: OrderOrigin
    access_token: str


KioskKey = Annotated[
    str | None,
    Header(alias=KIOSK_KEY_HEADER, max_length=200, description="the machine's kiosk key"),
]
OrderToken = Annotated[
    str | None,
    Header(alias=ORDER_TOKEN_HEADER, max_length=200, description="token returned at creation"),
]
OrderTokenQuery = Annotated[
    str | None, Query(alias="token", max_length=200, description="or the token as ?token=")
]


async def order_origin(
    request: Request, container: ContainerDep, user: OptionalUser, kiosk_key: KioskKey = None
) -> Origin:
    token = secrets.token_urlsafe(24)
    token_hash = sha256_hex(token)
    if kiosk_key is not None:
        machine_id = await kiosk_machine(container.ctx, kiosk_key)
        if machine_id is None:
            raise Unauthorized("unknown kiosk key")
        origin = OrderOrigin(f"kiosk:{machine_id}", token_hash, kiosk_machine=machine_id)
    elif user is not None:
        origin = OrderOrigin(f"user:{user['sub']}", token_hash)
    else:
        client = scope_client(request.scope, container.settings.trusted_proxy_networks)
        origin = OrderOrigin(
            "ip:" + sha256_hex(client)[:40],
            token_hash,
            max_unpaid_units=container.settings.anon_max_unpaid_units,
        )
    return Origin(origin, token)


OriginDep = Annotated[Origin, Depends(order_origin)]


async def order_access(
    order_id: str,
    container: ContainerDep,
    user: OptionalUser,
    kiosk_key: KioskKey = None,
    header_token: OrderToken = None,
    query_token: OrderTokenQuery = None,
) -> bool:
    """True when the caller may see and change this order: an operator, the order's own
    kiosk, or the holder of its access token. Unknown orders are left to the handler (404)."""
    if user is not None:
        return True
    found = await orders.access_info(container.ctx, order_id)
    if found is None:
        return True  # nothing to protect; the handler answers 404
    machine_id, token_hash = found
    if kiosk_key is not None and await kiosk_machine(container.ctx, kiosk_key) == machine_id:
        return True
    given = header_token or query_token
    return bool(
        given
        and token_hash
        and hmac.compare_digest(sha256_hex(given).encode(), token_hash.encode())
    )


OrderAccess = Annotated[bool, Depends(order_access)]


async def require_order_access(
    allowed: OrderAccess,
    header_token: OrderToken = None,
    query_token: OrderTokenQuery = None,
) -> None:
    if allowed:
        return
    if header_token or query_token:
        raise Forbidden("this is not the order's access token")
    raise Unauthorized(f"this needs the order's access token ({ORDER_TOKEN_HEADER} or ?token=)")
