"""Small MQTT helpers behind `vendhub mqtt …` (the seed's test-mqtt.js)."""

from __future__ import annotations

import ssl
import time
from typing import Any

import aiomqtt

Target = tuple[str, int, str | None, str | None, bool]


def _client(target: Target) -> aiomqtt.Client:
    host, port, username, password, tls = target
    return aiomqtt.Client(
        host,
        port,
        username=username,
        password=password,
        tls_context=ssl.create_default_context() if tls else None,
        protocol=aiomqtt.ProtocolVersion.V311,
    )


async def subscribe(target: Target, topic_filter: str, count: int) -> None:
    async with _client(target) as client:
        await client.subscribe(topic_filter, qos=1)
        print(f"subscribed to {topic_filter}", flush=True)
        seen = 0
        async for message in client.messages:
            payload = message.payload
            text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
            retained = " (retained)" if message.retain else ""
            print(f"{message.topic}{retained}: {text}", flush=True)
            seen += 1
            if count and seen >= count:
                return


async def publish(target: Target, topic: str, payload: bytes, retain: bool = False) -> None:
    async with _client(target) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def sample_telemetry() -> dict[str, Any]:
    return {
        "ts": int(time.time()),
        "temperature": 4.5,
        "humidity": 61.2,
        "rssi": -63,
        "door": "closed",
        "slots": [{"id": 1, "level": "HIGH"}],
    }
