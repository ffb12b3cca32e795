"""The in-process amqtt broker (MQTT_BROKER_URL unset or `embedded`): demo and small installs."""

from __future__ import annotations

import contextvars
import logging
import socket
from collections.abc import Iterator
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


class _SnapshotDict(dict[Any, Any]):
    """A dict whose iteration walks a copy. amqtt 0.12 iterates its sessions, subscriptions
    and retained messages with awaits inside the loop; a client connecting meanwhile changed
    the dict and killed the loop ('dictionary changed size during iteration', 180 tracebacks
    with 200 machines)."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(super().keys()))

    def keys(self) -> Any:
        return list(super().keys())

    def values(self) -> Any:
        return list(super().values())

    def items(self) -> Any:
        return list(super().items())


# True while the broker handles a SUBSCRIBE: the only time retained messages are due.
_subscribing: contextvars.ContextVar[bool] = contextvars.ContextVar("subscribing", default=False)


def _broker_class() -> type[Any]:
    from amqtt.broker import Broker

    class SafeBroker(Broker):  # type: ignore[misc]
        """amqtt's broker with its connect-time retained replay removed and safe iteration.

        On every CONNECT amqtt 0.12 replays the retained messages of every filter any client
        holds (not the connecting client's), at QoS 0: a reconnecting device got its retained
        status twice, and each of 200 connecting machines was sent all 200 statuses. MQTT
        sends retained messages when a subscription is made, which is what remains."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name in ("_sessions", "_subscriptions", "_retained_messages"):
                setattr(self, name, _SnapshotDict(getattr(self, name)))

        async def _handle_subscription(self, *args: Any, **kwargs: Any) -> None:
            token = _subscribing.set(True)
            try:
                await super()._handle_subscription(*args, **kwargs)
            finally:
                _subscribing.reset(token)

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            if _subscribing.get():
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return SafeBroker


class EmbeddedBroker:
    def __init__(self, bind: str, port: int) -> None:
        self.bind = bind
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        check_port_free(self.bind, self.port)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.bind}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        # amqtt logs every connection at INFO; keep the product's log readable.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = _broker_class()(config)
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s:%d", self.bind, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
