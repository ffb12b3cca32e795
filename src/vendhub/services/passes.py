"""Per-row isolation for periodic passes: one failing row never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vendhub.services.context import ServiceContext

log = logging.getLogger(__name__)

T = TypeVar("T")


async def isolated(
    ctx: ServiceContext, pass_name: str, row: str, work: Callable[[], Awaitable[T]]
) -> T | None:
    """Run one row's work in its own transaction(s); on failure log one line, count it and
    return None. The row is left as it was, so the next pass tries it again."""
    try:
        return await work()
    except Exception as exc:
        ctx.row_failed(pass_name)
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        log.error(
            "%s pass: %s failed, will retry next pass: %s: %s",
            pass_name,
            row,
            type(exc).__name__,
            detail,
        )
        return None
