"""A lean MQTT 3.1.1 subscriber for one high-rate QoS 0 stream (telemetry).

paho (under aiomqtt) wakes up once per packet, reads it with three `recv` calls and builds a
message object, a queue entry and an await for it. This connection reads whatever the socket
holds at once, frames every PUBLISH in it and hands them to a plain callback as one list of
`(topic, payload)` bytes: no task, queue or object per message. It only subscribes (QoS 0)
and pings; commands and acknowledged publishes stay on `MqttClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from vendhub.adapters.mqtt.client import RECONNECT_MAX_S, RECONNECT_MIN_S, MqttConfig

log = logging.getLogger(__name__)

Frames = list[tuple[bytes, bytes]]
# A frame larger than this is skipped as it streams past (never buffered) and counted.
MAX_FRAME_BYTES = 256 * 1024
# Asked of the kernel so a burst waits in the socket while a batch is written (the kernel
# caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14


class StreamProtocolError(ConnectionError):
    """The broker refused us or sent something that is not MQTT 3.1.1."""


def _utf8(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + _remaining_length(len(body)) + body


def connect_packet(config: MqttConfig, client_id: str) -> bytes:
    flags = 0x02  # clean session: QoS 0 is not queued for an absent subscriber anyway
    payload = _utf8(client_id)
    if config.username is not None:
        flags |= 0x80
        payload += _utf8(config.username)
        if config.password is not None:
            flags |= 0x40
            payload += _utf8(config.password)
    body = _utf8("MQTT") + bytes([4, flags]) + config.keepalive.to_bytes(2, "big") + payload
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filters: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_utf8(f) + b"\x00" for f in topic_filters)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


class FrameReader:
    """Splits a byte stream into MQTT packets; PUBLISH frames are collected, every other
    packet goes to `on_control(type, flags, body)`. Pure (no I/O), so it is tested alone."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.buffer = bytearray()
        self.max_frame = max_frame
        self.skip = 0  # bytes of an oversized frame still to discard
        self.oversized = 0

    def feed(
        self, data: bytes, on_control: Callable[[int, int, bytes], None]
    ) -> tuple[Frames, list[bytes]]:
        """Returns the PUBLISH frames complete so far and the packet ids to acknowledge
        (QoS 1; we subscribe at QoS 0, so a broker should never send one)."""
        if self.skip:
            taken = min(self.skip, len(data))
            self.skip -= taken
            data = data[taken:]
        buf = self.buffer
        buf += data
        frames: Frames = []
        acks: list[bytes] = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 2:
            header = buf[pos]
            length, mult, i, complete = 0, 1, pos + 1, False
            while i < end_of_data:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if byte < 0x80:
                    complete = True
                    break
                if i - pos > 4:
                    raise StreamProtocolError("remaining length longer than 4 bytes")
                mult *= 128
            if not complete:
                break
            end = i + length
            if length > self.max_frame:
                self.oversized += 1
                self.skip = max(0, end - end_of_data)
                pos = min(end, end_of_data)
                continue
            if end > end_of_data:
                break
            kind = header >> 4
            if kind == PUBLISH:
                topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                qos = (header >> 1) & 0x03
                start = topic_end + (2 if qos else 0)
                if start > end:
                    raise StreamProtocolError("PUBLISH shorter than its topic")
                frames.append((bytes(buf[i + 2 : topic_end]), bytes(buf[start:end])))
                if qos:
                    acks.append(bytes([header & 0x06]) + bytes(buf[topic_end:start]))
            else:
                on_control(kind, header & 0x0F, bytes(buf[i:end]))
            pos = end
        del buf[:pos]
        return frames, acks


class _Connection(asyncio.Protocol):
    def __init__(self, owner: StreamSubscriber) -> None:
        self.owner = owner
        self.reader = FrameReader(owner.max_frame)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.heard = True  # anything arrived since the last PINGREQ
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.owner.receive_buffer)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        before = self.reader.oversized
        try:
            frames, acks = self.reader.feed(data, self._control)
        except StreamProtocolError as exc:
            self._fail(exc)
            return
        if self.reader.oversized != before:
            skipped = self.reader.oversized - before
            self.owner.oversized += skipped
            log.warning("skipped %d MQTT frame(s) over %d bytes", skipped, self.owner.max_frame)
            if self.owner.on_oversized is not None:
                self.owner.on_oversized(skipped)
        for ack in acks:
            if ack[0] == 0x02 and self.transport is not None:  # QoS 1
                self.transport.write(bytes([PUBACK << 4, 2]) + ack[1:])
            elif self.transport is not None:  # QoS 2: PUBREC, then PUBCOMP on PUBREL
                self.transport.write(bytes([PUBREC << 4, 2]) + ack[1:])
        if frames and not self.owner.on_frames(frames) and self.transport is not None:
            # The consumer is full: leave the rest in the socket (its buffer, then the
            # broker's queue) until resume().
            self.paused = True
            self.transport.pause_reading()

    def _control(self, kind: int, flags: int, body: bytes) -> None:
        if kind == CONNACK and not self.connack.done():
            self.connack.set_result(body[1] if len(body) >= 2 else 0xFF)
        elif kind == SUBACK and not self.suback.done():
            self.suback.set_result(body[2:])
        elif kind == PUBREL and self.transport is not None:
            self.transport.write(bytes([PUBCOMP << 4, 2]) + body[:2])

    def _fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.closed.done():
            self.closed.set_result(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.connack, self.suback):
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))
                future.exception()  # retrieved: nobody may be waiting for it any more
        if not self.closed.done():
            self.closed.set_result(exc)


@dataclass
class StreamSubscriber:
    """Subscribes `topic_filters` at QoS 0 on its own connection and reconnects on loss."""

    config: MqttConfig
    topic_filters: list[str]
    # Returns False when it has no room for more: reading pauses until resume().
    on_frames: Callable[[Frames], bool]
    on_oversized: Callable[[int], None] | None = None
    client_id_suffix: str = "-stream"
    receive_buffer: int = RECEIVE_BUFFER_BYTES
    max_frame: int = MAX_FRAME_BYTES
    connected: bool = False
    connects: int = 0
    oversized: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _up: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _conn: _Connection | None = field(default=None, repr=False)

    async def run(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            try:
                await self._session()
                delay = RECONNECT_MIN_S
            except (OSError, TimeoutError, StreamProtocolError) as exc:
                if self._stopping.is_set():
                    break
                log.warning(
                    "MQTT stream connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    self.config.host,
                    self.config.port,
                    exc,
                    delay,
                )
            finally:
                self.connected = False
                self._up.clear()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _session(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        timeout = cfg.publish_timeout_s
        tls = ssl.create_default_context() if cfg.tls else None
        transport, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Connection(self),
                cfg.host,
                cfg.port,
                ssl=tls,
                server_hostname=cfg.host if tls else None,
            ),
            timeout,
        )
        self._conn = conn
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            transport.write(connect_packet(cfg, cfg.client_id + self.client_id_suffix))
            code = await asyncio.wait_for(asyncio.shield(conn.connack), timeout)
            if code != 0:
                raise StreamProtocolError(f"broker refused the connection (CONNACK {code})")
            transport.write(subscribe_packet(1, self.topic_filters))
            granted = await asyncio.wait_for(asyncio.shield(conn.suback), timeout)
            if any(g == 0x80 for g in granted):
                raise StreamProtocolError(
                    f"broker refused the subscription to {self.topic_filters}"
                )
            self.connected = True
            self.connects += 1
            self._up.set()
            log.info(
                "MQTT stream connected to %s:%d; subscribed to %s",
                cfg.host,
                cfg.port,
                ", ".join(self.topic_filters),
            )
            while True:
                conn.heard = False
                transport.write(bytes([PINGREQ << 4, 0]))
                waiters: list[asyncio.Future[Any]] = [conn.closed, stop_wait]
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=max(1.0, cfg.keepalive / 2),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stop_wait in done:
                    transport.write(bytes([DISCONNECT << 4, 0]))
                    return
                if conn.closed in done:
                    exc = conn.closed.result()
                    raise exc if exc is not None else ConnectionError("closed by the broker")
                # While paused, the PINGRESP waits in the socket behind unread telemetry.
                if not conn.heard and not conn.paused:
                    raise TimeoutError(f"nothing heard within {max(1.0, cfg.keepalive / 2)}s")
        finally:
            stop_wait.cancel()
            self._conn = None
            transport.close()

    async def wait_connected(self, within_s: float | None = None) -> bool:
        try:
            async with asyncio.timeout(within_s):  # not wait_for: see MqttClient.wait_connected
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    def resume(self) -> None:
        """The consumer has room again: read on."""
        conn = self._conn
        if conn is not None and conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()

    async def stop(self) -> None:
        self._stopping.set()
