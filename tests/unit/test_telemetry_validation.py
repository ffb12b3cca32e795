"""parse_telemetry's check by hand against the pydantic path it replaced, as a reference.

The reference below is the telemetry model and parse path as they were before the check by
hand, kept verbatim but for the models' names (pydantic puts them in some messages; these are
the names the models have now). Every payload of the corpus, and every one hypothesis makes,
must be accepted by both with the same values (and types), or refused by both with the same
message.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vendhub.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    InvalidPayload,
    SlotLevel,
    SlotReading,
    Telemetry,
    _check_clean,
    _no_constant,
    _quick_telemetry,
    _summarise,
    decode_object,
    device_time,
    parse_telemetry,
)

# --- the reference: the model and path as they were ---------------------------------------


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SlotReadingModel(_Inbound):
    id: int = Field(ge=1, le=1000)
    level: SlotLevel


class TelemetryModel(_Inbound):
    ts: int | None = None
    temperature: float | None = Field(default=None, ge=-60, le=120, allow_inf_nan=False)
    humidity: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    rssi: int | None = Field(default=None, ge=-150, le=20)
    door: str | None = Field(default=None, max_length=32)
    uptime: int | None = Field(default=None, ge=0, le=20 * 365 * 86_400)
    free_heap: int | None = Field(default=None, alias="freeHeap", ge=0, le=2**32)
    slots: list[SlotReadingModel] = Field(default_factory=list, max_length=200)

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> TelemetryModel:
        data = dict(raw)
        if data.get("temperature") is None:
            for alias in ("temp", "value"):
                if data.get(alias) is not None:
                    data["temperature"] = data[alias]
                    break
        for alias in ("free_heap", "freeMemory", "free_memory"):
            if data.get("freeHeap") is None and data.get(alias) is not None:
                data["freeHeap"] = data[alias]
        if data.get("uptime") is None and data.get("uptime_s") is not None:
            data["uptime"] = data["uptime_s"]
        data["ts"] = device_time(data.get("ts"), data.get("timestamp"))
        return cls.model_validate(data)


_OLD_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def old_decode_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = _OLD_DECODER.decode(payload.decode("utf-8"))
    except InvalidPayload:
        raise
    except (ValueError, RecursionError) as exc:  # the one change since: any ValueError
        raise InvalidPayload(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload("payload is not a JSON object")
    _check_clean(data, 0)
    return data


def old_parse_telemetry(payload: bytes) -> tuple[TelemetryModel, dict[str, Any]]:
    raw = old_decode_object(payload)
    try:
        return TelemetryModel.from_raw(raw), raw
    except ValidationError as exc:
        raise InvalidPayload(_summarise(exc)) from None


# --- the comparison -------------------------------------------------------------------------

FIELDS = ("ts", "temperature", "humidity", "rssi", "door", "uptime", "free_heap")


def _typed(value: Any) -> tuple[str, str]:
    # 5 == 5.0 and 0.0 == -0.0, but a column stores them differently.
    return (type(value).__name__, repr(value))


def old_outcome(payload: bytes) -> tuple[str, Any]:
    try:
        model, raw = old_parse_telemetry(payload)
    except InvalidPayload as exc:
        return ("invalid", str(exc))
    values = [_typed(getattr(model, name)) for name in FIELDS]
    slots = [(_typed(s.id), s.level) for s in model.slots]
    return ("ok", (values, slots, raw))


def new_outcome(payload: bytes) -> tuple[str, Any]:
    try:
        reading, raw = parse_telemetry(payload)
    except InvalidPayload as exc:
        return ("invalid", str(exc))
    assert isinstance(reading, Telemetry)
    values = [_typed(getattr(reading, name)) for name in FIELDS]
    slots = [(_typed(s.id), s.level) for s in reading.slots]
    return ("ok", (values, slots, raw))


def assert_same(payload: bytes) -> str:
    old, new = old_outcome(payload), new_outcome(payload)
    assert new == old, payload[:300]
    return old[0]


def body(fields: dict[str, Any] | None = None, **more: Any) -> bytes:
    return json.dumps({**(fields or {}), **more}).encode()


# --- the corpus -----------------------------------------------------------------------------

# JSON values of every kind, at and beyond every field's bounds.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    20,
    21,
    -60,
    -61,
    -150,
    -151,
    100,
    101,
    120,
    121,
    1000,
    1001,
    20 * 365 * 86_400,
    20 * 365 * 86_400 + 1,
    2**32,
    2**32 + 1,
    2**63,
    -(2**63) - 1,
    10**30,
    0.0,
    -0.0,
    4.5,
    -63.0,
    -63.5,
    99.99999999999999,
    100.00000000000001,
    -60.00000000000001,
    120.00000000000001,
    1e-300,
    5e-324,
    1e30,
    1.7976931348623157e308,
    "",
    "4.5",
    " 4.5 ",
    "-63",
    "1_0",
    "0x10",
    "1e2",
    "nan",
    "inf",
    "-Infinity",
    "abc",
    "closed",
    "x" * 32,
    "x" * 33,
    "é" * 32,
    "é" * 33,
    "\U0001f600" * 32,
    "\ud800",
    "a\u0000b",
    "LOW",
    [],
    [1],
    [None],
    {},
    {"a": 1},
    {"id": 1, "level": "LOW"},
]

KEYS = (
    "ts",
    "timestamp",
    "temperature",
    "temp",
    "value",
    "humidity",
    "rssi",
    "door",
    "uptime",
    "uptime_s",
    "freeHeap",
    "free_heap",
    "freeMemory",
    "free_memory",
    "slots",
    "extra",
)

SLOT_ITEMS: list[Any] = [
    {"id": 1, "level": "LOW"},
    {"id": 1000, "level": "FULL"},
    {"id": 0, "level": "LOW"},
    {"id": 1001, "level": "LOW"},
    {"id": True, "level": "LOW"},
    {"id": 1.0, "level": "LOW"},
    {"id": 1.5, "level": "LOW"},
    {"id": "1", "level": "LOW"},
    {"id": None, "level": "LOW"},
    {"id": 1, "level": "low"},
    {"id": 1, "level": "HALF"},
    {"id": 1, "level": None},
    {"id": 1, "level": 1},
    {"id": 1, "level": ["LOW"]},
    {"id": 1},
    {"level": "LOW"},
    {"id": 1, "level": "LOW", "count": 3},
    {"id": 1, "level": "LOW", "note": "a\u0000b"},
    {"id": 1, "level": "LOW", "x": {"y": [1.5]}},
    {"ID": 1, "LEVEL": "LOW"},
    [1, "LOW"],
    None,
    "LOW",
    1,
]

RAW_PAYLOADS: list[bytes] = [
    b"",
    b"{",
    b"null",
    b"[]",
    b"[1]",
    b'"x"',
    b"1",
    b"\xff",
    b"{}",
    b"\xef\xbb\xbf{}",  # a BOM
    b" {}",
    b"{} ",
    b"\t{}\r\n",
    b"\x0c{}",
    b"{}\x0c",
    b"{} {}",
    b"{}x",
    b"{}]",
    b" ",
    b"  {",
    b"{,}",
    b'{"a":1,}',
    b"{'a':1}",
    b'{"a" 1}',
    b'{"a":01}',
    b'{"a":"\x01"}',  # a control character in a string (strict)
    b'{"a":"\\x"}',
    b'{"temperature":4.5}\n',
    b'\n{"temperature":4.5}',
    b'{"temperature":4.5} {"temperature":5}',
    b'{"temperature":4.5}{',
    b" NaN",
    b"NaN",
    b'{"a":NaN} x',
    b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}",  # RecursionError
    b'{"temperature":NaN}',
    b'{"temperature":Infinity}',
    b'{"temperature":-Infinity}',
    b'{"temperature":1e400}',
    b'{"humidity":-1e400}',
    b'{"x":1e400}',
    b'{"x":-1e400,"temperature":4.5}',
    b'{"x":"a\\u0000b","temperature":4.5}',
    b'{"extra":NaN}',
    b'{"extra":[1.5, NaN]}',
    b'{"extra":{"a":{"b":1e400}}}',
    b'{"temperature":4.5,"extra":{"note":"a\\u0000b"}}',
    b'{"extra":{"note":"a\\u0000b"},"temperature":NaN}',
    b'{"temperature":NaN,"extra":{"note":"a\\u0000b"}}',
    b'{"ke\\u0000y":1}',
    b'{"temperature":4.5,"ke\\u0000y":1}',
    b'{"door":"clo\\u0000sed"}',
    b'{"door":"\\ud800"}',
    b'{"slots":[{"id":1,"level":"LOW"}],"slots":[{"id":2,"level":"HIGH"}]}',
    b'{"temperature":500,"temperature":5}',
    b'{"rssi":1' + b"0" * 400 + b"}",
    b'{"rssi":' + b"1" * 5000 + b"}",
    b'{"temperature":4.5e1}',
    b'{"temperature":-6e1}',
    b'{"temperature":1.2E2}',
    b'{"ts":1795766400.9,"temperature":4.5}',
    b'{"ts":1795766400,"ts":1,"temperature":4.5}',
    b'{"timestamp":"2026-11-27T08:00:00Z","temperature":4.5}',
    b'{"timestamp":"2026-11-27T08:00:00","temperature":4.5}',
    b"{" + b'"a":[' * 15 + b"1" + b"]" * 15 + b"}",
    b"{" + b'"a":[' * 16 + b"1" + b"]" * 16 + b"}",
    b"{" + b'"a":[' * 17 + b"1" + b"]" * 17 + b"}",
    b'{"slots":' + b"[" * 20 + b"]" * 20 + b"}",
    b'{"slots":[' + b'{"a":' * 17 + b"1" + b"}" * 17 + b"]}",
    b'{"temperature":4.5,"pad":"' + b"x" * (MAX_PAYLOAD_BYTES - 28) + b'"}',
    b'{"temperature":4.5,"pad":"' + b"x" * (MAX_PAYLOAD_BYTES - 27) + b'"}',
    # What devices send: the bench, the simulator, the reference firmware, the seed's scripts.
    b'{"temperature": 4.5, "humidity": 61.2, "rssi": -60, "door": "closed"}',
    b'{"ts":1795766400,"temperature":4.6,"humidity":58.3,"rssi":-71,"door":"closed",'
    b'"slots":[{"id":1,"level":"FULL"},{"id":2,"level":"LOW"},{"id":3,"level":"EMPTY"}]}',
    b'{"uptimeS":3600,"freeMem":120000,"door":"closed","ts":1795766400,"temperature":4.5,'
    b'"rssi":-63}',
    b'{"temp":4.5,"timestamp":"2026-11-27T08:00:00Z"}',
    b'{"value":4,"machine_id":"VM01"}',
]


def corpus() -> list[bytes]:
    payloads = list(RAW_PAYLOADS)
    for key, value in itertools.product(KEYS, VALUES):
        payloads.append(body({key: value}))
        payloads.append(body({"temperature": 4.5, key: value}))
        payloads.append(body({key: value, "humidity": 50}))
    # Aliases against each other: which one counts, and whether the others are looked at.
    groups = (
        ("temperature", "temp", "value"),
        ("freeHeap", "free_heap", "freeMemory", "free_memory"),
        ("uptime", "uptime_s"),
    )
    alias_values: list[Any] = [None, 7, -5, "8", True, [], 2.5]
    for group in groups:
        for values in itertools.product([*alias_values, "absent"], repeat=len(group)):
            payloads.append(
                body({k: v for k, v in zip(group, values, strict=True) if v != "absent"})
            )
    for first, second in itertools.product(SLOT_ITEMS, repeat=2):
        payloads.append(body(slots=[first, second]))
    for count in (0, 1, 199, 200, 201):
        payloads.append(body(slots=[{"id": 1, "level": "LOW"}] * count))
    payloads.append(body(slots=[{"id": n, "level": "HIGH"} for n in range(1, 201)]))
    for size in (199, 200, 201):
        payloads.append(body(slots=[None] * size))
    for slots in ({}, {"id": 1, "level": "LOW"}, "[]", 1, None, True):
        payloads.append(body(slots=slots))
    return payloads


CORPUS = corpus()


def test_the_corpus_gets_the_same_decisions_values_and_messages_as_the_old_path() -> None:
    decisions = [assert_same(payload) for payload in CORPUS]
    # A corpus that tries both sides of every rule.
    assert decisions.count("ok") > 500 and decisions.count("invalid") > 500


def test_what_devices_send_is_checked_by_hand_not_by_the_model() -> None:
    shapes = [
        {"temperature": 4.5, "humidity": 61.2, "rssi": -60, "door": "closed"},
        {"ts": 1795766400, "temperature": 4.6, "slots": [{"id": 1, "level": "FULL"}]},
        {"uptimeS": 3600, "freeMem": 120000, "door": "open", "ts": 1795766400, "rssi": -63},
        {"temp": 4, "humidity": 55, "timestamp": "2026-11-27T08:00:00Z"},
        {"freeMemory": 1024, "uptime_s": 9, "extra": {"nested": ["fine", 1.5]}},
        {},
    ]
    for shape in shapes:
        payload = json.dumps(shape).encode()
        assert _quick_telemetry(decode_object(payload)) is not None, shape
        assert assert_same(payload) == "ok"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"temperature":"4.5"}',  # lax: a number as a string is read
        b'{"rssi":true}',  # lax: a bool is an integer
        b'{"rssi":-63.0}',  # lax: a float with no fraction is an integer
        b'{"door":"\xc3\xa9"}',
        b'{"slots":[{"id":1,"level":"LOW","count":3}]}',
    ],
)
def test_other_valid_shapes_are_left_to_the_model(payload: bytes) -> None:
    assert _quick_telemetry(decode_object(payload)) is None
    assert assert_same(payload) == "ok"


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([-151, -150, -61, -60, 0, 1, 20, 21, 100, 101, 120, 121, 1000, 2**32])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-200, max_value=200)
    | st.text(max_size=40)
    | st.sampled_from(["LOW", "FULL", "closed", "4.5", "-63", "1e2", "x" * 33])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["id", "level", "x"]) | st.text(max_size=5), inner)
    ),
    max_leaves=12,
)
SLOTS = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.integers(min_value=-2, max_value=1002) | JSON_SCALARS,
            "level": st.sampled_from([level.value for level in SlotLevel]) | JSON_SCALARS,
        }
    )
    | JSON_VALUES,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), JSON_VALUES), SLOTS)
def test_generated_readings_get_the_same_outcome_as_the_old_path(
    fields: dict[str, Any], slots: list[Any]
) -> None:
    assert_same(json.dumps(fields).encode())
    assert_same(json.dumps({**fields, "slots": slots}).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_get_the_same_outcome_as_the_old_path(data: bytes) -> None:
    assert_same(data)


def test_a_reading_from_raw_is_the_models_and_invalid_raises_its_error() -> None:
    raw = {"temp": 4, "freeMemory": 8, "slots": [{"id": 2, "level": "LOW"}]}
    assert Telemetry.from_raw(raw) == Telemetry(
        temperature=4.0, free_heap=8, slots=(SlotReading(2, SlotLevel.LOW),)
    )
    with pytest.raises(ValidationError):
        Telemetry.from_raw({"humidity": 101})
