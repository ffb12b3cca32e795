"""Identifier generation: sortable ULIDs for rows and commands, readable order ids."""

from __future__ import annotations

import secrets
from datetime import datetime

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def new_order_id(now: datetime) -> str:
    # The shape protocol.md shows: ORD-YYYYMMDD-8 hex; short enough for 256-byte commands.
    return f"ORD-{now:%Y%m%d}-{secrets.token_hex(4).upper()}"
