"""One MQTT connection with a reconnect loop, declared subscriptions and acknowledged publishes."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt

log = logging.getLogger(__name__)

# Backoff between reconnect attempts: fast first retry (broker restarts are quick),
# capped so a long outage does not hammer the broker or the log.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
PENDING_CALLS_WARN = 2000


class MqttNotConnected(RuntimeError):
    """Publishing was attempted while no broker connection is up."""


class MqttPublishError(RuntimeError):
    """The broker did not acknowledge a publish in time, or the connection broke meanwhile."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    client_id: str = "vendhub-backend"
    keepalive: int = 30
    publish_timeout_s: float = 10.0
    clean_session: bool = False

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> MqttConfig:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "tls"):
            raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r}")
        tls = parts.scheme in ("mqtts", "ssl", "tls")
        base: dict[str, object] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or (8883 if tls else 1883),
            "tls": tls,
        }
        if parts.username:
            base["username"] = unquote(parts.username)
        if parts.password:
            base["password"] = unquote(parts.password)
        base.update({k: v for k, v in kwargs.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    retain: bool


class Companion(Protocol):
    """Another connection the backend needs up before it counts as connected."""

    async def wait_connected(self, within_s: float | None = None) -> bool: ...


MessageHandler = Callable[[InboundMessage], Awaitable[None]]
ConnectHandler = Callable[[], Coroutine[object, object, None]]


@dataclass
class MqttClient:
    config: MqttConfig
    subscriptions: list[str]
    on_message: MessageHandler
    on_connect: ConnectHandler | None = None
    # wait_connected waits for these too (the telemetry stream's own connection).
    companions: list[Companion] = field(default_factory=list)
    connected: bool = False
    connects: int = 0
    _client: aiomqtt.Client | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _up: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _hook: asyncio.Task[None] | None = field(default=None, repr=False)

    async def run(self) -> None:
        """Connect, subscribe, deliver messages; on any broker error, back off and reconnect."""
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            try:
                async with self._new_client() as client:
                    await self._on_up(client)
                    delay = RECONNECT_MIN_S
                    async for message in client.messages:
                        await self.on_message(
                            InboundMessage(
                                str(message.topic), _as_bytes(message.payload), message.retain
                            )
                        )
            except aiomqtt.MqttError as exc:
                if self._stopping.is_set():
                    break
                log.warning(
                    "MQTT connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    self.config.host,
                    self.config.port,
                    exc,
                    delay,
                )
            finally:
                self._set_down()
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _new_client(self) -> aiomqtt.Client:
        cfg = self.config
        tls_context = ssl.create_default_context() if cfg.tls else None
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password,
            identifier=cfg.client_id,
            clean_session=cfg.clean_session,
            keepalive=cfg.keepalive,
            tls_context=tls_context,
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=cfg.publish_timeout_s,
        )
        # The outbox publishes whole batches concurrently; that many in flight is by design.
        client.pending_calls_threshold = PENDING_CALLS_WARN
        return client

    async def _on_up(self, client: aiomqtt.Client) -> None:
        for topic_filter in self.subscriptions:
            await client.subscribe(topic_filter, qos=1)
        self._client = client
        self.connected = True
        self.connects += 1
        self._up.set()
        log.info(
            "MQTT connected to %s:%d as %s; subscribed to %s",
            self.config.host,
            self.config.port,
            self.config.client_id,
            ", ".join(self.subscriptions),
        )
        if self.on_connect is not None:
            # Not awaited here: the message loop must start while the hook publishes.
            self._hook = asyncio.create_task(self.on_connect(), name="mqtt-on-connect")

    def _set_down(self) -> None:
        self._client = None
        self.connected = False
        self._up.clear()

    async def wait_connected(self, within_s: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if within_s is None else loop.time() + within_s
        try:
            # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that comes with
            # the connection (CPython gh-86296); the outbox publisher waits here.
            async with asyncio.timeout(within_s):
                await self._up.wait()
        except TimeoutError:
            return False
        for other in self.companions:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not await other.wait_connected(left):
                return False
        return True

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Returns once the broker acknowledged (QoS 1) or raises; never silently drops."""
        client = self._client
        if client is None or not self.connected:
            raise MqttNotConnected("not connected to the MQTT broker")
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, timeout=self.config.publish_timeout_s
            )
        except aiomqtt.MqttError as exc:
            raise MqttPublishError(f"publish to {topic} failed: {exc}") from exc

    async def stop(self) -> None:
        self._stopping.set()


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return str(payload).encode() if payload is not None else b""
