"""`vendhub bench`: telemetry ingest, end-to-end orders and webhook→command latency, printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import httpx
import sqlalchemy as sa
import uvicorn

from vendhub.adapters.db.migrate import upgrade_async
from vendhub.adapters.db.tables import machines, orders, telemetry
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.entrypoints.api.app import create_app
from vendhub.services import catalog
from vendhub.services.checkout import checkout
from vendhub.services.orders import OrderLine
from vendhub.services.payments import receive_notification
from vendhub.services.stock import ChangeType, update_stock


@dataclass
class BenchConfig:
    database_url: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    telemetry_messages: int = 20_000
    telemetry_publishers: int = 4
    machines: int = 50
    orders: int = 1000
    webhooks: int = 32
    http_port: int = 0


def _settings(cfg: BenchConfig, prefix: str, port: int) -> Settings:
    return Settings(
        database_url=cfg.database_url,
        mqtt_broker_url=f"mqtt://{cfg.broker_host}:{cfg.broker_port}",
        mqtt_topic_prefix=prefix,
        mqtt_client_id=f"vendhub-bench-{prefix}",
        admin_username="",
        port=port,
        log_level="WARNING",
    )


@contextlib.asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[Container]:
    container = build(settings)
    await container.start()
    try:
        if not await container.mqtt.wait_connected(within_s=10):
            raise RuntimeError(f"cannot reach the broker at {settings.broker_display}")
        yield container
    finally:
        await container.stop()


async def _seed_machines(container: Container, count: int, stock: int) -> list[str]:
    ctx = container.ctx
    product = await catalog.save_product(ctx, {"name": "Bench Cola", "price": 5000})
    tag = uuid.uuid4().hex[:6]
    ids = [f"B{tag}{n:04d}" for n in range(count)]
    async with ctx.engine.connect() as conn:
        existing = set((await conn.execute(sa.select(machines.c.id))).scalars())
    for machine_id in ids:
        if machine_id in existing:
            continue
        await catalog.create_machine(ctx, {"id": machine_id, "name": machine_id})
        await catalog.upsert_slot(
            ctx,
            machine_id,
            1,
            {"product_id": product["id"], "capacity": 1000, "motor_duration_ms": 0},
        )
        await update_stock(
            ctx,
            machine_id,
            1,
            ChangeType.RESTOCK,
            quantity_change=stock,
            new_stock=None,
            reason="bench",
            user_id=None,
        )
    return ids


async def bench_telemetry(cfg: BenchConfig) -> float:
    """Messages published by several clients at QoS 0 → rows stored; returns rows/s."""
    prefix = "bench" + uuid.uuid4().hex[:6]
    async with _running(_settings(cfg, prefix, 3001)) as container:
        ids = await _seed_machines(container, cfg.machines, 0)
        async with container.engine.connect() as conn:
            before = await conn.scalar(sa.select(sa.func.count()).select_from(telemetry)) or 0
        payload = json.dumps(
            {"temperature": 4.5, "humidity": 61.2, "rssi": -60, "door": "closed"}
        ).encode()
        per = cfg.telemetry_messages // cfg.telemetry_publishers
        total = per * cfg.telemetry_publishers

        async def publisher(n: int) -> None:
            async with aiomqtt.Client(
                cfg.broker_host,
                cfg.broker_port,
                identifier=f"{prefix}-pub{n}",
                max_queued_outgoing_messages=per + 10,
            ) as client:
                for i in range(per):
                    machine = ids[(n + i) % len(ids)]
                    await client.publish(f"{prefix}/{machine}/telemetry", payload, qos=0)

        start = time.perf_counter()
        await asyncio.gather(*(publisher(n) for n in range(cfg.telemetry_publishers)))
        stored = await _wait_count(container, before + total, deadline_s=120)
        elapsed = time.perf_counter() - start
        return (stored - before) / elapsed


async def _wait_count(container: Container, target: int, deadline_s: float) -> int:
    end = time.monotonic() + deadline_s
    count = 0
    while time.monotonic() < end:
        async with container.engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(telemetry)) or 0
        if count >= target:
            break
        await asyncio.sleep(0.05)
    return count


async def bench_orders(cfg: BenchConfig) -> tuple[float, int]:
    """Paid orders over simulated machines until COMPLETED; returns (orders/s, completed)."""
    from vendhub.sim.fleet import run_fleet
    from vendhub.sim.options import SimOptions

    prefix = "bench" + uuid.uuid4().hex[:6]
    settings = _settings(cfg, prefix, 3001)
    async with _running(settings) as container:
        ids = await _seed_machines(container, cfg.machines, cfg.orders)
        stop = asyncio.Event()
        fleet = asyncio.create_task(
            run_fleet(
                SimOptions(
                    host=cfg.broker_host,
                    port=cfg.broker_port,
                    prefix=prefix,
                    machine_ids=ids,
                    speed=0.0,
                    telemetry_interval_s=3600,
                ),
                stop,
            )
        )
        await asyncio.sleep(1.0)
        provider = container.payments
        assert isinstance(provider, SandboxProvider)
        start = time.perf_counter()
        order_ids = await _place_and_pay(container, provider, ids, cfg.orders)
        done = await _wait_final(container, order_ids, deadline_s=300)
        elapsed = time.perf_counter() - start
        stop.set()
        await fleet
        return done / elapsed, done


async def _place_and_pay(
    container: Container, provider: SandboxProvider, ids: list[str], count: int
) -> list[str]:
    sem = asyncio.Semaphore(32)

    async def one(n: int) -> str:
        async with sem:
            order_id = await checkout(
                container.ctx,
                provider,
                ids[n % len(ids)],
                [OrderLine(slot_number=1)],
                customer_phone=None,
                payment_method=None,
            )
            body = provider.signed_notification(order_id, 5000, "settlement")
            await receive_notification(container.ctx, provider, {}, body)
            return order_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _wait_final(container: Container, order_ids: list[str], deadline_s: float) -> int:
    end = time.monotonic() + deadline_s
    done = 0
    while time.monotonic() < end:
        async with container.engine.connect() as conn:
            done = (
                await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(orders)
                    .where(orders.c.id.in_(order_ids), orders.c.status == "COMPLETED")
                )
                or 0
            )
        if done >= len(order_ids):
            break
        await asyncio.sleep(0.1)
    return done


async def bench_webhook_latency(cfg: BenchConfig) -> list[float]:
    """32 concurrent signed webhooks over HTTP; latency until each command is on the broker."""
    prefix = "bench" + uuid.uuid4().hex[:6]
    port = cfg.http_port or free_port()
    settings = _settings(cfg, prefix, port)
    container = build(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(container=container),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        await container.mqtt.wait_connected(within_s=10)
        ids = await _seed_machines(container, cfg.webhooks, 10)
        provider = container.payments
        assert isinstance(provider, SandboxProvider)
        orders_by_machine = {
            m: await checkout(
                container.ctx,
                provider,
                m,
                [OrderLine(slot_number=1)],
                customer_phone=None,
                payment_method=None,
            )
            for m in ids
        }
        return await _measure_webhooks(cfg, prefix, port, provider, orders_by_machine)
    finally:
        server.should_exit = True
        await serving


async def _measure_webhooks(
    cfg: BenchConfig,
    prefix: str,
    port: int,
    provider: SandboxProvider,
    orders_by_machine: dict[str, str],
) -> list[float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    async with aiomqtt.Client(
        cfg.broker_host, cfg.broker_port, identifier=f"{prefix}-watch"
    ) as watcher:
        await watcher.subscribe(f"{prefix}/+/command", qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                body = json.loads(message.payload)
                if body.get("cmd") == "dispense":
                    seen.setdefault(body["orderId"], time.perf_counter())
                    if len(seen) == len(orders_by_machine):
                        return

        watching = asyncio.create_task(watch())
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=64)
        ) as http:
            bodies = {
                o: provider.signed_notification(o, 5000, "settlement")
                for o in orders_by_machine.values()
            }
            # Open the connections first so the measurement is not of TCP handshakes.
            await asyncio.gather(*(http.get("/health") for _ in range(cfg.webhooks)))

            async def post(order_id: str) -> None:
                sent[order_id] = time.perf_counter()
                response = await http.post(
                    "/api/payments/webhook",
                    content=bodies[order_id],
                    headers={"content-type": "application/json"},
                )
                response.raise_for_status()

            await asyncio.gather(*(post(o) for o in bodies))
            await asyncio.wait_for(watching, timeout=60)
    return [(seen[o] - sent[o]) * 1000 for o in sent]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def run(cfg: BenchConfig, parts: set[str]) -> dict[str, float]:
    await upgrade_async(cfg.database_url)
    figures: dict[str, float] = {}
    if "telemetry" in parts:
        figures["telemetry_msgs_per_s"] = await bench_telemetry(cfg)
    if "orders" in parts:
        rate, done = await bench_orders(cfg)
        figures["orders_per_s"] = rate
        figures["orders_completed"] = done
    if "webhook" in parts:
        latencies = await bench_webhook_latency(cfg)
        figures["webhook_to_command_p50_ms"] = statistics.median(latencies)
        figures["webhook_to_command_p99_ms"] = percentile(latencies, 99)
    return figures
