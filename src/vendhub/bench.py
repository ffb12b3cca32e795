"""`vendhub bench`: telemetry ingest, end-to-end orders and webhook→command latency, printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
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
        # The bench measures throughput from one address, not the abuse limits.
        rate_limit_default="1000000/minute",
        rate_limit_webhook="1000000/minute",
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
            {"product_id": product.id, "capacity": 1000, "motor_duration_ms": 0},
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
        before = await _count(container, telemetry)
        per = cfg.telemetry_messages // cfg.telemetry_publishers
        total = per * cfg.telemetry_publishers
        start = time.perf_counter()
        # The load comes from other processes, as it would from a fleet, so the backend's
        # process spends its CPU only on receiving and storing.
        if shutil.which("mosquitto_pub"):
            await _mosquitto_pub_load(cfg, prefix, ids, total)
        else:
            await _run_load_process(
                "telemetry",
                cfg.broker_host,
                str(cfg.broker_port),
                prefix,
                str(cfg.telemetry_publishers),
                str(total),
                *ids,
            )
        stored, last_at = await _wait_count(container, before + total, deadline_s=120)
        lost = before + total - stored
        if lost:
            print(f"telemetry: {lost} of {total} messages never arrived (dropped by the broker)")
        return (stored - before) / (last_at - start)


async def _mosquitto_pub_load(cfg: BenchConfig, prefix: str, ids: list[str], total: int) -> None:
    """C publishers (`mosquitto_pub -l`, one line = one message): they cost almost no CPU,
    so the figure is the backend's, not the load generator's."""
    line = json.dumps({"temperature": 4.5, "humidity": 61.2, "rssi": -60, "door": "closed"})
    per = total // cfg.telemetry_publishers
    body = ((line + "\n") * per).encode()
    procs = [
        await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            cfg.broker_host,
            "-p",
            str(cfg.broker_port),
            "-q",
            "0",
            "-t",
            f"{prefix}/{ids[n % len(ids)]}/telemetry",
            "-l",
            stdin=asyncio.subprocess.PIPE,
        )
        for n in range(cfg.telemetry_publishers)
    ]
    await asyncio.gather(*(proc.communicate(body) for proc in procs))


async def _run_load_process(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vendhub.bench_load", *args)
    if await proc.wait() != 0:
        raise RuntimeError(f"load process {args[0]} failed")


async def _count(container: Container, table: sa.Table, *where: Any) -> int:
    async with container.engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(table).where(*where)
        return int(await conn.scalar(stmt) or 0)


async def _wait_count(container: Container, target: int, deadline_s: float) -> tuple[int, float]:
    """Poll the row count until `target`, or until it stops growing for 3 s; returns the
    count and when it last grew (so a shortfall does not count idle time as work)."""
    end = time.monotonic() + deadline_s
    count, last_at = 0, time.perf_counter()
    while time.monotonic() < end:
        now = await _count(container, telemetry)
        if now != count:
            count, last_at = now, time.perf_counter()
        if count >= target or time.perf_counter() - last_at > 3:
            break
        await asyncio.sleep(0.05)
    return count, last_at


async def bench_orders(cfg: BenchConfig) -> tuple[float, int]:
    """Paid orders over simulated machines until COMPLETED; returns (orders/s, completed)."""
    prefix = "bench" + uuid.uuid4().hex[:6]
    settings = _settings(cfg, prefix, 3001)
    async with _running(settings) as container:
        ids = await _seed_machines(container, cfg.machines, cfg.orders)
        # The machines run in their own process, like a real fleet.
        fleet = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vendhub.sim",
            "--host",
            cfg.broker_host,
            "--port",
            str(cfg.broker_port),
            "--prefix",
            prefix,
            "--ids",
            ",".join(ids),
            "--speed",
            "0",
            "--telemetry-interval",
            "3600",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _wait_online(container, ids, deadline_s=30)
            provider = container.payments
            assert isinstance(provider, SandboxProvider)
            start = time.perf_counter()
            order_ids = await _place_and_pay(container, provider, ids, cfg.orders)
            done = await _wait_final(container, order_ids, deadline_s=300)
            elapsed = time.perf_counter() - start
        finally:
            fleet.terminate()
            await fleet.wait()
        return done / elapsed, done


async def _wait_online(container: Container, ids: list[str], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        online = await _count(
            container, machines, machines.c.id.in_(ids), machines.c.status == "ONLINE"
        )
        if online == len(ids):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("simulated machines did not come online")


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
        done = await _count(
            container, orders, orders.c.id.in_(order_ids), orders.c.status == "COMPLETED"
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
                    seen.setdefault(body["orderId"], time.time())
                    if len(seen) == len(orders_by_machine):
                        return

        watching = asyncio.create_task(watch())
        bodies = {
            o: provider.signed_notification(o, 5000, "settlement").decode()
            for o in orders_by_machine.values()
        }
        # The webhooks come from another process (as from Midtrans); it reports when it
        # sent each one, on the same clock (time.time) the watcher uses.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vendhub.bench_load",
            "webhooks",
            f"http://127.0.0.1:{port}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(json.dumps(bodies).encode())
        if proc.returncode != 0:
            raise RuntimeError("webhook load process failed")
        sent.update(json.loads(out))
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
