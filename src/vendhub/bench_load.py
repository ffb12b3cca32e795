"""Load generators `vendhub bench` runs in a separate process (python -m vendhub.bench_load)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiomqtt
import httpx


async def telemetry(
    host: str, port: int, prefix: str, publishers: int, total: int, machine_ids: list[str]
) -> None:
    payload = json.dumps(
        {"temperature": 4.5, "humidity": 61.2, "rssi": -60, "door": "closed"}
    ).encode()
    per = total // publishers

    async def publisher(n: int) -> None:
        async with aiomqtt.Client(
            host, port, identifier=f"{prefix}-load{n}", max_queued_outgoing_messages=per + 10
        ) as client:
            for i in range(per):
                machine = machine_ids[(n + i) % len(machine_ids)]
                await client.publish(f"{prefix}/{machine}/telemetry", payload, qos=0)

    await asyncio.gather(*(publisher(n) for n in range(publishers)))


async def webhooks(base_url: str, bodies: dict[str, str]) -> dict[str, float]:
    """POST every notification at once; returns when (time.time) each was sent."""
    sent: dict[str, float] = {}
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        # Connections opened first, so the figure is not of TCP handshakes.
        await asyncio.gather(*(http.get("/health") for _ in bodies))

        async def post(order_id: str) -> None:
            sent[order_id] = time.time()
            response = await http.post(
                "/api/payments/webhook",
                content=bodies[order_id],
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()

        await asyncio.gather(*(post(o) for o in bodies))
    return sent


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "telemetry":
        host, port, prefix, publishers, total, *ids = args
        asyncio.run(telemetry(host, int(port), prefix, int(publishers), int(total), ids))
    elif kind == "webhooks":
        bodies = json.loads(sys.stdin.read())
        print(json.dumps(asyncio.run(webhooks(args[0], bodies))))
    else:
        raise SystemExit(f"unknown load {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
