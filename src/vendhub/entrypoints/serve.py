"""`vendhub serve`: uvicorn + the container; `--demo` adds a simulated VM01 and one order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Generator
from types import FrameType

import httpx
import uvicorn

from vendhub.adapters.db.migrate import upgrade_async
from vendhub.adapters.mqtt.embedded import BrokerPortInUse
from vendhub.bootstrap import build, mqtt_config
from vendhub.config import Settings
from vendhub.entrypoints.api.app import create_app
from vendhub.entrypoints.preflight import (
    StartupError,
    check_database,
    check_settings,
    check_sqlite_directory,
)
from vendhub.services.demo import seed_demo

log = logging.getLogger("vendhub.serve")
FINAL = {"COMPLETED", "FAILED", "REFUNDED", "EXPIRED", "CANCELLED"}
# After SIGTERM/SIGINT the process is gone within this, even if some shutdown step hangs.
SHUTDOWN_DEADLINE_S = 25.0


class _Server(uvicorn.Server):
    """uvicorn.Server that exits normally (code 0) after a graceful SIGTERM/SIGINT shutdown.

    uvicorn re-raises the captured signal once shutdown is complete, so with the default
    handler the process dies of SIGTERM (exit 143) although it stopped cleanly.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            # A daemon timer, not a task: it fires even if the event loop is stuck.
            timer = threading.Timer(SHUTDOWN_DEADLINE_S, _exit_now)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)


def _exit_now() -> None:
    log.error("shutdown did not finish within %.0f s; exiting anyway", SHUTDOWN_DEADLINE_S)
    logging.shutdown()
    os._exit(1)


async def run_server(settings: Settings, *, demo: bool = False, migrate: bool = False) -> int:
    # Checked before uvicorn starts: a failure inside its lifespan prints a traceback and
    # leaves the embedded broker's tasks behind.
    check_settings(settings)
    check_sqlite_directory(settings.resolved_database_url)
    if migrate:
        await upgrade_async(settings.resolved_database_url)
    await check_database(settings.resolved_database_url)
    container = build(settings)
    if demo:
        await seed_demo(container.ctx, settings.machine_id)
    app = create_app(container=container)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            lifespan="on",
            access_log=not demo,
        )
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tasks: list[asyncio.Task[None]] = []
    if demo:
        tasks.append(asyncio.create_task(_demo(settings, server)))
    try:
        await server.serve()
    except BrokerPortInUse as exc:  # taken between the check and the bind
        raise StartupError(str(exc)) from None
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return 0 if server.started else 1


async def _demo(settings: Settings, server: uvicorn.Server) -> None:
    """Run simulated machine VM01 and walk one order through its whole life, logging it."""
    from vendhub.sim.machine import SimulatedMachine
    from vendhub.sim.options import SimOptions

    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.1)
    cfg = mqtt_config(settings)
    options = SimOptions(
        host=cfg.host,
        port=cfg.port,
        username=cfg.username,
        password=cfg.password,
        tls=cfg.tls,
        prefix=settings.mqtt_topic_prefix,
        machine_ids=[settings.machine_id],
        telemetry_interval_s=30,
    )
    machine = SimulatedMachine(settings.machine_id, options)
    machine.start()
    try:
        await asyncio.sleep(1.0)
        await _demo_order(settings)
        await asyncio.Event().wait()  # keep the machine running until shutdown
    finally:
        await machine.stop()


async def _demo_order(settings: Settings) -> None:
    base = f"http://{settings.host}:{settings.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        created = (await http.post("/api/orders", json={"slot_number": 1})).json()
        order_id = created["order_id"]
        log.info(
            "demo order %s: %s, Rp %s — pay page %s",
            order_id,
            created["status"],
            created["total_amount"],
            created["payment"]["redirect_url"],
        )
        await http.post(f"/api/payments/sandbox/{order_id}/pay")
        # Each transition is logged by the service as it happens; here, only the ending.
        status = created["status"]
        for _ in range(300):
            status = (await http.get(f"/api/orders/{order_id}")).json()["status"]
            if status in FINAL:
                break
            await asyncio.sleep(0.2)
        log.info(
            "demo order %s ended %s. Try: curl %s/api/orders/%s | API docs: %s/docs",
            order_id,
            status,
            base,
            order_id,
            base,
        )
