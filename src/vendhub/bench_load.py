"""Load generators `vendhub bench` runs in a separate process (python -m vendhub.bench_load)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import aiomqtt

from vendhub.entrypoints.cli import run_async


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


class _Http:
    """A minimal HTTP/1.1 keep-alive client for the webhook sender: one request at a time per
    connection, idle connections reused. httpx cost ~7 ms of CPU per request here, as much as
    the server's whole order, on the same two cores as the server under test."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, str | None]:
        """(status, Retry-After) of one request; the connection goes back for the next."""
        reader, writer = await self._connection()
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, headers.get("retry-after")

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def webhooks(
    urls: list[str], bodies: dict[str, str], *, inflight: int = 0, rate: float = 0.0
) -> dict[str, object]:
    """POST every notification, round-robin over `urls`: `inflight` at a time (each sender
    waits for its answer), or at a steady `rate` per second (not waiting). A 503 is retried
    after its Retry-After, as the gateway does; the first send time counts."""
    sent: dict[str, float] = {}
    shed = 0
    clients = [_Http(u) for u in urls]
    try:
        # Connections opened first, so the figure is not of TCP handshakes.
        for client in clients:
            opened = [await client._connection() for _ in range(max(inflight, 8))]
            client.idle.extend(opened)
            for _ in opened:
                await client.request("GET", "/health")

        async def post(n: int, order_id: str) -> None:
            nonlocal shed
            http = clients[n % len(clients)]
            sent[order_id] = time.time()
            body = bodies[order_id].encode()
            while True:
                status, retry_after = await http.request("POST", "/api/payments/webhook", body)
                if status != 503:
                    if status >= 400:
                        raise RuntimeError(f"webhook for {order_id} answered {status}")
                    return
                shed += 1
                await asyncio.sleep(float(retry_after or "1"))

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
            client.close()
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
            answer = run_async(webhooks(urls, bodies, inflight=int(value)))
        else:
            answer = run_async(webhooks(urls, bodies, rate=float(value)))
        print(json.dumps(answer))
    else:
        raise SystemExit(f"unknown load {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
