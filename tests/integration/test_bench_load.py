"""The bench's webhook sender: keep-alive HTTP/1.1, 503s retried after Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from vendhub.bench_load import webhooks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_every_webhook_is_delivered_once_accepted_over_few_connections() -> None:
    received: list[bytes] = []
    connections = 0
    shed_once: set[bytes] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            if head.startswith(b"POST") and body not in shed_once:
                # The first try of each webhook is shed, as an overloaded server does.
                shed_once.add(body)
                reply = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                writer.write(reply + b"Content-Length: 4\r\n\r\nbusy")
            else:
                if head.startswith(b"POST"):
                    received.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bodies = {f"order-{n}": f'{{"order_id": "order-{n}"}}' for n in range(40)}
    async with server:
        answer = await webhooks([f"http://127.0.0.1:{port}"], bodies, inflight=4)
        steady = await webhooks(
            [f"http://127.0.0.1:{port}"], {"late": '{"order_id": "late"}'}, rate=50
        )
    assert sorted(received) == sorted(
        b.encode() for b in [*bodies.values(), '{"order_id": "late"}']
    )
    assert answer["shed"] == 40 and steady["shed"] == 1
    assert set(answer["sent"]) == set(bodies)  # type: ignore[arg-type]
    assert connections <= 8 + 8  # opened up front and kept alive, per run
