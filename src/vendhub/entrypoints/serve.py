"""`vendhub serve`: uvicorn + the container; `--demo` adds a simulated VM01 and one order.

`--workers N` (N > 1): this process binds the HTTP port and supervises N worker processes,
each a whole `vendhub serve` (API, MQTT client, background jobs) with its own MQTT client id
and its own listening socket on the port (SO_REUSEPORT); see `supervise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from types import FrameType

import httpx
import uvicorn

from vendhub.adapters.db.migrate import upgrade_async
from vendhub.adapters.mqtt.embedded import BrokerPortInUse
from vendhub.bootstrap import build, mqtt_config
from vendhub.config import Settings
from vendhub.domain.model import FINAL_ORDER_STATUSES
from vendhub.entrypoints.api.app import create_app
from vendhub.entrypoints.preflight import (
    StartupError,
    check_database,
    check_settings,
    check_sqlite_directory,
)
from vendhub.services.demo import seed_demo

log = logging.getLogger("vendhub.serve")
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


async def run_server(
    settings: Settings,
    *,
    demo: bool = False,
    migrate: bool = False,
    sock: socket.socket | None = None,
    parent_pid: int | None = None,
) -> int:
    """One serving process. As a worker of `supervise`: `sock` is the listening socket the
    supervisor bound for it, and the worker stops when `parent_pid` is no longer its parent."""
    # Checked before uvicorn starts: a failure inside its lifespan prints a traceback and
    # leaves the embedded broker's tasks behind. (A worker's supervisor checked them and
    # holds the port.)
    if sock is None:
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
    if parent_pid is not None:
        tasks.append(asyncio.create_task(_orphan_watch(server, parent_pid)))
    try:
        await server.serve(sockets=[sock] if sock is not None else None)
    except BrokerPortInUse as exc:  # taken between the check and the bind
        raise StartupError(str(exc)) from None
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return 0 if server.started else 1


async def _orphan_watch(server: uvicorn.Server, parent_pid: int) -> None:
    """A worker whose supervisor died (kill -9) stops too, instead of serving on unsupervised."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - nothing to wait on but polling
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; this worker stops", parent_pid)
    server.should_exit = True


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
            if status in FINAL_ORDER_STATUSES:
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


# ---------------------------------------------------------------------------------------------
# `vendhub serve --workers N`

WORKER_ENV = "VENDHUB_WORKER"  # "{index}:{listening fd}:{supervisor pid}", set for workers only
# A worker that exits sooner than this after starting counts as failing at start; after
# START_FAILURES_MAX of those in a row the supervisor gives up rather than loop forever.
STABLE_S = 30.0
START_FAILURES_MAX = 5
RESTART_BACKOFF_MAX_S = 30.0
POLL_S = 0.2
# The supervisor's exit code when a second Ctrl-C killed the workers (128 + SIGINT, as a shell
# reports a command interrupted by Ctrl-C).
EXIT_KILLED = 128 + signal.SIGINT


def check_workers(settings: Settings, workers: int, *, demo: bool = False) -> None:
    """What N > 1 processes need; one clear line otherwise."""
    if workers <= 1:
        return
    flag = f"{workers} workers (--workers or SERVE_WORKERS)"
    if demo:
        raise StartupError(f"{flag}: --demo runs in one process")
    if settings.resolved_database_url.startswith("sqlite"):
        raise StartupError(
            f"{flag} need PostgreSQL or MariaDB (set DATABASE_URL): SQLite takes one "
            "writing process; run SQLite with one worker"
        )
    if settings.embedded_broker:
        raise StartupError(
            f"{flag} need an external MQTT broker with shared subscriptions (set "
            "MQTT_BROKER_URL, e.g. Mosquitto 2, EMQX): the embedded broker lives inside one "
            "process"
        )
    if settings.share_group is None:
        raise StartupError(
            f"{flag} need MQTT_SHARE_GROUP (it is off): without a shared subscription every "
            "worker would apply every result"
        )


def worker_client_id(settings: Settings, index: int) -> str:
    """Distinct per worker, the same across the worker's restarts (the broker keeps its
    session): the replica's client id plus `-w{index}`."""
    return f"{settings.client_id}-w{index}"


def _listen(settings: Settings) -> socket.socket:
    """One worker's listening socket. Every worker has its own, all bound to the one port with
    SO_REUSEPORT, so the kernel spreads new connections evenly over the workers (on one shared
    socket, whichever worker wakes first accepts a whole burst of keep-alive connections), and
    a dead worker's socket is closed so that new connections go to the others meanwhile."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
            "(another vendhub? set PORT)"
        ) from None
    sock.listen(2048)  # uvicorn's default backlog
    sock.set_inheritable(True)
    return sock


@dataclass
class _Worker:
    index: int
    sock: socket.socket | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None


def supervise(settings: Settings, workers: int, *, migrate: bool = False) -> int:
    """Bind the HTTP port (one SO_REUSEPORT socket per worker), run `workers` worker
    processes accepting on it, start a new one when one dies (backing off if it keeps dying at
    start), and on SIGTERM/SIGINT stop them all (SIGTERM each, then wait for their graceful
    shutdown); a SIGINT while they stop (a second Ctrl-C) kills them at once. Returns the exit
    code: 0, 1 when a worker kept failing or did not stop cleanly, EXIT_KILLED when killed."""
    check_workers(settings, workers)
    check_settings(settings)
    if migrate:
        asyncio.run(upgrade_async(settings.resolved_database_url))
    asyncio.run(check_database(settings.resolved_database_url))
    pool = [_Worker(index) for index in range(workers)]
    for worker in pool:  # all bound before any starts: a taken port is one line, here
        worker.sock = _listen(settings)
    stop = _StopRequest()
    previous = {sig: signal.signal(sig, stop.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "supervisor %d: %d workers on http://%s:%d",
        os.getpid(),
        workers,
        settings.host,
        settings.port,
    )
    code = 0
    try:
        for worker in pool:
            _spawn(settings, worker)
        while not stop.requested:
            now = time.monotonic()
            for worker in pool:
                exited = worker.process is not None and worker.process.poll() is not None
                if exited and not _schedule_restart(worker, now):
                    code = 1
                    stop.requested = True
                    break
                if worker.restart_at is not None and now >= worker.restart_at:
                    _spawn(settings, worker)
            time.sleep(POLL_S)
    finally:
        stop.requested = True  # from here on, a SIGINT means now
        stopped = _stop_all(pool, stop)
        if stopped != 0:
            code = stopped
        for worker in pool:
            if worker.sock is not None:
                worker.sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == EXIT_KILLED:
        log.warning("supervisor %d: workers killed", os.getpid())
    else:
        log.info("supervisor %d: all workers stopped", os.getpid())
    return code


@dataclass
class _StopRequest:
    """The supervisor's SIGTERM/SIGINT handler. The first asks for a graceful stop; a SIGINT
    after that, while the workers shut down (an operator's second Ctrl-C), asks for an
    immediate one. A repeated SIGTERM changes nothing (as in uvicorn: only Ctrl-C forces)."""

    requested: bool = False
    now: bool = False

    def on_signal(self, sig: int, _frame: FrameType | None) -> None:
        # Only flags: the supervisor's loops poll them every POLL_S.
        if self.requested and sig == signal.SIGINT:
            self.now = True
        self.requested = True


def _spawn(settings: Settings, worker: _Worker) -> None:
    if worker.sock is None:
        try:
            worker.sock = _listen(settings)
        except StartupError as exc:  # the port went to another program meanwhile
            log.error("worker %d: %s; trying again", worker.index, exc)
            worker.restart_at = time.monotonic() + RESTART_BACKOFF_MAX_S
            return
    sock = worker.sock
    env = {
        **os.environ,
        # The supervisor's resolved values, whatever came from flags or .env.
        "HOST": settings.host,
        "PORT": str(settings.port),
        "MQTT_CLIENT_ID": worker_client_id(settings, worker.index),
        "SERVE_WORKERS": "1",
        WORKER_ENV: f"{worker.index}:{sock.fileno()}:{os.getpid()}",
    }
    worker.process = subprocess.Popen(
        [sys.executable, "-c", "from vendhub.entrypoints.serve import worker_main; worker_main()"],
        env=env,
        pass_fds=(sock.fileno(),),
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
        # then stops the workers in order.
        start_new_session=True,
    )
    worker.started_at = time.monotonic()
    worker.restart_at = None
    log.info("worker %d started, pid %d", worker.index, worker.process.pid)


def _schedule_restart(worker: _Worker, now: float) -> bool:
    """Plan the dead worker's replacement; False when it keeps failing at start."""
    assert worker.process is not None
    returncode = worker.process.returncode
    pid = worker.process.pid
    worker.process = None
    if worker.sock is not None:
        # Connections still queued on it are reset; new ones go to the other workers.
        worker.sock.close()
        worker.sock = None
    if now - worker.started_at < STABLE_S:
        worker.quick_failures += 1
    else:
        worker.quick_failures = 0
    if worker.quick_failures >= START_FAILURES_MAX:
        log.error(
            "worker %d (pid %d) exited with %s, %d times in a row within %.0f s of starting; "
            "stopping (see its log above)",
            worker.index,
            pid,
            returncode,
            worker.quick_failures,
            STABLE_S,
        )
        return False
    delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** max(0, worker.quick_failures - 1)) * (
        1 if worker.quick_failures else 0.5
    )
    log.warning(
        "worker %d (pid %d) exited with %s; starting a new one in %.1f s",
        worker.index,
        pid,
        returncode,
        delay,
    )
    worker.restart_at = now + delay
    return True


def _stop_all(pool: list[_Worker], stop: _StopRequest) -> int:
    """SIGTERM every live worker and wait for them; SIGKILL them all as soon as `stop.now`
    (a second Ctrl-C), and any that outlives the shutdown deadline. Returns 0 when all stopped
    cleanly (exit 0), EXIT_KILLED when killed on request, 1 otherwise."""
    live = [w.process for w in pool if w.process is not None and w.process.poll() is None]
    if not live:
        return 0
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    log.info("stopping %d worker(s) (Ctrl-C again to kill them now)", len(live))
    # Each worker exits by itself within SHUTDOWN_DEADLINE_S (see _Server.handle_exit).
    deadline = time.monotonic() + SHUTDOWN_DEADLINE_S + 5
    killed_on_request = False
    while running := [p for p in live if p.poll() is None]:
        if stop.now and not killed_on_request:
            log.warning(
                "second Ctrl-C: killing %d worker(s) still stopping (pid %s)",
                len(running),
                ", ".join(str(p.pid) for p in running),
            )
            for process in running:
                process.kill()
            killed_on_request = True
        elif time.monotonic() > deadline:
            for process in running:
                log.error("worker pid %d did not stop; killing it", process.pid)
                process.kill()
            deadline = float("inf")  # once; SIGKILL cannot be ignored
        time.sleep(POLL_S)
    if killed_on_request:
        return EXIT_KILLED
    return 0 if all(p.returncode == 0 for p in live) else 1


def worker_main() -> None:
    """Entry point of one worker process started by `supervise`."""
    import typer

    from vendhub.entrypoints.cli import _logging, _settings, one_line_errors, run_async

    index, fd, parent = (int(part) for part in os.environ.pop(WORKER_ENV).split(":"))
    settings = _settings()
    _logging(settings.log_level, tag=f"w{index}")
    sock = socket.socket(fileno=fd)
    code = 1
    try:
        with one_line_errors(settings.resolved_database_url):
            code = run_async(run_server(settings, sock=sock, parent_pid=parent))
    except typer.Exit as exc:  # one_line_errors has said why
        code = exc.exit_code
    sys.exit(code)
