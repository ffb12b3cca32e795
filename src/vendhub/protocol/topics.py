"""Topic names: building them for one machine, parsing them from a wildcard subscription."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MACHINE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")


class TopicKind(StrEnum):
    COMMAND = "command"
    CONFIG = "config"
    DISPENSE_RESULT = "dispense_result"
    TELEMETRY = "telemetry"
    STATUS = "status"


# What the backend listens to; the devices listen to the other two.
INBOUND_KINDS = (TopicKind.DISPENSE_RESULT, TopicKind.TELEMETRY, TopicKind.STATUS)


class InvalidTopic(ValueError):
    """The topic does not name a valid machine or a known kind."""


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    machine_id: str
    kind: TopicKind


def valid_machine_id(machine_id: str) -> bool:
    return bool(MACHINE_ID_RE.match(machine_id))


def topic(prefix: str, machine_id: str, kind: TopicKind) -> str:
    if not valid_machine_id(machine_id):
        raise InvalidTopic(f"invalid machine id {machine_id!r}")
    return f"{prefix}/{machine_id}/{kind.value}"


def fleet_filter(prefix: str, kind: TopicKind, share_group: str | None = None) -> str:
    """Wildcard filter for one kind across the fleet, optionally as a shared subscription."""
    base = f"{prefix}/+/{kind.value}"
    return f"$share/{share_group}/{base}" if share_group else base


def parse_topic(prefix: str, value: str) -> ParsedTopic:
    parts = value.split("/")
    prefix_parts = prefix.split("/")
    n = len(prefix_parts)
    if len(parts) != n + 2 or parts[:n] != prefix_parts:
        raise InvalidTopic(f"topic {value!r} is not under prefix {prefix!r}")
    machine_id, kind = parts[n], parts[n + 1]
    if not valid_machine_id(machine_id):
        raise InvalidTopic(f"invalid machine id in topic {value!r}")
    try:
        return ParsedTopic(machine_id, TopicKind(kind))
    except ValueError:
        raise InvalidTopic(f"unknown topic kind {kind!r}") from None
