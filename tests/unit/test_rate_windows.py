"""MemoryWindows decides as `limits`' moving window does, without its per-hit expiry pass."""

from __future__ import annotations

import asyncio
import random
from unittest import mock

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from vendhub.entrypoints.api.security import MemoryWindows


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seed", range(5))
def test_the_same_events_are_allowed_as_by_limits_moving_window(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    mine = MemoryWindows(clock)
    item = parse("5/10 seconds")

    async def run() -> None:
        with mock.patch("time.time", clock):
            reference = MovingWindowRateLimiter(MemoryStorage())
            for _ in range(400):
                clock.now += rng.choice([0.0, 0.1, 0.5, 1.0, 2.5, 4.0, 11.0])
                client = rng.choice(["a", "b"])
                if rng.random() < 0.2:
                    assert mine.test(item, client) == await reference.test(item, client)
                    continue
                assert mine.hit(item, client) == await reference.hit(item, client), clock.now

    asyncio.run(run())


def test_a_full_window_says_when_the_oldest_event_leaves_it() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    item = parse("2/minute")
    assert windows.hit(item, "c") and windows.retry_after(item, "c") == 60
    clock.now += 20
    assert windows.hit(item, "c")
    assert not windows.hit(item, "c")  # a refused event is not counted
    assert windows.retry_after(item, "c") == 40
    clock.now += 40.5  # the first event has left the window
    assert windows.test(item, "c") and windows.hit(item, "c")
    windows.clear(item, "c")
    assert windows.hit(item, "c") and windows.hit(item, "c")


def test_idle_clients_are_forgotten() -> None:
    clock = Clock()
    windows = MemoryWindows(clock)
    item = parse("3/second")
    for n in range(1000):
        windows.hit(item, f"client-{n}")
    assert len(windows.events) == 1000
    clock.now += MemoryWindows.SWEEP_S + 1
    windows.hit(item, "late")
    assert list(windows.events) == [item.key_for("late")]
