"""The simulated device's firmware logic: a pure state machine over a small flash store."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vendhub.protocol.messages import (
    AckCommand,
    DispenseCommand,
    InvalidPayload,
    MachineConfig,
    ResultError,
    SlotConfig,
    SlotLevel,
    SyncCommand,
    parse_command,
    parse_config,
)

logger = logging.getLogger(__name__)

# protocol.md, device obligation 1.
RESULT_MEMORY = 32
BACKOFF_CAP_S = 30.0
# protocol.md: timeoutMs is the motor time plus this margin (1500 → 2150).
MOTOR_MARGIN_MS = 650
MIN_MOTOR_MS = 200
FLASH_FORMAT = 1


def backoff_delay(attempt: int, scale: float = 1.0) -> float:
    """Seconds to wait after re-publish number `attempt` (0-based): 1, 2, 4, … capped at 30,
    times `scale` (the simulator's speed setting; 1.0 on real firmware)."""
    return min(2.0 ** min(attempt, 16), BACKOFF_CAP_S) * scale


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One remembered dispense outcome, exactly the fields of protocol.md's result."""

    command_id: str
    order_id: str
    slot: int
    success: bool
    drop_detected: bool
    duration_ms: int | None
    error: str | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "commandId": self.command_id,
            "orderId": self.order_id,
            "slot": self.slot,
            "success": self.success,
            "dropDetected": self.drop_detected,
            "durationMs": self.duration_ms,
            "error": self.error,
        }

    def to_payload(self) -> bytes:
        return json.dumps(self.to_wire(), separators=(",", ":")).encode()


class FlashStore:
    """The device's non-volatile memory: one JSON file per machine, or a value in memory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._memory: str | None = None
        self.writes = 0

    @classmethod
    def for_machine(cls, state_dir: Path | None, machine_id: str) -> FlashStore:
        if state_dir is None:
            return cls(None)
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(state_dir / f"{machine_id}.json")

    def load(self) -> dict[str, Any] | None:
        text = self._memory
        if self.path is not None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            # Cannot happen with the atomic write below unless the file was edited by hand.
            logger.warning("flash %s is corrupt; starting empty", self.path)
            return None
        return data if isinstance(data, dict) else None

    def save(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, separators=(",", ":"))
        self.writes += 1
        if self.path is None:
            self._memory = text
            return
        # Temp file + rename: a crash leaves either the old or the new state, never half.
        # No fsync: the simulator models a device reboot or a killed process, not a host crash.
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)


class Reason(StrEnum):
    DUPLICATE = "duplicate"  # commandId already remembered: re-publish, never dispense again
    REFUSED = "refused"  # fresh result without dispensing: EXPIRED, BUSY, SLOT_DISABLED
    SYNC = "sync"  # every unacknowledged result, on request


@dataclass(frozen=True, slots=True)
class StartDispense:
    """Run the motor for `motor_ms`, then call `DeviceLogic.finish_dispense`."""

    command: DispenseCommand
    motor_ms: int


@dataclass(frozen=True, slots=True)
class Publish:
    results: tuple[StoredResult, ...]
    reason: Reason


@dataclass(frozen=True, slots=True)
class Acked:
    command_id: str
    known: bool


@dataclass(frozen=True, slots=True)
class InFlight:
    """The command is the one the motor is running: its result comes when the motor stops."""

    command_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


Decision = StartDispense | Publish | Acked | InFlight | Ignored


@dataclass(slots=True)
class _Retry:
    due: float
    attempt: int


class DeviceLogic:
    """What the firmware decides for each command; I/O-free except the flash store."""

    def __init__(
        self,
        machine_id: str,
        store: FlashStore | None = None,
        *,
        now: float,
        clock_skew_s: float = 0.0,
        has_clock: bool = True,
        stock_per_slot: int | None = None,
        backoff_scale: float = 1.0,
    ) -> None:
        self.machine_id = machine_id
        self.backoff_scale = backoff_scale
        self.store = store if store is not None else FlashStore(None)
        self.clock_skew_s = clock_skew_s
        self.has_clock = has_clock
        self._results: OrderedDict[str, StoredResult] = OrderedDict()
        self._acked: set[str] = set()
        self._retry: dict[str, _Retry] = {}
        self._in_progress: DispenseCommand | None = None
        self.config: MachineConfig | None = None
        self._capacity = stock_per_slot
        self._stock: dict[int, int] = {}
        self.recovered: StoredResult | None = None
        self._load(now)

    # --- boot -----------------------------------------------------------------------------

    def _load(self, now: float) -> None:
        data = self.store.load()
        if data is None:
            return
        for item in data.get("results", []):
            acked = bool(item.pop("acked", False))
            result = StoredResult(**item)
            self._results[result.command_id] = result
            if not acked:
                self._retry[result.command_id] = _Retry(due=now, attempt=0)
            else:
                self._acked.add(result.command_id)
        if data.get("config") is not None:
            self.config = MachineConfig.model_validate(data["config"])
        self._capacity = data.get("capacity", self._capacity)
        self._stock = {int(k): int(v) for k, v in data.get("stock", {}).items()}
        if data.get("inProgress") is not None:
            self._recover_interrupted(DispenseCommand.model_validate(data["inProgress"]), now)

    def _recover_interrupted(self, command: DispenseCommand, now: float) -> None:
        # Power was lost while the motor ran. The drop sensor never confirmed a unit, so by the
        # seed's rule (success && dropDetected) the unit is failed: the customer is refunded and
        # may keep a unit that did fall. Claiming success instead could charge for nothing.
        self._in_progress = None
        self.recovered = self._record(command, False, False, None, "MOTOR_TIMEOUT", now)
        logger.info("%s: dispense %s interrupted by reboot", self.machine_id, command.command_id)

    def _save(self) -> None:
        results = [{**asdict(r), "acked": cid in self._acked} for cid, r in self._results.items()]
        in_progress = self._in_progress
        self.store.save(
            {
                "format": FLASH_FORMAT,
                "results": results,
                "inProgress": in_progress.model_dump(by_alias=True) if in_progress else None,
                "config": self.config.model_dump(by_alias=True) if self.config else None,
                "capacity": self._capacity,
                "stock": {str(k): v for k, v in self._stock.items()},
            }
        )

    # --- commands -------------------------------------------------------------------------

    def handle_command(self, payload: bytes, now: float) -> Decision:
        """Decide what one `command` message means; `now` is true Unix time (skew added here)."""
        try:
            command = parse_command(payload)
        except InvalidPayload as exc:
            return Ignored(str(exc))
        if isinstance(command, AckCommand):
            return self.ack(command.command_id)
        if isinstance(command, SyncCommand):
            return Publish(self.unacked_results(), Reason.SYNC)
        return self._dispense(command, now)

    def _dispense(self, command: DispenseCommand, now: float) -> Decision:
        remembered = self._results.get(command.command_id)
        if remembered is not None:
            return Publish((remembered,), Reason.DUPLICATE)
        if self._in_progress is not None and self._in_progress.command_id == command.command_id:
            # Answering BUSY here would remember a failure for a unit that is being dispensed.
            return InFlight(command.command_id)
        error = self._refusal(command, now)
        if error is not None:
            result = self._record(command, False, False, 0, error, now)
            return Publish((result,), Reason.REFUSED)
        # Written before the motor starts so a reboot mid-dispense is detected at boot.
        self._in_progress = command
        self._save()
        return StartDispense(command, self.motor_ms(command))

    def _refusal(self, command: DispenseCommand, now: float) -> str | None:
        if self.has_clock and self.device_time(now) > command.expires_at:
            return ResultError.EXPIRED
        if self._in_progress is not None:
            return ResultError.BUSY
        if not self.slot_enabled(command.slot):
            return ResultError.SLOT_DISABLED
        return None

    def finish_dispense(
        self,
        command_id: str,
        *,
        success: bool,
        drop_detected: bool,
        duration_ms: int,
        error: str | None,
        now: float,
    ) -> StoredResult:
        """The motor stopped: remember the outcome (flash first), return what to publish."""
        command = self._in_progress
        if command is None or command.command_id != command_id:
            raise ValueError(f"no dispense {command_id!r} in progress")
        remaining = self.stock(command.slot)
        if success and drop_detected and remaining == 0:
            # The motor turned an empty spiral: nothing can fall.
            drop_detected, error = False, "NO_DROP"
        if success and drop_detected and remaining is not None:
            self._stock[command.slot] = remaining - 1
        self._in_progress = None
        return self._record(command, success, drop_detected, duration_ms, error, now)

    def _record(
        self,
        command: DispenseCommand,
        success: bool,
        drop_detected: bool,
        duration_ms: int | None,
        error: str | None,
        now: float,
    ) -> StoredResult:
        result = StoredResult(
            command.command_id,
            command.order_id,
            command.slot,
            success,
            drop_detected,
            duration_ms,
            error,
        )
        self._results[result.command_id] = result
        while len(self._results) > RESULT_MEMORY:
            evicted, _ = self._results.popitem(last=False)
            self._acked.discard(evicted)
            self._retry.pop(evicted, None)
        self._retry[result.command_id] = _Retry(
            due=now + backoff_delay(0, self.backoff_scale), attempt=1
        )
        self._save()
        return result

    def ack(self, command_id: str) -> Acked:
        if command_id not in self._results:
            return Acked(command_id, known=False)
        if command_id not in self._acked:
            self._acked.add(command_id)
            self._retry.pop(command_id, None)
            self._save()
        return Acked(command_id, known=True)

    # --- re-publishing --------------------------------------------------------------------

    def unacked_results(self) -> tuple[StoredResult, ...]:
        return tuple(self._results[cid] for cid in self._retry)

    def due_results(self, now: float) -> list[StoredResult]:
        """Unacked results whose backoff has elapsed; each is rescheduled with the next delay."""
        due = []
        for cid, retry in self._retry.items():
            if retry.due <= now:
                due.append(self._results[cid])
                retry.due = now + backoff_delay(retry.attempt, self.backoff_scale)
                retry.attempt += 1
        return due

    def next_due(self) -> float | None:
        return min((r.due for r in self._retry.values()), default=None)

    def remembered(self, command_id: str) -> StoredResult | None:
        return self._results.get(command_id)

    @property
    def remembered_ids(self) -> list[str]:
        return list(self._results)

    @property
    def busy(self) -> bool:
        return self._in_progress is not None

    # --- clock, config, slots -------------------------------------------------------------

    def device_time(self, now: float) -> float:
        return now + self.clock_skew_s

    def handle_config(self, payload: bytes) -> bool:
        """Apply a retained config only if its version is newer than the one in flash."""
        try:
            config = parse_config(payload)
        except InvalidPayload as exc:
            logger.warning("%s: config dropped: %s", self.machine_id, exc)
            return False
        if config.machine_id != self.machine_id:
            logger.warning("%s: config for %s dropped", self.machine_id, config.machine_id)
            return False
        if self.config is not None and config.version <= self.config.version:
            return False
        self.config = config
        self._save()
        return True

    def motor_ms(self, command: DispenseCommand) -> int:
        """The slot's configured motor time, else timeoutMs minus the margin; within limits."""
        planned = command.timeout_ms - MOTOR_MARGIN_MS
        slot = self._slot_config(command.slot)
        if slot is not None:
            planned = slot.motor_ms
        return min(max(planned, MIN_MOTOR_MS), max(command.timeout_ms, MIN_MOTOR_MS))

    def _slot_config(self, slot: int) -> SlotConfig | None:
        if self.config is None:
            return None
        return next((s for s in self.config.slots if s.slot == slot), None)

    def slot_enabled(self, slot: int) -> bool:
        config = self._slot_config(slot)
        return config is None or config.enabled

    def telemetry_interval_s(self, default: float) -> float:
        return float(self.config.telemetry_interval_s) if self.config else default

    def stock(self, slot: int) -> int | None:
        """Units left in the slot, or None when the device models an endless supply."""
        if self._capacity is None:
            return None
        return self._stock.get(slot, self._capacity)

    def slot_levels(self, default_slots: int) -> list[tuple[int, SlotLevel]]:
        ids = [s.slot for s in self.config.slots] if self.config else range(1, default_slots + 1)
        return [(slot, self._level(slot)) for slot in ids]

    def _level(self, slot: int) -> SlotLevel:
        left = self.stock(slot)
        if left is None or self._capacity is None or self._capacity <= 0:
            return SlotLevel.FULL
        fraction = left / self._capacity
        if left <= 0:
            return SlotLevel.EMPTY
        if fraction >= 0.8:
            return SlotLevel.FULL
        if fraction >= 0.6:
            return SlotLevel.HIGH
        return SlotLevel.MEDIUM if fraction >= 0.3 else SlotLevel.LOW
