"""Load shedding at the edge: a bounded number of webhooks in flight, the rest told to retry."""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse

# The gateway retries a notification that was not answered 2xx; one second is soon enough.
RETRY_AFTER_S = 1


class InflightLimit:
    """Counts requests being worked on; beyond `limit` the caller sheds (503 + Retry-After),
    so a burst costs the sender a retry instead of every later request a growing delay."""

    def __init__(self, limit: int, concurrency: int | None = None) -> None:
        self.limit = limit
        self.inflight = 0
        self.shed = 0
        # Of those admitted, this many are worked on at once, the rest wait in line (FIFO):
        # the MQTT results that free machines for the next unit keep their share of the CPU.
        self.working = asyncio.Semaphore(concurrency or limit)

    def enter(self) -> bool:
        if self.inflight >= self.limit:
            self.shed += 1
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight -= 1


def overloaded() -> JSONResponse:
    return JSONResponse(
        {"error": "overloaded", "message": "too many notifications in flight; retry shortly"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
