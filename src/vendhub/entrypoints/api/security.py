"""HTTP edge guards: client address, rate limits, body and JSON limits, security headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import sqlalchemy as sa
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from vendhub.adapters.db.tables import machines
from vendhub.config import Settings
from vendhub.entrypoints.api import errors
from vendhub.services.context import ServiceContext

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Network = IPv4Network | IPv6Network

KIOSK_HEADER = "x-kiosk-key"

# Same-origin assets only; no framing; JSON and server-rendered pages alike.
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# /docs and /redoc (assets served locally by fastapi-offline) start with an inline bootstrap
# script; ReDoc runs a worker from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
DOCS_PATHS = ("/docs", "/redoc")

# Per-route buckets on top of the default one: (method, path pattern, setting name).
BUCKETS = [
    ("POST", re.compile(r"^/api/orders(/multi)?/?$"), "rate_limit_orders"),
    ("POST", re.compile(r"^/api/payments/cancel/[^/]+/?$"), "rate_limit_orders"),
    ("POST", re.compile(r"^/api/payments/webhook/?$"), "rate_limit_webhook"),
]
UNLIMITED_PATHS = ("/health", "/ready", "/metrics")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The peer, or, when the peer is a trusted proxy, the nearest untrusted X-Forwarded-For hop."""
    address = peer or "unknown"
    if not trusted or not forwarded_for or not _is_trusted(address, trusted):
        return address
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if _parse(hop) is None:
            return address  # a garbled chain: believe only what we saw ourselves
        if not _is_trusted(hop, trusted):
            return hop
        address = hop
    return address


def _parse(value: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(value)
    except ValueError:
        return None


def _is_trusted(value: str, trusted: list[Network]) -> bool:
    parsed = _parse(value)
    return parsed is not None and any(parsed in net for net in trusted)


def scope_client(scope: Scope, trusted: list[Network]) -> str:
    peer = scope.get("client")
    forwarded = None
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
    return client_address(peer[0] if peer else None, forwarded, trusted)


class MemoryWindows:
    """Moving windows in this process: per key, the times of the events still inside the
    window. `limits`' own memory storage walks every key with a thread hop per key after each
    hit (~4 % of the process under webhook load); this prunes only the key it touches, and
    forgets idle keys once a minute."""

    SWEEP_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.events: dict[str, tuple[float, deque[float]]] = {}
        self.swept = clock()

    def _window(self, item: RateLimitItem, key: tuple[str, ...]) -> deque[float]:
        now = self.clock()
        if now - self.swept > self.SWEEP_S:
            self.swept = now
            for name, (expiry, times) in list(self.events.items()):
                if not times or times[-1] < now - expiry:
                    del self.events[name]
        name = item.key_for(*key)
        expiry = float(item.get_expiry())
        entry = self.events.get(name)
        if entry is None:
            entry = self.events[name] = (expiry, deque())
        times = entry[1]
        while times and times[0] < now - expiry:
            times.popleft()
        return times

    def hit(self, item: RateLimitItem, *key: str) -> bool:
        times = self._window(item, key)
        if len(times) >= item.amount:
            return False
        times.append(self.clock())
        return True

    def test(self, item: RateLimitItem, *key: str) -> bool:
        return len(self._window(item, key)) < item.amount

    def retry_after(self, item: RateLimitItem, *key: str) -> float:
        """Seconds until the oldest event in the window leaves it."""
        times = self._window(item, key)
        if not times:
            return 0.0
        return times[0] + item.get_expiry() - self.clock()

    def clear(self, item: RateLimitItem, *key: str) -> None:
        self.events.pop(item.key_for(*key), None)


class RateLimits:
    """Moving-window limits: in this process (`MemoryWindows`), or shared in Redis with
    `limits` when REDIS_URL is set."""

    def __init__(self, settings: Settings) -> None:
        self.shared = settings.redis_url is not None
        self.memory: MemoryWindows | None = None
        self.limiter: MovingWindowRateLimiter | None = None
        if settings.redis_url is None:
            self.memory = MemoryWindows()
            return
        storage = storage_from_string(f"async+{settings.redis_url}")
        assert isinstance(storage, Storage)
        self.limiter = MovingWindowRateLimiter(storage)

    async def hit(self, rate: str, *key: str) -> float | None:
        """Count one event; None if allowed, else the seconds until it would be."""
        item = parse(rate)
        if self.memory is not None:
            if self.memory.hit(item, *key):
                return None
            return max(1.0, self.memory.retry_after(item, *key))
        assert self.limiter is not None
        try:
            if await self.limiter.hit(item, *key):
                return None
            return await self._retry_after(item, *key)
        except Exception as exc:
            # A Redis outage must not take the API down with it: let the request through.
            log.warning("rate limit storage unavailable (%s): request allowed", exc)
            return None

    async def blocked(self, rate: str, *key: str) -> float | None:
        """Without counting: None if one more event is allowed, else the seconds to wait."""
        item = parse(rate)
        if self.memory is not None:
            if self.memory.test(item, *key):
                return None
            return max(1.0, self.memory.retry_after(item, *key))
        assert self.limiter is not None
        try:
            if await self.limiter.test(item, *key):
                return None
            return await self._retry_after(item, *key)
        except Exception as exc:
            log.warning("rate limit storage unavailable (%s): request allowed", exc)
            return None

    async def _retry_after(self, item: RateLimitItem, *key: str) -> float:
        assert self.limiter is not None
        stats = await self.limiter.get_window_stats(item, *key)
        return max(1.0, stats.reset_time - time.time())

    async def clear(self, rate: str, *key: str) -> None:
        if self.memory is not None:
            self.memory.clear(parse(rate), *key)
        elif self.limiter is not None:
            await self.limiter.clear(parse(rate), *key)


def too_many(retry_after: float, message: str) -> Any:
    response = errors.error_response(429, "rate_limited", message)
    response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


async def kiosk_machine(ctx: ServiceContext, key: str | None) -> str | None:
    """The machine whose kiosk key this is, or None."""
    if not key or len(key) > 200:
        return None
    async with ctx.engine.connect() as conn:
        machine_id = await conn.scalar(
            sa.select(machines.c.id).where(machines.c.kiosk_key_hash == sha256_hex(key))
        )
    return str(machine_id) if machine_id is not None else None


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if brackets nest deeper than `limit` (outside strings); cheap for shallow bodies."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


_NUL_ESCAPE = re.compile(rb"\\u0000", re.IGNORECASE)


class EdgeGuard:
    """Pure ASGI middleware in front of every route (streamed bodies included)."""

    def __init__(self, app: ASGIApp, settings: Settings, limits: RateLimits, ctx: Any) -> None:
        self.app = app
        self.settings = settings
        self.limits = limits
        self.ctx = ctx  # the container's ServiceContext (kiosk keys are looked up in it)
        self.trusted = settings.trusted_proxy_networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        send = self._with_headers(send, path)
        rejection = await self._reject(scope, path)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        body, rejection = await self._read_body(scope, receive)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _with_headers(self, send: Send, path: str) -> Send:
        csp = DOCS_CSP if path in DOCS_PATHS else CSP

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in [*HEADERS, (b"content-security-policy", csp.encode())]:
                    if name not in present:
                        headers.append((name, value))
                message["headers"] = headers
            await send(message)

        return sending

    async def _reject(self, scope: Scope, path: str) -> Any:
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in query or b"\x00" in query:
            # PostgreSQL text cannot hold NUL: refuse it at the door, for every route.
            return errors.error_response(422, "validation_error", "NUL bytes are not accepted")
        if path == "/metrics" and self.settings.metrics_token:
            given = _header(scope, b"authorization") or ""
            expected = f"Bearer {self.settings.metrics_token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return errors.error_response(401, "unauthorized", "metrics need the metrics token")
        if path in UNLIMITED_PATHS:
            return None
        if await self._is_kiosk(scope):
            return None  # a machine's own kiosk: one open order at a time, no per-client caps
        client = scope_client(scope, self.trusted)
        method = scope.get("method", "GET")
        rates = [("default", self.settings.rate_limit_default)]
        rates += [
            (name, getattr(self.settings, name))
            for verb, pattern, name in BUCKETS
            if verb == method and pattern.match(path)
        ]
        for name, rate in rates:
            retry = await self.limits.hit(rate, name, client)
            if retry is not None:
                return too_many(retry, f"too many requests; retry in {math.ceil(retry)} s")
        return None

    async def _is_kiosk(self, scope: Scope) -> bool:
        key = _header(scope, KIOSK_HEADER.encode())
        if key is None:
            return False
        try:
            return await kiosk_machine(self.ctx, key) is not None
        except Exception:
            log.exception("kiosk key lookup failed")
            return False

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[list[Message], Any]:
        """Reads at most MAX_BODY_BYTES whatever the headers say; the messages to replay."""
        limit = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        too_large = errors.error_response(
            413, "payload_too_large", f"request body larger than {limit} bytes"
        )
        if length is not None and (not length.isdigit() or int(length) > limit):
            return [], too_large
        messages: list[Message] = []
        size = 0
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return [], too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _NUL_ESCAPE.search(body) or b"\x00" in body:
            return [], errors.error_response(
                422, "validation_error", "NUL characters are not accepted"
            )
        if json_depth_exceeds(body, self.settings.max_json_depth):
            return [], errors.error_response(
                422,
                "validation_error",
                f"JSON nested deeper than {self.settings.max_json_depth} levels",
            )
        return messages, None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
