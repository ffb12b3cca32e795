"""Message models for every payload on the wire, and their strict-but-forgiving parsers."""

from __future__ import annotations

import json
import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

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


class SlotReading(_Inbound):
    id: int = Field(ge=1, le=1000)
    level: SlotLevel


class Telemetry(_Inbound):
    """One reading; every number finite and physically plausible, or the reading is invalid."""

    ts: int | None = None  # device time, Unix seconds (from `ts` or ISO 8601 `timestamp`)
    temperature: float | None = Field(default=None, ge=-60, le=120, allow_inf_nan=False)
    humidity: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    rssi: int | None = Field(default=None, ge=-150, le=20)
    door: str | None = Field(default=None, max_length=32)
    uptime: int | None = Field(default=None, ge=0, le=20 * 365 * 86_400)  # seconds
    free_heap: int | None = Field(default=None, alias="freeHeap", ge=0, le=2**32)  # bytes
    slots: list[SlotReading] = Field(default_factory=list, max_length=200)

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Telemetry:
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
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = _DECODER.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidPayload(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayload("payload is not a JSON object")
    _check_clean(data, 0)
    return data


def _no_constant(name: str) -> Any:
    raise InvalidPayload(f"{name} is not a number")


# One decoder for every payload: json.loads with an option builds a new one per call (~5 µs).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


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
    raw = decode_object(payload)
    try:
        return Telemetry.from_raw(raw), raw
    except ValidationError as exc:
        raise InvalidPayload(_summarise(exc)) from None


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
