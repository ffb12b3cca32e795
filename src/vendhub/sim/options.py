"""Settings for simulated machines: broker, pacing, state, and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Faults that are probabilities; the other Faults fields are durations and offsets.
FAULT_RATES = (
    "jam",
    "no_drop",
    "result_lost",
    "result_duplicated",
    "command_duplicated",
    "reboot_mid_dispense",
    "offline",
    "slow_motor",
)


@dataclass(frozen=True)
class Faults:
    """Fault injection: each rate is the probability (0..1) per dispense, result or tick."""

    jam: float = 0.0
    no_drop: float = 0.0
    result_lost: float = 0.0
    result_duplicated: float = 0.0
    command_duplicated: float = 0.0
    reboot_mid_dispense: float = 0.0
    offline: float = 0.0  # per offline_check_s tick
    slow_motor: float = 0.0
    clock_skew_s: float = 0.0  # added to the device clock used for expiresAt
    offline_seconds: float = 30.0
    offline_check_s: float = 60.0

    def __post_init__(self) -> None:
        for name in FAULT_RATES:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name}={rate} is not within 0..1")
        if self.offline_seconds < 0 or self.offline_check_s <= 0:
            raise ValueError("offline_seconds must be >= 0 and offline_check_s > 0")


@dataclass
class SimOptions:
    """One fleet run; a single SimulatedMachine uses the per-machine part of it."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    # Per-machine broker passwords (username = machine id), as `POST …/credentials` issues them.
    credentials: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    prefix: str = "vm"
    machine_ids: list[str] = field(default_factory=list)
    count: int = 1
    id_pattern: str = "SIM{n:04d}"  # str.format with n = 1..count, e.g. "VM{n:02d}"
    speed: float = 1.0  # motor time multiplier: 0.01 runs a 1500 ms motor in 15 ms
    telemetry_interval_s: float = 60.0
    state_dir: Path | None = None
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    duration_s: float | None = None
    connects_per_s: float = 200.0  # staggers a large fleet's first connections
    slots: int = 6
    stock_per_slot: int | None = None  # None: slots never run empty
    fw: str = "sim-1.0"

    def login(self, machine_id: str) -> tuple[str | None, str | None]:
        """The machine's own login if it has one; a password alone means username = id."""
        if machine_id in self.credentials:
            return machine_id, self.credentials[machine_id]
        if self.password is not None and self.username is None:
            return machine_id, self.password
        return self.username, self.password

    def resolved_ids(self) -> list[str]:
        if self.machine_ids:
            return list(self.machine_ids)
        return [self.id_pattern.format(n=n) for n in range(1, self.count + 1)]
