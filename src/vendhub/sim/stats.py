"""Counters shared by the simulated machines of one run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FleetStats:
    """What a fleet did; machines on one event loop update it without locking."""

    commands_received: int = 0
    dispenses_performed: int = 0
    results_published: int = 0
    duplicates_suppressed: int = 0
    expired: int = 0
    busy: int = 0
    acks_received: int = 0
    syncs_received: int = 0
    configs_applied: int = 0
    invalid_payloads: int = 0
    connects: int = 0
    reboots: int = 0
    faults_fired: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_fired.items())) or "none"
        return (
            f"commands={self.commands_received} dispenses={self.dispenses_performed} "
            f"results={self.results_published} duplicates={self.duplicates_suppressed} "
            f"expired={self.expired} busy={self.busy} acks={self.acks_received} "
            f"connects={self.connects} faults: {faults}"
        )
