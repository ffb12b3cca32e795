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

from vendhub.adapters.db.migrate import upgrade_async
from vendhub.adapters.db.tables import machines, orders, telemetry
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.domain.model import OrderStatus
from vendhub.services import catalog
from vendhub.services.catalog import MachineStatus
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
    machines: int = 100
    orders: int = 1000
    webhooks: int = 32  # in flight at once
    rate: float = 100.0  # the steady-rate run, webhooks/s


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


async def bench_telemetry(cfg: BenchConfig) -> tuple[float, float]:
    """Messages published by several clients at QoS 0 → rows stored; (rows/s, share stored)."""
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
        registry = container.metrics.registry
        paused = int(registry.get_sample_value("vendhub_telemetry_paused_total") or 0)
        if paused:
            print(f"telemetry: the stream paused reading {paused} time(s) (intake queue full)")
        if lost:
            received = registry.get_sample_value(
                "vendhub_mqtt_messages_in_total", {"kind": "telemetry"}
            )
            dropped = registry.get_sample_value("vendhub_telemetry_dropped_total")
            print(
                f"telemetry: {lost} of {total} messages not stored: "
                f"{total - int(received or 0)} never reached the backend (dropped by the broker), "
                f"{int(dropped or 0)} dropped by the backend's full queue"
            )
        return (stored - before) / (last_at - start), (stored - before) / total


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


@dataclass
class OrderRun:
    """One run of paid orders through `vendhub serve [--workers N]`, webhooks from another
    process."""

    processes: int
    orders: int
    completed: int
    orders_per_s: float
    latencies_ms: list[float]
    cpu_ms_per_order: float  # serve's own CPU (user + system, all its processes), from /proc
    shed: int  # 503s the load process got (and retried after Retry-After)
    mode: str  # "32 in flight" or "100/s"


async def bench_orders_http(
    cfg: BenchConfig, processes: int, *, inflight: int = 0, rate: float = 0.0, orders: int = 0
) -> OrderRun:
    """Pre-created orders on `cfg.machines` machines; signed settlement webhooks POSTed by a
    separate process (`inflight` at a time, or at a steady `rate` not waiting for answers) to
    one `vendhub serve` on one port, with `--workers {processes}` when more than one (as it
    would be deployed on one host); a simulated fleet in a third process answers every
    command at once. Measures orders/s until COMPLETED, webhook → command on the broker, and
    serve's CPU per order (its workers' and the supervisor's)."""
    count = orders or cfg.orders
    prefix = "bench" + uuid.uuid4().hex[:6]
    settings = _settings(cfg, prefix, 3001)
    container = build(settings)
    await container.start(workers=False)  # seeding and checkout only: no MQTT here
    server: asyncio.subprocess.Process | None = None
    fleet: asyncio.subprocess.Process | None = None
    try:
        ids = await _seed_machines(container, cfg.machines, count)
        provider = container.payments
        assert isinstance(provider, SandboxProvider)
        order_ids = await _place_orders(container, provider, ids, count)
        port = free_port()
        server = await _start_server(cfg, prefix, port, processes)
        await _wait_http(port)
        await _wait_workers(server.pid, processes)
        fleet = await _start_fleet(cfg, prefix, ids)
        await _wait_online(container, ids, deadline_s=60)
        bodies = {
            o: provider.signed_notification(o, 5000, "settlement").decode() for o in order_ids
        }
        cpu_before = _tree_cpu_s(server.pid)
        async with _CommandWatcher(cfg, prefix, len(order_ids)) as watcher:
            start = time.perf_counter()
            args = ["inflight", str(inflight)] if inflight else ["rate", str(rate)]
            sent, shed = await _post_webhooks([f"http://127.0.0.1:{port}"], bodies, *args)
            done, last_at = await _wait_final(container, order_ids, deadline_s=300)
            await watcher.wait(deadline_s=30)
        cpu = _tree_cpu_s(server.pid) - cpu_before
        latencies = [(watcher.seen[o] - sent[o]) * 1000 for o in sent if o in watcher.seen]
        return OrderRun(
            processes=processes,
            orders=count,
            completed=done,
            orders_per_s=done / max(1e-9, last_at - start),
            latencies_ms=latencies,
            cpu_ms_per_order=cpu * 1000 / max(1, done),
            shed=shed,
            mode=f"{inflight} in flight" if inflight else f"{rate:g}/s",
        )
    finally:
        for proc in [*([server] if server else []), *([fleet] if fleet else [])]:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
        await container.stop()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), children not included."""
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (serve's supervisor and workers)."""
    total = 0.0
    for one in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            total += _cpu_s(one)
    return total


async def _wait_workers(pid: int, processes: int, deadline_s: float = 60) -> None:
    """With --workers N, /health answers once one worker is up: wait for all N (each is
    ready once it has connected to the broker; its connect line is in no file here, so wait
    for N children and give the last one time to finish its startup)."""
    if processes <= 1:
        return
    end = time.monotonic() + deadline_s
    while len(_children(pid)) < processes:
        if time.monotonic() > end:
            raise RuntimeError(f"vendhub serve --workers {processes} did not start them all")
        await asyncio.sleep(0.2)
    await asyncio.sleep(5.0)


async def _start_server(
    cfg: BenchConfig, prefix: str, port: int, processes: int
) -> asyncio.subprocess.Process:
    import os
    import tempfile

    env = {
        **os.environ,
        "DATABASE_URL": cfg.database_url,
        "MQTT_BROKER_URL": f"mqtt://{cfg.broker_host}:{cfg.broker_port}",
        "MQTT_TOPIC_PREFIX": prefix,
        "MQTT_SHARE_GROUP": f"{prefix}g",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "REPLICA_ID": prefix,
        "SERVE_WORKERS": str(processes),
        # One client sends every webhook: the abuse limits would stop the load itself.
        "RATE_LIMIT_DEFAULT": "1000000/minute",
        "RATE_LIMIT_WEBHOOK": "1000000/minute",
        "ADMIN_USERNAME": "",
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
    }
    env.pop("NODE_ENV", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from vendhub.entrypoints.cli import main; main()",
        "serve",
        cwd=tempfile.mkdtemp(),  # no .env of the caller's
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )


async def _wait_http(port: int, deadline_s: float = 60) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"vendhub serve on port {port} did not start")


async def _start_fleet(cfg: BenchConfig, prefix: str, ids: list[str]) -> asyncio.subprocess.Process:
    # The machines run in their own process, like a real fleet.
    return await asyncio.create_subprocess_exec(
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
        # Real time (a 200 ms motor): the simulator scales its result re-publish backoff by
        # the speed too, and at 0.1 or 0 devices re-send every result several times before
        # the ack can arrive, so the backend mostly applied duplicates.
        "--speed",
        "1",
        "--telemetry-interval",
        "30",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _wait_online(container: Container, ids: list[str], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        online = await _count(
            container,
            machines,
            machines.c.id.in_(ids),
            machines.c.status == MachineStatus.ONLINE.value,
        )
        if online == len(ids):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("simulated machines did not come online")


async def _place_orders(
    container: Container, provider: SandboxProvider, ids: list[str], count: int
) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(n: int) -> str:
        async with sem:
            return await checkout(
                container.ctx,
                provider,
                ids[n % len(ids)],
                [OrderLine(slot_number=1)],
                customer_phone=None,
                payment_method=None,
            )

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _wait_final(
    container: Container, order_ids: list[str], deadline_s: float
) -> tuple[int, float]:
    """Completed orders, and when the count last grew."""
    end = time.monotonic() + deadline_s
    done, last_at = 0, time.perf_counter()
    while time.monotonic() < end:
        now = await _count(
            container,
            orders,
            orders.c.id.in_(order_ids),
            orders.c.status == OrderStatus.COMPLETED.value,
        )
        if now != done:
            done, last_at = now, time.perf_counter()
        if done >= len(order_ids):
            break
        await asyncio.sleep(0.05)
    return done, last_at


class _CommandWatcher:
    """Subscribes to every command topic and records when each order's dispense appeared."""

    def __init__(self, cfg: BenchConfig, prefix: str, expected: int) -> None:
        self.seen: dict[str, float] = {}
        self._expected = expected
        self._client = aiomqtt.Client(
            cfg.broker_host, cfg.broker_port, identifier=f"{prefix}-watch"
        )
        self._prefix = prefix
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _CommandWatcher:
        await self._client.__aenter__()
        await self._client.subscribe(f"{self._prefix}/+/command", qos=1)
        self._task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        async for message in self._client.messages:
            if not isinstance(message.payload, bytes):
                continue
            body = json.loads(message.payload)
            if body.get("cmd") == "dispense":
                self.seen.setdefault(body["orderId"], time.time())
                if len(self.seen) >= self._expected:
                    return

    async def wait(self, deadline_s: float) -> None:
        assert self._task is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), deadline_s)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(None, None, None)


async def _post_webhooks(
    urls: list[str], bodies: dict[str, str], mode: str, value: str
) -> tuple[dict[str, float], int]:
    """The webhooks come from another process (as from Midtrans); it reports when it sent
    each one, on the same clock (time.time) the watcher uses, and how many were shed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vendhub.bench_load",
        "webhooks",
        mode,
        value,
        *urls,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(json.dumps(bodies).encode())
    if proc.returncode != 0:
        raise RuntimeError("webhook load process failed")
    answer = json.loads(out)
    return answer["sent"], int(answer["shed"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def statements_per_order(cfg: BenchConfig) -> tuple[float, float]:
    """(statements, transactions) for one paid one-unit order from checkout to the acked
    result, counted with SQLAlchemy events on the same service functions serve runs (the
    publish itself left out: it is the broker's)."""
    from sqlalchemy import event

    from vendhub.protocol.messages import DispenseResult
    from vendhub.services import results
    from vendhub.services.context import ServiceContext

    prefix = "bench" + uuid.uuid4().hex[:6]
    container = build(_settings(cfg, prefix, 3001))
    await container.start(workers=False)
    try:
        [machine_id] = await _seed_machines(container, 1, 10)
        handed: list[Any] = []
        ctx = ServiceContext(
            engine=container.engine,
            tunables=container.ctx.tunables,
            mqtt_connected=lambda: True,
            hand_off=handed.extend,
        )
        provider = container.payments
        assert isinstance(provider, SandboxProvider)
        counts = {"statements": 0, "transactions": 0}

        def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            # SQLite's BEGIN IMMEDIATE is sent as a statement; other drivers' BEGIN is not.
            if not sql.lstrip().upper().startswith("BEGIN"):
                counts["statements"] += 1

        def begin(*_: Any) -> None:
            counts["transactions"] += 1

        runs = 5
        for n in range(runs + 1):
            if n == 1:  # the first order warmed the pool and the statement caches
                event.listen(container.engine.sync_engine, "before_cursor_execute", statement)
                event.listen(container.engine.sync_engine, "begin", begin)
            order_id = await checkout(
                ctx,
                provider,
                machine_id,
                [OrderLine(slot_number=1)],
                customer_phone=None,
                payment_method=None,
            )
            body = provider.signed_notification(order_id, 5000, "settlement")
            await receive_notification(ctx, provider, {}, body)
            [command] = handed
            handed.clear()
            # Published by the hand-off; its deferred "sent" mark is dropped when the result
            # comes first (OutboxPublisher.MARK_DELAY_S), as it does here.
            result = DispenseResult.model_validate(
                {
                    "commandId": command.dispense_id,
                    "orderId": order_id,
                    "slot": 1,
                    "success": True,
                    "dropDetected": True,
                    "durationMs": 0,
                }
            )
            await results.apply_result(ctx, machine_id, result, "{}")
            # The ack is written already marked sent: nothing to mark after its publish.
            handed.clear()
        return counts["statements"] / runs, counts["transactions"] / runs
    finally:
        await container.stop()


async def statement_ceiling(cfg: BenchConfig, transactions: int = 2000) -> dict[str, float]:
    """CPU µs per statement, 5-statement transactions 16 at a time, of one UPDATE … RETURNING:
    through SQLAlchemy Core on the app's engine, as a `fast.Query` on the app's engine (how
    the hot transactions run), and on a raw asyncpg pool (prepared; the ceiling). PostgreSQL
    only."""
    import asyncpg

    from vendhub.adapters.db import fast
    from vendhub.adapters.db.engine import create_engine

    table = sa.table("bench_ceiling", sa.column("id", sa.Integer), sa.column("n", sa.Integer))
    dsn = sa.engine.make_url(cfg.database_url).set(drivername="postgresql")
    raw = await asyncpg.create_pool(
        dsn.render_as_string(hide_password=False), min_size=16, max_size=16
    )
    engine = create_engine(cfg.database_url)
    figures: dict[str, float] = {}
    try:
        await raw.execute("CREATE TABLE IF NOT EXISTS bench_ceiling (id int PRIMARY KEY, n int)")
        await raw.execute(
            "INSERT INTO bench_ceiling SELECT g, 0 FROM generate_series(1, 80) g "
            "ON CONFLICT DO NOTHING"
        )
        stmt = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("row"))
            .values(n=table.c.n + 1)
            .returning(table.c.n)
        )

        async def core(worker: int) -> None:
            for _ in range(transactions // 16):
                async with engine.begin() as conn:
                    for k in range(5):
                        await conn.scalar(stmt, {"row": worker * 5 + k + 1})

        query = fast.Query(lambda: stmt)

        async def lean(worker: int) -> None:
            for _ in range(transactions // 16):
                async with engine.begin() as conn:
                    for k in range(5):
                        await query.scalar(conn, row=worker * 5 + k + 1)

        async def asyncpg_pool(worker: int) -> None:
            for _ in range(transactions // 16):
                async with raw.acquire() as conn, conn.transaction():
                    for k in range(5):
                        await conn.fetchval(
                            "UPDATE bench_ceiling SET n = n + 1 WHERE id = $1 RETURNING n",
                            worker * 5 + k + 1,
                        )

        for name, work in (("core", core), ("query", lean), ("asyncpg", asyncpg_pool)):
            await asyncio.gather(*(work(w) for w in range(16)))  # warm up
            before = time.process_time()
            await asyncio.gather(*(work(w) for w in range(16)))
            spent = time.process_time() - before
            figures[name] = spent * 1e6 / ((transactions // 16) * 16 * 5)
        await raw.execute("DROP TABLE bench_ceiling")
    finally:
        await raw.close()
        await engine.dispose()
    return figures


async def raw_broker_rate(cfg: BenchConfig, total: int) -> float:
    """The ceiling for telemetry: the same burst to a C subscriber (`mosquitto_sub`)."""
    prefix = "bench" + uuid.uuid4().hex[:6]
    ids = [f"R{n:04d}" for n in range(cfg.machines)]
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub",
        "-h",
        cfg.broker_host,
        "-p",
        str(cfg.broker_port),
        "-t",
        f"{prefix}/+/telemetry",
        "-C",
        str(total),
        "-W",
        "120",
        stdout=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # subscribed
    start = time.perf_counter()
    await _mosquitto_pub_load(cfg, prefix, ids, total)
    await sub.wait()
    return total / (time.perf_counter() - start)


async def run(cfg: BenchConfig, parts: set[str]) -> dict[str, float]:
    await upgrade_async(cfg.database_url)
    figures: dict[str, float] = {}
    if "telemetry" in parts:
        stored_rate, share = await bench_telemetry(cfg)
        figures["telemetry_msgs_per_s"] = stored_rate
        figures["telemetry_share_stored"] = share
        if shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub"):
            figures["telemetry_raw_broker_msgs_per_s"] = await raw_broker_rate(
                cfg, cfg.telemetry_messages
            )
    if "statements" in parts:
        stmts, txs = await statements_per_order(cfg)
        figures["statements_per_order"] = stmts
        figures["transactions_per_order"] = txs
        if cfg.database_url.startswith("postgresql"):
            ceiling = await statement_ceiling(cfg)
            figures["core_us_per_statement"] = ceiling["core"]
            figures["query_us_per_statement"] = ceiling["query"]
            figures["asyncpg_us_per_statement"] = ceiling["asyncpg"]
    for processes in (1, 2):
        if f"orders{processes}" in parts or (processes == 1 and "orders" in parts):
            run_ = await bench_orders_http(cfg, processes, inflight=cfg.webhooks)
            key = f"{processes}p"
            figures[f"orders_per_s_{key}"] = run_.orders_per_s
            figures[f"orders_completed_{key}"] = run_.completed
            figures[f"cpu_ms_per_order_{key}"] = run_.cpu_ms_per_order
            figures[f"webhook_to_command_p50_ms_{key}"] = statistics.median(run_.latencies_ms)
            figures[f"webhook_to_command_p99_ms_{key}"] = percentile(run_.latencies_ms, 99)
            figures[f"webhooks_shed_{key}"] = run_.shed
    if "rate" in parts:
        run_ = await bench_orders_http(
            cfg, 1, rate=cfg.rate, orders=max(cfg.machines, int(cfg.rate * 5))
        )
        figures["steady_rate_per_s"] = cfg.rate
        figures["steady_orders_completed"] = run_.completed
        figures["steady_webhook_to_command_p50_ms"] = statistics.median(run_.latencies_ms)
        figures["steady_webhook_to_command_p99_ms"] = percentile(run_.latencies_ms, 99)
        figures["steady_webhooks_shed"] = run_.shed
    return figures


def table(figures: dict[str, float], inflight: int) -> list[str]:
    """One row per figure: measured, the ceiling measured in the same run, their ratio."""
    f = figures.get
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: float | None, ceiling: float | None, fmt: str = "{:.1f}") -> None:
        if value is None:
            return
        ratio = f"{value / ceiling:.2f}" if ceiling else ""
        shown = fmt.format(ceiling) if ceiling is not None else ""
        rows.append((name, fmt.format(value), shown, ratio))

    stmts = f("statements_per_order")
    raw_us = f("asyncpg_us_per_statement")
    raw_ms = stmts * raw_us / 1000 if stmts and raw_us else None
    for key in ("1p", "2p"):
        rate = f(f"orders_per_s_{key}")
        if rate is None:
            continue
        procs = key[0]
        # Ceiling: this order's statements executed on raw asyncpg, one core per process.
        ceiling = int(procs) * 1000 / raw_ms if raw_ms else None
        row(f"orders/s end to end, {inflight} in flight, {procs} process(es)", rate, ceiling)
        row(f"  CPU ms per order ({procs} process(es))", f(f"cpu_ms_per_order_{key}"), raw_ms)
        # Queueing alone explains inflight ÷ throughput; the ratio is the excess.
        row(
            f"  webhook→command p50 ms ({procs} process(es))",
            f(f"webhook_to_command_p50_ms_{key}"),
            inflight * 1000 / rate,
        )
        row(
            f"  webhook→command p99 ms ({procs} process(es))",
            f(f"webhook_to_command_p99_ms_{key}"),
            None,
        )
        row(
            f"  webhooks shed (503, retried) ({procs} process(es))",
            f(f"webhooks_shed_{key}"),
            None,
            "{:.0f}",
        )
    if f("steady_rate_per_s"):
        rate_s = f"{f('steady_rate_per_s'):g}/s"
        row(f"webhook→command p50 ms at {rate_s}", f("steady_webhook_to_command_p50_ms"), 50.0)
        row(f"webhook→command p99 ms at {rate_s}", f("steady_webhook_to_command_p99_ms"), 50.0)
        row(f"  webhooks shed at {rate_s}", f("steady_webhooks_shed"), None, "{:.0f}")
    row(
        "telemetry stored msgs/s",
        f("telemetry_msgs_per_s"),
        f("telemetry_raw_broker_msgs_per_s"),
        "{:.0f}",
    )
    row("  telemetry share stored", f("telemetry_share_stored"), 1.0, "{:.3f}")
    row("statements per order (service layer)", stmts, 15.0)
    row("transactions per order", f("transactions_per_order"), 4.0)
    row("CPU µs per statement, SQLAlchemy Core", f("core_us_per_statement"), raw_us, "{:.0f}")
    row(
        "CPU µs per statement, fast.Query (hot paths)",
        f("query_us_per_statement"),
        raw_us,
        "{:.0f}",
    )
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'figure':<{width}}  {'measured':>10}  {'ceiling':>10}  {'ratio':>6}"]
    lines += [f"{a:<{width}}  {b:>10}  {c:>10}  {d:>6}" for a, b, c, d in rows]
    return lines
