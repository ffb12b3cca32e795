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


async def webhooks(
    urls: list[str], bodies: dict[str, str], *, inflight: int = 0, rate: float = 0.0
) -> dict[str, object]:
    """POST every notification, round-robin over `urls`: `inflight` at a time (each sender
    waits for its answer), or at a steady `rate` per second (not waiting). A 503 is retried
    after its Retry-After, as the gateway does; the first send time counts."""
    sent: dict[str, float] = {}
    shed = 0
    limits = httpx.Limits(max_connections=max(inflight, 64) + 4)
    clients = [httpx.AsyncClient(base_url=u, timeout=60, limits=limits) for u in urls]
    try:
        # Connections opened first, so the figure is not of TCP handshakes.
        await asyncio.gather(*(c.get("/health") for c in clients for _ in range(8)))

        async def post(n: int, order_id: str) -> None:
            nonlocal shed
            http = clients[n % len(clients)]
            sent[order_id] = time.time()
            while True:
                response = await http.post(
                    "/api/payments/webhook",
                    content=bodies[order_id],
                    headers={"content-type": "application/json"},
                )
                if response.status_code != 503:
                    response.raise_for_status()
                    return
                shed += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        order_ids = list(bodies)
        if inflight:
            queue = iter(enumerate(order_ids))

            async def sender() -> None:
                for n, order_id in queue:
                    await post(n, order_id)

            await asyncio.gather(*(sender() for _ in range(inflight)))
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for n, order_id in enumerate(order_ids):
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
                tasks.append(asyncio.create_task(post(n, order_id)))
            await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    return {"sent": sent, "shed": shed}


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "telemetry":
        host, port, prefix, publishers, total, *ids = args
        asyncio.run(telemetry(host, int(port), prefix, int(publishers), int(total), ids))
    elif kind == "webhooks":
        mode, value, *urls = args
        bodies = json.loads(sys.stdin.read())
        if mode == "inflight":
            answer = asyncio.run(webhooks(urls, bodies, inflight=int(value)))
        else:
            answer = asyncio.run(webhooks(urls, bodies, rate=float(value)))
        print(json.dumps(answer))
    else:
        raise SystemExit(f"unknown load {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
