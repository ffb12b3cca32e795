"""Message models for every payload on the wire, and their strict-but-forgiving parsers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from math import isfinite
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# protocol.md: a payload larger than this is dropped unread.
MAX_PAYLOAD_BYTES = 8 * 1024
# PubSubClient's default packet buffer; commands to devices must fit in it.
DEVICE_BUFFER_BYTES = 256
# A device time outside these bounds (Unix seconds) is a clock that never synced, or garbage.
DEVICE_TIME_MIN = 946_684_800  # 2000-01-01T00:00:00Z
DEVICE_TIME_MAX = 4_102_444_800  # 2100-01-01T00:00:00Z
# Nesting deeper than this is no telemetry; it only costs us a recursion.
MAX_PAYLOAD_DEPTH = 16


class ResultError(StrEnum):
    """protocol.md: the `error` of a dispense result (the value is the wire string)."""

    JAM = "JAM"
    MOTOR_TIMEOUT = "MOTOR_TIMEOUT"
    NO_DROP = "NO_DROP"
    EXPIRED = "EXPIRED"  # refused: the command's expiresAt had passed
    SLOT_DISABLED = "SLOT_DISABLED"  # refused: the slot is disabled by config
    BUSY = "BUSY"  # refused: another dispense is in progress


# Errors with which a device refuses a command without running the motor. A tuple: `x in`
# compares with ==, so any JSON value (even an unhashable one) can be tested against it.
REFUSALS = (ResultError.BUSY, ResultError.EXPIRED, ResultError.SLOT_DISABLED)


class InvalidPayload(ValueError):
    """A payload that is not JSON, too large, or does not validate."""


class _Inbound(BaseModel):
    # Unknown fields are ignored so newer firmware keeps working with older backends.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        return json.dumps(
            self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":")
        ).encode()


class DispenseCommand(_Outbound):
    cmd: Literal["dispense"] = "dispense"
    command_id: str = Field(alias="commandId")
    order_id: str = Field(alias="orderId")
    slot: int
    timeout_ms: int = Field(alias="timeoutMs")
    expires_at: int = Field(alias="expiresAt")

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class AckCommand(_Outbound):
    cmd: Literal["ack"] = "ack"
    command_id: str = Field(alias="commandId")

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class SyncCommand(_Outbound):
    cmd: Literal["sync"] = "sync"


class SlotConfig(_Outbound):
    slot: int
    motor_ms: int = Field(alias="motorMs")
    enabled: bool = True

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class MachineConfig(_Outbound):
    """Retained config; `enabled: true` is left out (the default) to stay under 256 bytes."""

    version: int
    machine_id: str = Field(alias="machineId")
    slots: list[SlotConfig]
    telemetry_interval_s: int = Field(alias="telemetryIntervalS")

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        data = self.model_dump(by_alias=True)
        for slot in data["slots"]:
            if slot["enabled"]:
                del slot["enabled"]
        return json.dumps(data, separators=(",", ":")).encode()


class DispenseResult(_Inbound):
    command_id: str | None = Field(default=None, alias="commandId", max_length=64)
    order_id: str = Field(alias="orderId", min_length=1, max_length=64)
    slot: int = Field(ge=1, le=1000)
    success: bool
    drop_detected: bool = Field(default=False, alias="dropDetected")
    duration_ms: int | None = Field(default=None, alias="durationMs", ge=0, le=600_000)
    error: str | None = Field(default=None, max_length=64)

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True)

    @property
    def dropped(self) -> bool:
        """The seed's rule: a unit counts only when the motor ran and the sensor saw it fall."""
        return self.success and self.drop_detected


class SlotLevel(StrEnum):
    FULL = "FULL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    EMPTY = "EMPTY"


class SlotReadingModel(_Inbound):
    id: int = Field(ge=1, le=1000)
    level: SlotLevel


class TelemetryModel(_Inbound):
    """The rules of a reading: every number finite and physically plausible, or the reading is
    invalid. parse_telemetry checks the common shape by hand (_quick_telemetry); whatever that
    does not vouch for is decided here."""

    ts: int | None = None  # device time, Unix seconds (from `ts` or ISO 8601 `timestamp`)
    temperature: float | None = Field(default=None, ge=-60, le=120, allow_inf_nan=False)
    humidity: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    rssi: int | None = Field(default=None, ge=-150, le=20)
    door: str | None = Field(default=None, max_length=32)
    uptime: int | None = Field(default=None, ge=0, le=20 * 365 * 86_400)  # seconds
    free_heap: int | None = Field(default=None, alias="freeHeap", ge=0, le=2**32)  # bytes
    slots: list[SlotReadingModel] = Field(default_factory=list, max_length=200)

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> TelemetryModel:
        # The seed's devices name the temperature any of three ways.
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

    def reading(self) -> Telemetry:
        return Telemetry(
            self.ts,
            self.temperature,
            self.humidity,
            self.rssi,
            self.door,
            self.uptime,
            self.free_heap,
            tuple(SlotReading(s.id, s.level) for s in self.slots),
        )


class SlotReading(NamedTuple):
    id: int
    level: SlotLevel


class Telemetry(NamedTuple):
    """One validated reading (TelemetryModel's rules), as the intake keeps and stores it.

    A tuple, not a model: built for every message of a burst, it costs a fraction of a
    validated model (one object instead of a model, its dict and its set of fields)."""

    ts: int | None = None
    temperature: float | None = None
    humidity: float | None = None
    rssi: int | None = None
    door: str | None = None
    uptime: int | None = None
    free_heap: int | None = None
    slots: tuple[SlotReading, ...] = ()

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Telemetry:
        """Validated by TelemetryModel (pydantic's ValidationError when invalid)."""
        return TelemetryModel.from_raw(raw).reading()


def device_time(ts: Any, timestamp: Any) -> int | None:
    """Device time in Unix seconds from `ts` (seconds) or `timestamp` (ISO 8601, the seed's
    scripts); None when absent or absurd (an unsynced clock must not cost the reading)."""
    value: float | None = None
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        value = float(ts)
    elif isinstance(timestamp, str) and len(timestamp) <= 64:
        try:
            parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return None  # a local time of unknown zone is not a device time we can use
        value = parsed.timestamp()
    if value is None or not math.isfinite(value):
        return None
    if not DEVICE_TIME_MIN <= value < DEVICE_TIME_MAX:
        return None
    return int(value)


class PresenceStatus(StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    MAINTENANCE = "MAINTENANCE"


class StatusMessage(_Inbound):
    status: PresenceStatus
    fw: str | None = Field(default=None, max_length=64)
    rssi: int | None = None
    door: str | None = Field(default=None, max_length=32)
    boot_id: str | None = Field(default=None, alias="bootId", max_length=64)

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @field_validator("status", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def decode_object(payload: bytes) -> dict[str, Any]:
    """Bytes → JSON object, or InvalidPayload; the size cap is checked before parsing.

    NaN, ±Infinity (also as 1e400), NUL characters and deep nesting are refused anywhere in
    the payload: no database column or JSON type stores them."""
    data = _decode(payload)
    _check_clean(data, 0)
    return data


def _decode(payload: bytes) -> dict[str, Any]:
    """decode_object without the walk through every value (_check_clean)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
        # The scanner itself, as decode() calls it, without decode()'s two regex matches for
        # whitespace around the value (a tenth of a small payload's parse).
        try:
            data, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            # Whitespace around the value, something after it, or no value: decode() decides
            # (and says what is wrong, as ever).
            data = _DECODER.decode(text)
    except InvalidPayload:
        raise  # NaN or ±Infinity (_no_constant)
    except (ValueError, RecursionError) as exc:
        # Not UTF-8, not JSON, nested too deep for the scanner, or an integer of more digits
        # than int() reads (4300): a ValueError that is no JSONDecodeError.
        raise InvalidPayload(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload("payload is not a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise InvalidPayload(f"{name} is not a number")


# One decoder for every payload: json.loads with an option builds a new one per call (~5 µs).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
# What decode() calls between its whitespace matches (the C scanner; typeshed omits it).
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _check_clean(value: Any, depth: int) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise InvalidPayload(f"nested deeper than {MAX_PAYLOAD_DEPTH}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload("a number is not finite")
    elif isinstance(value, str):
        if "\x00" in value:
            raise InvalidPayload("a string contains NUL")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidPayload("a key contains NUL")
            _check_clean(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_clean(item, depth + 1)


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: dict[str, Any], *, strict: bool | None = None) -> M:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise InvalidPayload(_summarise(exc)) from None


def _summarise(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']} ({exc.error_count()} error(s))"


def parse_result(payload: bytes) -> DispenseResult:
    return _validate(DispenseResult, decode_object(payload))


def parse_status(payload: bytes) -> StatusMessage:
    return _validate(StatusMessage, decode_object(payload))


def parse_telemetry(payload: bytes) -> tuple[Telemetry, dict[str, Any]]:
    """A reading and the JSON object it came as, or InvalidPayload.

    The same decisions and values as decode_object + TelemetryModel.from_raw (the test runs
    both over a corpus), at a fraction of the cost for the shape devices send."""
    raw = _decode(payload)
    reading = _quick_telemetry(raw)
    if reading is not None:
        return reading, raw
    _check_clean(raw, 0)
    try:
        return TelemetryModel.from_raw(raw).reading(), raw
    except ValidationError as exc:
        raise InvalidPayload(_summarise(exc)) from None


_LEVELS = {level.value: level for level in SlotLevel}
_new_tuple = tuple.__new__
_UPTIME_MAX = 20 * 365 * 86_400
_FREE_HEAP_MAX = 2**32


def _quick_telemetry(raw: dict[str, Any]) -> Telemetry | None:
    """The reading, when `raw` is clean (_check_clean) and valid in the plainest way: every
    number a JSON number of the field's kind inside its range, `door` ASCII, `slots` a list of
    {"id", "level"} objects. None for anything else, valid or not: TelemetryModel decides
    (a number as a string, a bool, a float for an integer...) and says what is wrong."""
    slots: tuple[SlotReading, ...] = ()
    for key, value in raw.items():
        if "\x00" in key:
            return None
        kind = type(value)
        if kind is float:
            if not isfinite(value):
                return None
        elif kind is str:
            if "\x00" in value:
                return None
        elif kind is list or kind is dict:
            if key != "slots":
                # Unknown fields are ignored, once clean; an unclean one raises here just as
                # in decode_object (every value before it was clean).
                _check_clean(value, 1)
                continue
            if kind is dict or len(value) > 200:
                return None
            quick = _quick_slots(value)
            if quick is None:
                return None
            slots = quick
    get = raw.get
    if "slots" in raw and type(raw["slots"]) is not list:
        return None  # null, a number, a string: not a list
    temperature = get("temperature")
    if temperature is None:
        temperature = get("temp")
        if temperature is None:
            temperature = get("value")
    if temperature is not None:
        kind = type(temperature)
        if (kind is not float and kind is not int) or not -60 <= temperature <= 120:
            return None
        temperature = float(temperature)
    humidity = get("humidity")
    if humidity is not None:
        kind = type(humidity)
        if (kind is not float and kind is not int) or not 0 <= humidity <= 100:
            return None
        humidity = float(humidity)
    rssi = get("rssi")
    if rssi is not None and (type(rssi) is not int or not -150 <= rssi <= 20):
        return None
    door = get("door")
    if door is not None and (type(door) is not str or len(door) > 32 or not door.isascii()):
        return None
    uptime = get("uptime")
    if uptime is None:
        uptime = get("uptime_s")
    if uptime is not None and (type(uptime) is not int or not 0 <= uptime <= _UPTIME_MAX):
        return None
    free_heap = get("freeHeap")
    if free_heap is None:
        free_heap = get("free_heap")
        if free_heap is None:
            free_heap = get("freeMemory")
            if free_heap is None:
                free_heap = get("free_memory")
    if free_heap is not None and (
        type(free_heap) is not int or not 0 <= free_heap <= _FREE_HEAP_MAX
    ):
        return None
    ts = get("ts")
    if type(ts) is not int or not DEVICE_TIME_MIN <= ts < DEVICE_TIME_MAX:
        ts = device_time(ts, get("timestamp"))
    # tuple.__new__ skips the Python-level __new__ of a NamedTuple (a third of the cost).
    return _new_tuple(Telemetry, (ts, temperature, humidity, rssi, door, uptime, free_heap, slots))


def _quick_slots(items: list[Any]) -> tuple[SlotReading, ...] | None:
    """Slot readings of exactly {"id": int, "level": str} (clean by construction), or None."""
    slots = []
    for item in items:
        if type(item) is not dict or len(item) != 2:
            return None
        number = item.get("id")
        if type(number) is not int or not 1 <= number <= 1000:
            return None
        level = item.get("level")
        if type(level) is not str:
            return None
        known = _SLOT_READINGS.get(level)
        if known is None:
            return None
        slot = known.get(number)
        if slot is None:
            slot = known[number] = SlotReading(number, _LEVELS[level])
        slots.append(slot)
    return tuple(slots)


# Every (id, level) a reading can have, made once when first seen and then shared (at most
# 5 x 1000 tuples): a burst makes no object per slot, nor anything for the collector to visit.
_SLOT_READINGS: dict[str, dict[int, SlotReading]] = {level.value: {} for level in SlotLevel}


def parse_command(payload: bytes) -> DispenseCommand | AckCommand | SyncCommand:
    """Used by devices (the simulator): what the backend sent on `command`."""
    data = decode_object(payload)
    cmd = data.get("cmd")
    # Strict: a device must not vend "1" or true as slot 1 (protocol.md, malformed commands).
    if cmd == "dispense":
        return _validate(DispenseCommand, data, strict=True)
    if cmd == "ack":
        return _validate(AckCommand, data, strict=True)
    if cmd == "sync":
        return SyncCommand()
    raise InvalidPayload(f"unknown cmd {cmd!r}")


def parse_config(payload: bytes) -> MachineConfig:
    return _validate(MachineConfig, decode_object(payload))
