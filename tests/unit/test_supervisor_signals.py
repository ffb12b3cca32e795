"""`vendhub serve --workers N`: which signals to the supervisor stop gracefully, which at once
(the processes themselves: tests/e2e/test_workers.py)."""

from __future__ import annotations

import signal

import pytest

from vendhub.entrypoints.serve import _StopRequest


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_first_sigint_or_sigterm_asks_for_a_graceful_stop(first: signal.Signals) -> None:
    stop = _StopRequest()
    stop.on_signal(first, None)
    assert (stop.requested, stop.now) == (True, False)


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_sigint_while_stopping_asks_to_stop_now(first: signal.Signals) -> None:
    stop = _StopRequest()
    stop.on_signal(first, None)
    stop.on_signal(signal.SIGINT, None)
    assert (stop.requested, stop.now) == (True, True)


def test_a_repeated_sigterm_stays_graceful() -> None:
    stop = _StopRequest()
    stop.on_signal(signal.SIGTERM, None)
    stop.on_signal(signal.SIGTERM, None)
    assert (stop.requested, stop.now) == (True, False)


def test_a_sigint_while_stopping_on_failing_workers_asks_to_stop_now() -> None:
    stop = _StopRequest(requested=True)  # set by the supervisor when a worker keeps failing
    stop.on_signal(signal.SIGINT, None)
    assert stop.now
