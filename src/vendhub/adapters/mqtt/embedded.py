"""The in-process amqtt broker used when MQTT_BROKER_URL is unset or `embedded`."""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


class BrokerPortInUse(RuntimeError):
    """Another broker (often Mosquitto) already listens on the embedded broker's port."""


def check_port_free(bind: str, port: int) -> None:
    """Raise BrokerPortInUse (one line naming both fixes) if bind:port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            raise BrokerPortInUse(
                f"port {bind}:{port} is already in use (is Mosquitto running?). Either point "
                f"MQTT_BROKER_URL at that broker (e.g. MQTT_BROKER_URL=mqtt://127.0.0.1:{port}) "
                "or give the embedded broker another port (e.g. MQTT_EMBEDDED_PORT=1884)."
            ) from None


class EmbeddedBroker:
    def __init__(self, bind: str, port: int) -> None:
        self.bind = bind
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        check_port_free(self.bind, self.port)
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.bind}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        # amqtt logs every connection at INFO; keep the product's log readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s:%d", self.bind, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
