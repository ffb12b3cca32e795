"""The wire contract: topics, payload limits, message shapes (protocol.md)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vendhub.protocol.messages import (
    DEVICE_BUFFER_BYTES,
    MAX_PAYLOAD_BYTES,
    AckCommand,
    DispenseCommand,
    InvalidPayload,
    MachineConfig,
    SlotConfig,
    SyncCommand,
    parse_command,
    parse_result,
    parse_status,
    parse_telemetry,
)
from vendhub.protocol.topics import InvalidTopic, TopicKind, fleet_filter, parse_topic, topic


def test_dispense_command_keeps_the_seed_fields_and_fits_the_device_buffer() -> None:
    command = DispenseCommand(
        command_id="01JD3Q8W7Z0000000000000000",
        order_id="ORD-20261127-8F2A1C3D",
        slot=12,
        timeout_ms=60650,
        expires_at=1795745000,
    )
    body = json.loads(command.to_bytes())
    assert body == {
        "cmd": "dispense",
        "commandId": "01JD3Q8W7Z0000000000000000",
        "orderId": "ORD-20261127-8F2A1C3D",
        "slot": 12,
        "timeoutMs": 60650,
        "expiresAt": 1795745000,
    }
    assert len(command.to_bytes()) < DEVICE_BUFFER_BYTES
    # Compact on the wire: every byte counts in the device's 256-byte buffer.
    assert command.to_bytes() == (
        b'{"cmd":"dispense","commandId":"01JD3Q8W7Z0000000000000000",'
        b'"orderId":"ORD-20261127-8F2A1C3D","slot":12,"timeoutMs":60650,"expiresAt":1795745000}'
    )


def test_ack_and_sync_commands_have_the_documented_shape() -> None:
    assert json.loads(AckCommand(command_id="C1").to_bytes()) == {"cmd": "ack", "commandId": "C1"}
    assert json.loads(SyncCommand().to_bytes()) == {"cmd": "sync"}


def test_config_for_six_slots_fits_the_device_buffer() -> None:
    config = MachineConfig(
        version=7,
        machine_id="VM01",
        telemetry_interval_s=60,
        slots=[SlotConfig(slot=n, motor_ms=1500) for n in range(1, 7)],
    )
    assert len(config.to_bytes()) < DEVICE_BUFFER_BYTES
    assert parse_config_roundtrip(config) == config
    assert config.to_bytes().startswith(
        b'{"version":7,"machineId":"VM01","slots":[{"slot":1,"motorMs":1500},'
    )


def parse_config_roundtrip(config: MachineConfig) -> MachineConfig:
    from vendhub.protocol.messages import parse_config

    return parse_config(config.to_bytes())


def test_commands_parse_back_for_devices() -> None:
    command = DispenseCommand(command_id="C", order_id="O", slot=1, timeout_ms=2150, expires_at=1)
    assert parse_command(command.to_bytes()) == command
    assert isinstance(parse_command(b'{"cmd":"sync"}'), SyncCommand)
    with pytest.raises(InvalidPayload):
        parse_command(b'{"cmd":"selfdestruct"}')


def test_seed_result_without_command_id_is_accepted() -> None:
    result = parse_result(
        b'{"orderId":"ORD-1","slot":1,"success":true,"dropDetected":true,"durationMs":1850}'
    )
    assert result.command_id is None and result.dropped


@pytest.mark.parametrize(
    ("success", "drop", "dropped"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_a_unit_counts_only_when_success_and_drop_detected(
    success: bool, drop: bool, dropped: bool
) -> None:
    payload = json.dumps({"orderId": "O", "slot": 1, "success": success, "dropDetected": drop})
    assert parse_result(payload.encode()).dropped is dropped


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    result = parse_result(
        b'{"orderId":"O","slot":1,"success":true,"dropDetected":true,"firmwareExtra":{"x":1}}'
    )
    assert result.order_id == "O"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1,2,3]",
        b'"a string"',
        b'{"orderId":"O","slot":"1","success":true}',  # wrong type: no coercion
        b'{"orderId":"O","slot":1,"success":"yes"}',
        b'{"slot":1,"success":true}',  # missing orderId
        b'{"orderId":"O","slot":0,"success":true}',
        b'{"orderId":"O","slot":1,"success":true,"durationMs":-5}',
    ],
)
def test_malformed_results_raise_invalid_payload(payload: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_result(payload)


def test_an_integer_of_more_digits_than_int_reads_is_an_invalid_payload() -> None:
    digits = b"9" * 5000  # int() reads at most 4300 digits (a plain ValueError beyond)
    payloads = {
        parse_telemetry: b'{"rssi":' + digits + b"}",
        parse_result: b'{"orderId":"O","slot":' + digits + b',"success":true}',
        parse_status: b'{"status":"ONLINE","x":' + digits + b"}",
        parse_command: b'{"cmd":"dispense","slot":' + digits + b"}",
    }
    for parse, payload in payloads.items():
        with pytest.raises(InvalidPayload, match="not UTF-8 JSON: Exceeds the limit"):
            parse(payload)


def test_payloads_over_8_kib_are_refused_before_parsing() -> None:
    big = b'{"orderId":"O","slot":1,"success":true,"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(InvalidPayload, match="exceeds"):
        parse_result(big)


@pytest.mark.parametrize("field", ["temperature", "temp", "value"])
def test_temperature_is_read_from_any_of_the_seed_names(field: str) -> None:
    reading, raw = parse_telemetry(json.dumps({field: 4.5}).encode())
    assert reading.temperature == 4.5
    assert raw == {field: 4.5}


def test_telemetry_slot_levels_are_validated() -> None:
    reading, _ = parse_telemetry(b'{"slots":[{"id":1,"level":"LOW"}]}')
    assert reading.slots[0].level.value == "LOW"
    with pytest.raises(InvalidPayload):
        parse_telemetry(b'{"slots":[{"id":1,"level":"HALF"}]}')


def test_status_is_case_insensitive_and_carries_the_boot_id() -> None:
    status = parse_status(b'{"status":"online","fw":"1.2.0","bootId":"a1b2"}')
    assert status.status.value == "ONLINE" and status.boot_id == "a1b2"
    with pytest.raises(InvalidPayload):
        parse_status(b'{"status":"SLEEPING"}')


def test_topics_round_trip_for_every_kind() -> None:
    for kind in TopicKind:
        parsed = parse_topic("vm", topic("vm", "VM-01_a", kind))
        assert (parsed.machine_id, parsed.kind) == ("VM-01_a", kind)


def test_multi_level_prefixes_work() -> None:
    assert parse_topic("acme/jkt", "acme/jkt/VM01/status").machine_id == "VM01"


@pytest.mark.parametrize(
    "value",
    [
        "vm/VM01",
        "vm/VM 01/status",
        "vm/VM01/unknown",
        "other/VM01/status",
        "vm/+/status",
        "vm/" + "x" * 51 + "/status",
        "vm/VM01/status/extra",
        "vm//status",
    ],
)
def test_invalid_topics_are_rejected(value: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_topic("vm", value)


def test_fleet_filters_are_wildcards_optionally_shared() -> None:
    assert fleet_filter("vm", TopicKind.STATUS) == "vm/+/status"
    assert fleet_filter("vm", TopicKind.TELEMETRY, "vendhub") == "$share/vendhub/vm/+/telemetry"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parsers(data: bytes) -> None:
    for parse in (parse_result, parse_status, parse_telemetry, parse_command):
        with contextlib.suppress(InvalidPayload):
            parse(data)


GOOD_READING = {"temperature": 4.5, "humidity": 61.2, "rssi": -63, "door": "closed"}


@pytest.mark.parametrize(
    "payload",
    [
        b'{"rssi":1e20}',
        b'{"rssi":NaN}',
        b'{"temperature":NaN}',
        b'{"temperature":Infinity}',
        b'{"temperature":-Infinity}',
        b'{"temperature":1e400}',
        b'{"humidity":101}',
        b'{"humidity":-0.5}',
        b'{"temperature":-273.15}',
        b'{"temperature":500}',
        b'{"rssi":-63.5}',
        b'{"rssi":9223372036854775808}',
        b'{"uptime":-1}',
        b'{"uptime":1e30}',
        b'{"freeHeap":-4}',
        b'{"free_heap":99999999999}',
        b'{"door":"clo\\u0000sed"}',
        b'{"door":"' + b"x" * 33 + b'"}',
        b'{"extra":{"note":"a\\u0000b"}}',
        b'{"extra":[1.5, NaN]}',
        b'{"ke\\u0000y":1}',
        b"{" + b'"a":[' * 20 + b"1" + b"]" * 20 + b"}",
    ],
)
def test_a_reading_out_of_physical_range_or_unstorable_is_invalid(payload: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_telemetry(payload)


def test_plausible_readings_at_the_edges_of_the_ranges_are_kept() -> None:
    for body in (
        GOOD_READING,
        {"temperature": -60, "humidity": 0, "rssi": -150, "uptime": 0, "freeHeap": 0},
        {"temperature": 120, "humidity": 100, "rssi": 20, "free_memory": 4_294_967_296},
        {"uptime_s": 86_400, "extra": {"nested": ["fine", 1.5]}},
    ):
        _, raw = parse_telemetry(json.dumps(body).encode())
        assert raw == body
    assert parse_telemetry(b'{"freeMemory":1024,"uptime_s":9}')[0].free_heap == 1024
    assert parse_telemetry(b'{"freeMemory":1024,"uptime_s":9}')[0].uptime == 9


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"ts": 1_795_766_400}, 1_795_766_400),
        ({"ts": 1_795_766_400.9}, 1_795_766_400),
        ({"timestamp": "2026-11-27T08:00:00Z"}, 1_795_766_400),
        ({"timestamp": "2026-11-27T15:00:00+07:00"}, 1_795_766_400),
        ({"timestamp": "2026-11-27T08:00:00.250Z"}, 1_795_766_400),
        ({"ts": 1_795_766_400, "timestamp": "2030-01-01T00:00:00Z"}, 1_795_766_400),
        ({}, None),
        ({"ts": 42}, None),  # seconds since boot: a clock that never synced
        ({"ts": 1_795_766_400_000}, None),  # milliseconds
        ({"ts": -1}, None),
        ({"ts": True}, None),
        ({"ts": "1795766400"}, None),
        ({"timestamp": "2026-11-27T08:00:00"}, None),  # no zone: unusable
        ({"timestamp": "yesterday"}, None),
        ({"timestamp": "1970-01-01T00:00:00Z"}, None),
        ({"timestamp": "9999-12-31T23:59:59Z"}, None),
        ({"timestamp": 1_795_766_400}, None),
    ],
)
def test_device_time_comes_from_ts_or_an_iso_timestamp_and_absurd_values_are_ignored(
    body: dict[str, object], expected: int | None
) -> None:
    reading, _ = parse_telemetry(json.dumps({**body, "temperature": 4.5}).encode())
    assert reading.ts == expected
    assert reading.temperature == 4.5  # an unusable clock does not cost the reading


def test_nan_and_nul_are_refused_in_results_and_status_too() -> None:
    with pytest.raises(InvalidPayload):
        parse_status(b'{"status":"ONLINE","fw":"1\\u0000"}')
    with pytest.raises(InvalidPayload):
        parse_result(b'{"orderId":"O","slot":1,"success":true,"durationMs":NaN}')


def test_the_canonical_name_wins_over_an_alias_and_every_alias_is_read() -> None:
    both = b'{"temperature":5.0,"temp":9.0,"freeHeap":1,"free_heap":2,"uptime":3,"uptime_s":4}'
    reading, _ = parse_telemetry(both)
    assert (reading.temperature, reading.free_heap, reading.uptime) == (5.0, 1, 3)
    for alias in ("free_heap", "freeMemory", "free_memory"):
        reading, _ = parse_telemetry(json.dumps({alias: 2048}).encode())
        assert reading.free_heap == 2048, alias
    assert parse_telemetry(b'{"uptime_s":7}')[0].uptime == 7


def test_device_time_bounds_are_2000_inclusive_to_2100_exclusive() -> None:
    from vendhub.protocol.messages import DEVICE_TIME_MAX, DEVICE_TIME_MIN

    for ts, expected in (
        (DEVICE_TIME_MIN, DEVICE_TIME_MIN),
        (DEVICE_TIME_MIN - 1, None),
        (DEVICE_TIME_MAX - 1, DEVICE_TIME_MAX - 1),
        (DEVICE_TIME_MAX, None),
    ):
        assert parse_telemetry(json.dumps({"ts": ts}).encode())[0].ts == expected, ts


def _nested(depth: int, container: str) -> bytes:
    """A payload whose deepest value sits `depth` levels below the top object."""
    inner = "1"
    for _ in range(depth - 1):
        inner = f'{{"k":{inner}}}' if container == "dict" else f"[{inner}]"
    return f'{{"k":{inner}}}'.encode()


@pytest.mark.parametrize("container", ["dict", "list"])
def test_nesting_is_allowed_to_sixteen_levels_and_refused_beyond(container: str) -> None:
    parse_telemetry(_nested(16, container))
    with pytest.raises(InvalidPayload, match="nested deeper than 16"):
        parse_telemetry(_nested(17, container))


def test_a_payload_of_exactly_8_kib_is_read() -> None:
    head = b'{"temperature":4.5,"pad":"'
    payload = head + b"x" * (MAX_PAYLOAD_BYTES - len(head) - 2) + b'"}'
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert parse_telemetry(payload)[0].temperature == 4.5


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"temperature":1e400}', "a number is not finite"),
        (b'{"temperature":NaN}', "NaN is not a number"),
        (b'{"door":"a\\u0000"}', "a string contains NUL"),
        (b'{"k\\u0000":1}', "a key contains NUL"),
        (b'{"humidity":101}', "humidity"),
        (b'{"slots":[{"id":1,"level":"HALF"}]}', "slots.0.level"),
        (b"[1]", "payload is not a JSON object"),
        (b"\xff", "not UTF-8 JSON"),
    ],
)
def test_an_invalid_telemetry_payload_says_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        parse_telemetry(payload)


def test_invalid_results_commands_and_topics_say_what_is_wrong() -> None:
    with pytest.raises(InvalidPayload, match="slot"):
        parse_result(b'{"orderId":"O","slot":"1","success":true}')
    with pytest.raises(InvalidPayload, match="unknown cmd 'reboot'"):
        parse_command(b'{"cmd":"reboot"}')
    with pytest.raises(InvalidTopic, match="not under prefix"):
        parse_topic("vm", "other/VM01/status")
    with pytest.raises(InvalidTopic, match="invalid machine id in topic"):
        parse_topic("vm", "vm/VM 01/status")
    with pytest.raises(InvalidTopic, match="unknown topic kind"):
        parse_topic("vm", "vm/VM01/unknown")
    with pytest.raises(InvalidTopic, match="invalid machine id"):
        topic("vm", "VM 01", TopicKind.STATUS)


def test_status_and_error_enums_are_the_wire_strings_of_protocol_md() -> None:
    """Statuses are enums in the code; on the wire they stay the documented strings."""
    import json as _json

    from vendhub.protocol.messages import REFUSALS, PresenceStatus, ResultError
    from vendhub.sim.machine import OFFLINE_PAYLOAD

    assert [e.value for e in ResultError] == [
        "JAM",
        "MOTOR_TIMEOUT",
        "NO_DROP",
        "EXPIRED",
        "SLOT_DISABLED",
        "BUSY",
    ]
    assert set(REFUSALS) == {"EXPIRED", "SLOT_DISABLED", "BUSY"}
    assert [s.value for s in PresenceStatus] == ["ONLINE", "OFFLINE", "MAINTENANCE"]
    assert OFFLINE_PAYLOAD == b'{"status":"OFFLINE"}'  # the Last Will, byte for byte
    assert _json.dumps({"error": ResultError.BUSY}) == '{"error": "BUSY"}'
    assert {"x": 1} not in REFUSALS  # any JSON value can be tested (unhashable ones too)
