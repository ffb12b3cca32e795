"""Background job: telemetry rollup and retention, one bounded pass every few minutes."""

from __future__ import annotations

import asyncio
import logging

from vendhub.services import retention
from vendhub.services.context import ServiceContext

log = logging.getLogger(__name__)


async def run_retention(
    ctx: ServiceContext, policy: retention.RetentionPolicy, every_s: float
) -> None:
    while True:
        try:
            await retention.run_pass(ctx, policy)
        except Exception:
            log.exception("telemetry retention pass failed; will retry")
        await asyncio.sleep(every_s)
