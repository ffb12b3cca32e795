"""The backend's side of one device conversation: a broker connection that logs what it hears."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from vendhub.protocol.topics import TopicKind, topic


class UsageError(ValueError):
    """Bad arguments or an unreachable broker: exit code 2, not a device failure."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: bool
    prefix: str
    machine_id: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        machine_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> Target:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise UsageError(f"broker URL {url!r} is not mqtt://host[:port] or mqtts://host[:port]")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UsageError(f"broker URL {url!r} has an invalid port") from None
        try:
            topic(prefix, machine_id, TopicKind.STATUS)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not prefix or "+" in prefix or "#" in prefix:
            raise UsageError(f"invalid topic prefix {prefix!r}")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            prefix=prefix,
            machine_id=machine_id,
            username=username or (unquote(parts.username) if parts.username else None),
            password=password or (unquote(parts.password) if parts.password else None),
        )

    def topic(self, kind: TopicKind) -> str:
        return topic(self.prefix, self.machine_id, kind)

    def client(self, role: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"devicecheck-{role}-{uuid.uuid4().hex[:10]}",
            clean_session=True,
            keepalive=30,
            tls_context=ssl.create_default_context() if self.tls else None,
            timeout=10,
        )


@dataclass(frozen=True)
class Heard:
    """One message from the device, with its arrival time on the monotonic clock."""

    kind: TopicKind
    raw: bytes
    body: dict[str, Any] | None
    at: float
    retain: bool

    @property
    def command_id(self) -> Any:
        return self.body.get("commandId") if self.body is not None else None


def decode(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Probe:
    """Everything heard on the machine's status, dispense_result and config topics."""

    target: Target
    client: aiomqtt.Client
    heard: list[Heard] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def subscribe(self) -> None:
        await self.client.subscribe(
            [
                (self.target.topic(TopicKind.STATUS), 1),
                (self.target.topic(TopicKind.DISPENSE_RESULT), 1),
                (self.target.topic(TopicKind.CONFIG), 1),
            ]
        )

    async def pump(self) -> None:
        kinds = {self.target.topic(kind): kind for kind in TopicKind}
        async for message in self.client.messages:
            kind = kinds.get(str(message.topic))
            raw = message.payload if isinstance(message.payload, bytes) else b""
            if kind is None:
                continue
            self.heard.append(Heard(kind, raw, decode(raw), time.monotonic(), message.retain))
            self._new.set()

    def mark(self) -> int:
        return len(self.heard)

    async def wait_for(
        self, kind: TopicKind, since: int, within: float, **fields: Any
    ) -> Heard | None:
        """The first message of `kind` heard after index `since` whose body has `fields`."""
        deadline = time.monotonic() + within
        index = since
        while True:
            while index < len(self.heard):
                item = self.heard[index]
                index += 1
                if item.kind is kind and matches(item, fields):
                    return item
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._new.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def results(self, command_id: str, since: int = 0) -> list[Heard]:
        return [
            h
            for h in self.heard[since:]
            if h.kind is TopicKind.DISPENSE_RESULT and h.command_id == command_id
        ]

    def since(self, kind: TopicKind, index: int) -> list[Heard]:
        return [h for h in self.heard[index:] if h.kind is kind]

    async def command(self, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(self.target.topic(TopicKind.COMMAND), payload, qos=1)


def matches(item: Heard, fields: dict[str, Any]) -> bool:
    if not fields:
        return True
    body = item.body
    return body is not None and all(body.get(k) == v for k, v in fields.items())


async def read_retained(target: Target, kind: TopicKind, within: float = 2.0) -> Heard | None:
    """What a new subscriber gets as the retained message on `kind`, from a fresh session."""
    async with target.client("retained") as client:
        await client.subscribe(target.topic(kind), qos=1)

        async def first() -> Heard | None:
            async for message in client.messages:
                raw = message.payload if isinstance(message.payload, bytes) else b""
                if message.retain:
                    return Heard(kind, raw, decode(raw), time.monotonic(), True)
            return None

        try:
            return await asyncio.wait_for(first(), within)
        except TimeoutError:
            return None
