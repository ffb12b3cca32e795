"""A private Mosquitto started from `vendhub broker config` files, on free ports, per test."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from tests.conftest import unique

HOST = "127.0.0.1"
START_S = 15.0  # bound for the broker to listen


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


@dataclass
class PrivateMosquitto:
    """`mosquitto -c DIR/mosquitto.conf`: devices on `port`, the backend on `backend_port`."""

    directory: Path
    port: int
    backend_port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "mosquitto.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.directory / "mosquitto.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_S
        while not (_listening(self.port) and _listening(self.backend_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mosquitto did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def client(
    port: int,
    username: str | None,
    password: str | None,
    identifier: str | None = None,
    clean_session: bool = True,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        port,
        username=username,
        password=password,
        identifier=identifier or unique("t-"),
        clean_session=clean_session,
        timeout=10,
    )


async def can_connect(
    port: int, username: str | None, password: str | None, identifier: str | None = None
) -> bool:
    try:
        async with client(port, username, password, identifier):
            return True
    except aiomqtt.MqttError:
        return False
