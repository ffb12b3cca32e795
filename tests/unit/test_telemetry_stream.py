"""The telemetry stream: MQTT framing without paho, and the intake's bounded hand-over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from vendhub.adapters.mqtt.client import MqttConfig
from vendhub.adapters.mqtt.stream import (
    CONNACK,
    PINGRESP,
    SUBACK,
    FrameReader,
    Frames,
    StreamProtocolError,
    StreamSubscriber,
    connect_packet,
    subscribe_packet,
)
from vendhub.metrics import Metrics
from vendhub.services.context import ServiceContext, Tunables
from vendhub.workers import intake as intake_module
from vendhub.workers.intake import Intake


def publish(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 7) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += payload
    length, n = bytearray(), len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30 | (qos << 1)]) + bytes(length) + body


def no_control(kind: int, flags: int, body: bytes) -> None:
    raise AssertionError(f"unexpected control packet {kind}")


messages = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=40),
        st.binary(max_size=300),  # > 127 bytes: a two-byte remaining length
    ),
    max_size=20,
)


@given(messages, st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_frames_split_anywhere_across_reads_come_out_whole_and_in_order(
    sent: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(publish(t, p) for t, p in sent)
    reader, got, pos = FrameReader(), [], 0
    for cut in cuts:
        frames, acks = reader.feed(stream[pos : pos + cut], no_control)
        got += frames
        assert acks == []
        pos += cut
    got += reader.feed(stream[pos:], no_control)[0]
    assert got == sent
    assert reader.buffer == bytearray()


def test_control_packets_go_to_the_callback_and_qos1_frames_are_acknowledged() -> None:
    seen: list[tuple[int, bytes]] = []
    data = (
        bytes([CONNACK << 4, 2, 0, 0])
        + bytes([SUBACK << 4, 3, 0, 1, 0])
        + publish(b"vm/VM01/telemetry", b"{}", qos=1, packet_id=513)
        + bytes([PINGRESP << 4, 0])
    )
    frames, acks = FrameReader().feed(data, lambda k, f, b: seen.append((k, b)))
    assert frames == [(b"vm/VM01/telemetry", b"{}")]
    assert acks == [b"\x02\x02\x01"]  # QoS 1, packet id 513
    assert seen == [(CONNACK, b"\x00\x00"), (SUBACK, b"\x00\x01\x00"), (PINGRESP, b"")]


def test_an_oversized_frame_is_skipped_unbuffered_and_counted_and_the_next_one_arrives() -> None:
    reader = FrameReader(max_frame=100)
    big = publish(b"vm/VM01/telemetry", b"x" * 5000)
    small = publish(b"vm/VM01/telemetry", b'{"temperature":4}')
    stream = big + small
    got = []
    for start in range(0, len(stream), 700):
        got += reader.feed(stream[start : start + 700], no_control)[0]
        assert len(reader.buffer) <= 700  # never the whole big frame
    assert got == [(b"vm/VM01/telemetry", b'{"temperature":4}')]
    assert reader.oversized == 1


def test_a_remaining_length_over_four_bytes_is_a_protocol_error() -> None:
    with pytest.raises(StreamProtocolError):
        FrameReader().feed(b"\x30\xff\xff\xff\xff\x01", no_control)


def test_a_publish_shorter_than_its_topic_is_a_protocol_error() -> None:
    with pytest.raises(StreamProtocolError):
        FrameReader().feed(b"\x32\x03\x00\x01a", no_control)  # QoS 1 without its packet id


def test_connect_and_subscribe_packets() -> None:
    config = MqttConfig(host="b", username="u", password="p", keepalive=30)
    assert connect_packet(config, "c") == (
        b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x1e" + b"\x00\x01c" + b"\x00\x01u" + b"\x00\x01p"
    )
    anonymous = MqttConfig(host="b", keepalive=30)
    assert connect_packet(anonymous, "c")[9] == 0x02  # clean session only
    assert subscribe_packet(1, ["vm/+/telemetry"]) == b"\x82\x13\x00\x01\x00\x0evm/+/telemetry\x00"


def make_intake() -> Intake:
    engine = create_async_engine("sqlite+aiosqlite://")  # never connected here
    clock = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    ctx = ServiceContext(engine=engine, tunables=Tunables(topic_prefix="vm"), clock=lambda: clock)
    return Intake(ctx, Metrics())


def sample(intake: Intake, name: str, labels: dict[str, str] | None = None) -> float:
    return intake.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_full_telemetry_queue_pauses_the_stream_and_resumes_it_below_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "TELEMETRY_QUEUE_SIZE", 4)
    monkeypatch.setattr(intake_module, "TELEMETRY_BATCH", 3)
    monkeypatch.setattr(intake_module, "TELEMETRY_FLUSH_S", 0.0)
    intake = make_intake()
    resumed: list[bool] = []
    intake.resume_telemetry = lambda: resumed.append(True)
    frame = (b"vm/VM01/telemetry", b"{}")
    assert intake.take_telemetry([frame] * 3) is True
    assert intake.take_telemetry([frame] * 2) is False  # 5 waiting: the stream pauses
    assert sample(intake, "vendhub_telemetry_paused_total") == 1
    assert len((await intake._next_frames())[0]) == 3
    assert resumed == []  # 2 left: not yet below half of 4
    assert intake.take_telemetry([frame] * 2) is False  # still paused: not counted again
    assert sample(intake, "vendhub_telemetry_paused_total") == 1
    await intake._next_frames()
    assert resumed == [True]  # 1 left
    assert sample(intake, "vendhub_telemetry_dropped_total") == 0


async def test_frames_beyond_twice_the_bound_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only frames that arrive another way than the (paused) stream can get this far.
    monkeypatch.setattr(intake_module, "TELEMETRY_QUEUE_SIZE", 3)
    intake = make_intake()
    frame = (b"vm/VM01/telemetry", b"{}")
    intake.take_telemetry([frame] * 4)
    intake.take_telemetry([frame] * 4)
    intake.take_telemetry([frame])
    assert intake.telemetry_backlog() == 6
    assert sample(intake, "vendhub_telemetry_dropped_total") == 3
    assert sample(intake, "vendhub_mqtt_messages_in_total", {"kind": "telemetry"}) == 9


async def test_foreign_topics_and_bad_payloads_on_the_stream_are_dropped_and_counted() -> None:
    intake = make_intake()
    at = intake.ctx.clock()
    frames = [
        (b"vm/VM01/telemetry", b'{"temperature":4.5}'),
        (b"other/VM01/telemetry", b'{"temperature":4.5}'),
        (b"vm/VM01/dispense_result", b"{}"),
        (b"vm/VM 1/telemetry", b"{}"),
        (b"vm/\xff/telemetry", b"{}"),
        (b"vm/VM02/telemetry", b'{"temperature":NaN}'),
        (b"vm/VM02/telemetry", b"x" * 20_000),
        (b"vm/VM02/telemetry", b'{"humidity":61}'),
        (b"vm/VM01/telemetry", b'{"temperature":5.5}'),
    ]
    readings = intake._readings([t for t, _ in frames], [p for _, p in frames], [at] * 9)
    assert [(r.machine_id, r.reading.temperature, r.reading.humidity) for r in readings] == [
        ("VM01", 4.5, None),
        ("VM02", None, 61.0),
        ("VM01", 5.5, None),
    ]
    assert [r.text for r in readings] == [frames[0][1], frames[7][1], frames[8][1]]
    assert sample(intake, "vendhub_mqtt_invalid_payloads_total", {"kind": "topic"}) == 4
    assert sample(intake, "vendhub_mqtt_invalid_payloads_total", {"kind": "telemetry"}) == 2


class FakeBroker:
    """Just enough of a broker on 127.0.0.1: CONNACK (with `refuse` as its code), SUBACK,
    PINGRESP; `send` publishes to the latest connection; `drop` closes it."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.connections: list[asyncio.StreamWriter] = []
        self.subscribed = asyncio.Event()
        self.filters: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        frames = FrameReader()

        def control(kind: int, flags: int, body: bytes) -> None:
            if kind == 1:  # CONNECT
                writer.write(bytes([CONNACK << 4, 2, 0, self.refuse]))
            elif kind == 8:  # SUBSCRIBE
                self.filters.append(body[4:-1])
                writer.write(bytes([SUBACK << 4, 3]) + body[:2] + b"\x00")
                self.subscribed.set()
            elif kind == 12:
                writer.write(bytes([PINGRESP << 4, 0]))

        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                frames.feed(data, control)

    def send(self, frames: list[tuple[bytes, bytes]]) -> None:
        self.connections[-1].write(b"".join(publish(t, p) for t, p in frames))

    def drop(self) -> None:
        self.connections[-1].close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.connections:
            writer.close()


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


@contextlib.asynccontextmanager
async def stream_on(
    broker: FakeBroker, on_frames: Callable[[Frames], bool]
) -> AsyncIterator[StreamSubscriber]:
    port = await broker.start()
    stream = StreamSubscriber(
        MqttConfig(host="127.0.0.1", port=port, client_id="t"), ["vm/+/telemetry"], on_frames
    )
    task = asyncio.create_task(stream.run())
    try:
        yield stream
    finally:
        await stream.stop()
        await asyncio.wait_for(task, 5)
        await broker.stop()


async def test_the_stream_subscribes_receives_and_reconnects_after_the_broker_drops_it() -> None:
    broker, got = FakeBroker(), []
    async with stream_on(broker, lambda frames: got.extend(frames) is None) as stream:
        assert await stream.wait_connected(5)
        assert broker.filters == [b"vm/+/telemetry"]
        broker.send([(b"vm/VM01/telemetry", b"1"), (b"vm/VM02/telemetry", b"2")])
        await eventually(lambda: len(got) == 2)
        broker.subscribed.clear()
        broker.drop()
        await broker.subscribed.wait()
        await eventually(lambda: stream.connects == 2)
        broker.send([(b"vm/VM01/telemetry", b"3")])
        await eventually(lambda: len(got) == 3)
    assert [p for _, p in got] == [b"1", b"2", b"3"]


async def test_a_refused_connection_is_retried_and_never_counts_as_connected() -> None:
    broker = FakeBroker(refuse=5)  # not authorised
    async with stream_on(broker, lambda frames: True) as stream:
        await eventually(lambda: len(broker.connections) >= 2)
        assert not stream.connected and stream.connects == 0


async def test_a_full_consumer_pauses_reading_until_resume() -> None:
    broker, got = FakeBroker(), []
    async with stream_on(broker, lambda frames: got.extend(frames) is not None) as stream:
        assert await stream.wait_connected(5)
        broker.send([(b"vm/VM01/telemetry", b"1")])
        await eventually(lambda: len(got) == 1)
        conn = stream._conn
        assert conn is not None and conn.paused and conn.transport is not None
        assert not conn.transport.is_reading()
        stream.resume()
        assert conn.transport.is_reading() and not conn.paused
        broker.send([(b"vm/VM01/telemetry", b"2")])
        await eventually(lambda: len(got) == 2)
