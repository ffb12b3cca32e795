"""The real `vendhub serve` as a subprocess, simulated machines, over the real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MQTT_HOST, MQTT_PORT, free_port, unique
from vendhub.config import Settings

START_S = 40.0  # bound for a server to answer /ready
POLL_S = 0.1

_SCRIPT = Path(sys.executable).with_name("vendhub")
VENDHUB: list[str] = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from vendhub.entrypoints.cli import main; main()"]
)


def clean_env(**values: str) -> dict[str, str]:
    """The parent environment without any vendhub setting, plus `values`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["COLUMNS"] = "200"  # Rich must not wrap messages the tests read
    env.update(values)
    return env


def vendhub(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VENDHUB, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    """One `vendhub serve --migrate` process; restartable over the same database and broker."""

    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    args: list[str] = field(default_factory=list)  # more `vendhub serve` options

    def __post_init__(self) -> None:
        self.log = self.workdir / f"serve-{self.env['PORT']}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*VENDHUB, "serve", "--migrate", *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"vendhub serve exited with {self.process.returncode}:\n{tail(self.log)}"
                )
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"vendhub serve not ready in {START_S}s:\n{tail(self.log)}")
            time.sleep(POLL_S)

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, within: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=within)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Sim:
    """`python -m vendhub.sim` for some machines, as a subprocess (stopped with SIGTERM)."""

    prefix: str
    machine_ids: list[str]
    workdir: Path
    faults: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    port: int = MQTT_PORT
    seed: int | None = None
    extra: list[str] = field(default_factory=list)  # more `vendhub sim` options

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "vendhub.sim",
            "--host",
            MQTT_HOST,
            "--port",
            str(self.port),
            "--prefix",
            self.prefix,
            "--ids",
            ",".join(self.machine_ids),
            "--speed",
            "0.01",
            "--telemetry-interval",
            "30",
            "--state-dir",
            str(self.workdir / "sim-state"),
        ]
        for fault in self.faults:
            args += ["--fault", fault]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        args += self.extra
        log = self.workdir / f"sim-{'-'.join(self.machine_ids)}.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                args, env=clean_env(), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Api:
    """HTTP calls the tests make, with bounded polling."""

    base_url: str
    token: str = ""

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.base_url, timeout=10, headers=headers)

    def login(self, username: str = "admin", password: str = "admin123") -> None:
        with self.client() as http:
            response = http.post(
                "/api/auth/login", json={"username": username, "password": password}
            )
        assert response.status_code == 200, response.text
        self.token = response.json()["token"]

    def get(self, path: str) -> Any:
        with self.client() as http:
            response = http.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        with self.client() as http:
            response = http.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def stock(self, machine_id: str) -> dict[int, dict[str, Any]]:
        return {s["slot_number"]: s for s in self.get(f"/api/stock/{machine_id}")["data"]}

    def wait_online(self, machine_id: str, within: float = 20) -> None:
        self.wait(lambda: self.get(f"/api/machines/{machine_id}")["status"] == "ONLINE", within)

    def order_when(self, order_id: str, statuses: set[str], within: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def done() -> bool:
            found.update(self.get(f"/api/orders/{order_id}"))
            return found["status"] in statuses

        self.wait(done, within, lambda: f"order {order_id}: {found}")
        return found

    @staticmethod
    def wait(check: Any, within: float, describe: Any = lambda: "") -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {within}s {describe()}")
            time.sleep(POLL_S)


@dataclass
class Shop:
    server: Server
    api: Api
    machine_id: str  # a well-behaved simulated machine
    jam_machine_id: str  # a simulated machine whose every dispense jams
    prefix: str


# Every e2e client is 127.0.0.1: the abuse limits would stop the tests' own traffic.
LOOSE_LIMITS = {
    "RATE_LIMIT_DEFAULT": "100000/minute",
    "RATE_LIMIT_ORDERS": "100000/minute",
    "RATE_LIMIT_WEBHOOK": "100000/minute",
    "ANON_MAX_UNPAID_UNITS": "100",
}


def server_env(database_url: str, machine_id: str, **extra: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=database_url,
        MQTT_BROKER_URL=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        MQTT_TOPIC_PREFIX=unique("e2e"),
        MQTT_CLIENT_ID=unique("vendhub-e2e-"),
        MACHINE_ID=machine_id,
        PORT=str(free_port()),
        HOST="127.0.0.1",
        APP_ENV="development",
        RESULT_GRACE_MS="1000",
        LOG_LEVEL="INFO",
        **{**LOOSE_LIMITS, **extra},
    )


def machine_name(label: str) -> str:
    # Machine ids are unique per run: a simulator's MQTT client id is vm-{machineId}, and
    # two clients with one id on one broker disconnect each other.
    return unique(label)


def prepare(env: dict[str, str], cwd: Path, *machine_ids: str) -> None:
    """`vendhub db upgrade`, then `vendhub seed --demo` once per machine id."""
    done = vendhub("db", "upgrade", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    for machine_id in machine_ids:
        done = vendhub("seed", "--demo", env={**env, "MACHINE_ID": machine_id}, cwd=cwd)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One running server on SQLite, machine VM01… (normal) and VMJ… (always jams)."""
    workdir = tmp_path_factory.mktemp("e2e-shop")
    machine_id, jam_id = machine_name("VM01x"), machine_name("VMJx")
    env = server_env(f"sqlite:///{workdir / 'shop.db'}", machine_id)
    prepare(env, workdir, machine_id, jam_id)
    server = Server(env, workdir)
    good = Sim(env["MQTT_TOPIC_PREFIX"], [machine_id], workdir)
    jam = Sim(env["MQTT_TOPIC_PREFIX"], [jam_id], workdir, faults=["jam=1.0"])
    try:
        server.start()
        good.start()
        jam.start()
        api = Api(server.base_url)
        api.login()
        api.wait_online(machine_id)
        api.wait_online(jam_id)
        yield Shop(server, api, machine_id, jam_id, env["MQTT_TOPIC_PREFIX"])
    finally:
        good.stop()
        jam.stop()
        server.stop()
