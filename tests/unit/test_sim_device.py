"""DeviceLogic without a broker: dedup, flash memory, expiry, acks, backoff, config, BUSY."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vendhub.protocol.messages import parse_result
from vendhub.sim.device import (
    RESULT_MEMORY,
    Acked,
    DeviceLogic,
    FlashStore,
    Ignored,
    InFlight,
    Publish,
    Reason,
    StartDispense,
    StoredResult,
    backoff_delay,
)

NOW = 1_795_744_800.0


def dispense(command_id: str = "C1", *, slot: int = 1, expires_at: float = NOW + 60) -> bytes:
    body: dict[str, Any] = {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": f"ORD-{command_id}",
        "slot": slot,
        "timeoutMs": 2150,
        "expiresAt": int(expires_at),
    }
    return json.dumps(body).encode()


def ack(command_id: str) -> bytes:
    return json.dumps({"cmd": "ack", "commandId": command_id}).encode()


def config(version: int, **slot: Any) -> bytes:
    slot_body = {"slot": 1, "motorMs": 1500, "enabled": True, **slot}
    body = {"version": version, "machineId": "VM01", "slots": [slot_body], "telemetryIntervalS": 60}
    return json.dumps(body).encode()


def new_logic(store: FlashStore | None = None, **kwargs: Any) -> DeviceLogic:
    return DeviceLogic("VM01", store, now=NOW, **kwargs)


def run_to_result(logic: DeviceLogic, command_id: str = "C1", now: float = NOW) -> StoredResult:
    decision = logic.handle_command(dispense(command_id), now)
    assert isinstance(decision, StartDispense)
    return logic.finish_dispense(
        command_id, success=True, drop_detected=True, duration_ms=1500, error=None, now=now
    )


def test_a_fresh_command_starts_the_motor_for_timeout_minus_margin() -> None:
    decision = new_logic().handle_command(dispense(), NOW)
    assert isinstance(decision, StartDispense)
    assert decision.command.command_id == "C1"
    assert decision.motor_ms == 1500


def test_the_result_payload_has_exactly_the_protocol_shape() -> None:
    result = run_to_result(new_logic())
    assert json.loads(result.to_payload()) == {
        "commandId": "C1",
        "orderId": "ORD-C1",
        "slot": 1,
        "success": True,
        "dropDetected": True,
        "durationMs": 1500,
        "error": None,
    }
    assert parse_result(result.to_payload()).dropped


def test_duplicate_command_is_not_dispensed_twice() -> None:
    logic = new_logic()
    first = run_to_result(logic)
    decision = logic.handle_command(dispense(), NOW + 5)
    assert decision == Publish((first,), Reason.DUPLICATE)


def test_duplicate_of_the_command_the_motor_is_running_is_suppressed_not_busy() -> None:
    logic = new_logic()
    assert isinstance(logic.handle_command(dispense(), NOW), StartDispense)
    assert logic.handle_command(dispense(), NOW + 0.5) == InFlight("C1")
    assert logic.remembered("C1") is None


def test_remembered_results_survive_a_reboot(tmp_path: Path) -> None:
    store = FlashStore.for_machine(tmp_path, "VM01")
    first = run_to_result(new_logic(store))
    rebooted = new_logic(FlashStore.for_machine(tmp_path, "VM01"))
    assert rebooted.handle_command(dispense(), NOW + 10) == Publish((first,), Reason.DUPLICATE)
    assert rebooted.unacked_results() == (first,)


def test_flash_is_written_before_the_result_is_returned_for_publishing(tmp_path: Path) -> None:
    store = FlashStore.for_machine(tmp_path, "VM01")
    result = run_to_result(new_logic(store))
    on_disk = json.loads((tmp_path / "VM01.json").read_text())
    assert on_disk["results"][0]["command_id"] == result.command_id
    assert on_disk["inProgress"] is None
    assert not list(tmp_path.glob("*.tmp"))


def test_a_reboot_mid_dispense_is_remembered_as_motor_timeout(tmp_path: Path) -> None:
    store = FlashStore.for_machine(tmp_path, "VM01")
    assert isinstance(new_logic(store).handle_command(dispense(), NOW), StartDispense)
    rebooted = new_logic(FlashStore.for_machine(tmp_path, "VM01"))
    assert rebooted.recovered is not None
    assert (rebooted.recovered.success, rebooted.recovered.error) == (False, "MOTOR_TIMEOUT")
    assert not rebooted.busy
    decision = rebooted.handle_command(dispense(), NOW + 10)
    assert decision == Publish((rebooted.recovered,), Reason.DUPLICATE)


def test_an_in_memory_store_survives_a_reboot_when_shared() -> None:
    store = FlashStore(None)
    first = run_to_result(new_logic(store))
    assert new_logic(store).remembered("C1") == first


def test_only_the_last_32_command_ids_are_remembered() -> None:
    logic = new_logic()
    for n in range(RESULT_MEMORY + 3):
        run_to_result(logic, f"C{n}")
    assert logic.remembered_ids == [f"C{n}" for n in range(3, RESULT_MEMORY + 3)]
    assert isinstance(logic.handle_command(dispense("C0"), NOW), StartDispense)
    assert len(logic.unacked_results()) == RESULT_MEMORY


def test_expired_command_is_answered_expired_without_dispensing() -> None:
    logic = new_logic()
    decision = logic.handle_command(dispense(expires_at=NOW - 1), NOW)
    assert isinstance(decision, Publish)
    assert decision.reason is Reason.REFUSED
    (result,) = decision.results
    assert (result.success, result.drop_detected, result.error) == (False, False, "EXPIRED")
    assert not logic.busy
    assert logic.remembered("C1") == result


def test_a_command_at_its_expiry_second_still_dispenses() -> None:
    decision = new_logic().handle_command(dispense(expires_at=NOW), NOW)
    assert isinstance(decision, StartDispense)


def test_a_fast_device_clock_expires_a_command_that_is_still_valid() -> None:
    logic = new_logic(clock_skew_s=120)
    decision = logic.handle_command(dispense(expires_at=NOW + 60), NOW)
    assert isinstance(decision, Publish)
    assert decision.results[0].error == "EXPIRED"


def test_a_slow_device_clock_still_dispenses_a_command_that_is_past_expiry() -> None:
    logic = new_logic(clock_skew_s=-120)
    assert isinstance(logic.handle_command(dispense(expires_at=NOW - 60), NOW), StartDispense)


def test_a_device_without_a_clock_treats_commands_as_unexpired() -> None:
    logic = new_logic(has_clock=False)
    assert isinstance(logic.handle_command(dispense(expires_at=0), NOW), StartDispense)


def test_ack_removes_the_result_from_the_unacked_set() -> None:
    logic = new_logic()
    run_to_result(logic, "C1")
    second = run_to_result(logic, "C2")
    assert logic.handle_command(ack("C1"), NOW) == Acked("C1", known=True)
    assert logic.unacked_results() == (second,)
    assert logic.due_results(NOW + 3600) == [second]


def test_an_ack_is_remembered_across_a_reboot(tmp_path: Path) -> None:
    store = FlashStore.for_machine(tmp_path, "VM01")
    logic = new_logic(store)
    run_to_result(logic)
    logic.handle_command(ack("C1"), NOW)
    assert new_logic(FlashStore.for_machine(tmp_path, "VM01")).unacked_results() == ()


def test_an_ack_for_an_unknown_command_is_harmless() -> None:
    assert new_logic().handle_command(ack("nope"), NOW) == Acked("nope", known=False)


def test_backoff_delays_double_from_one_second_and_cap_at_thirty() -> None:
    assert [backoff_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff_delay(10_000) == 30


def test_an_unacked_result_is_republished_on_the_backoff_schedule() -> None:
    logic = new_logic()
    run_to_result(logic, now=NOW)
    times: list[float] = []
    now = NOW
    while len(times) < 7:
        now += 0.25
        if logic.due_results(now):
            times.append(now - NOW)
    gaps = [round(b - a) for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == [1, 2, 4, 8, 16, 30, 30]
    assert logic.next_due() == pytest.approx(NOW + times[-1] + 30)


def test_the_resend_backoff_follows_the_simulators_speed_setting() -> None:
    assert [backoff_delay(n, 0.01) for n in range(6)] == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.3]
    )
    logic = DeviceLogic("VM01", now=NOW, backoff_scale=0.01)
    run_to_result(logic, now=NOW)
    assert logic.next_due() == pytest.approx(NOW + 0.01)
    assert logic.due_results(NOW + 0.01) != []
    assert logic.next_due() == pytest.approx(NOW + 0.01 + 0.02)


def test_sync_returns_all_unacked_results() -> None:
    logic = new_logic()
    results = [run_to_result(logic, f"C{n}") for n in range(3)]
    logic.ack("C1")
    decision = logic.handle_command(b'{"cmd":"sync"}', NOW)
    assert decision == Publish((results[0], results[2]), Reason.SYNC)


def test_config_is_applied_only_if_its_version_is_newer() -> None:
    logic = new_logic()
    assert logic.handle_config(config(7, motorMs=1000))
    assert not logic.handle_config(config(7, motorMs=900))
    assert not logic.handle_config(config(6, motorMs=800))
    assert logic.config is not None and logic.config.version == 7
    assert logic.handle_config(config(8, motorMs=1200))
    decision = logic.handle_command(dispense(), NOW)
    assert isinstance(decision, StartDispense) and decision.motor_ms == 1200


def test_a_config_for_another_machine_is_not_applied() -> None:
    logic = new_logic()
    other = json.loads(config(9))
    other["machineId"] = "VM02"
    assert not logic.handle_config(json.dumps(other).encode())
    assert logic.config is None


def test_a_dispense_with_a_string_or_boolean_slot_is_dropped() -> None:
    logic = new_logic()
    for slot in ('"1"', "true"):
        payload = dispense().replace(b'"slot": 1', f'"slot": {slot}'.encode())
        assert isinstance(logic.handle_command(payload, NOW), Ignored)
    assert isinstance(logic.handle_command(b'{"cmd":"ack","commandId":5}', NOW), Ignored)


def test_the_applied_config_version_survives_a_reboot(tmp_path: Path) -> None:
    store = FlashStore.for_machine(tmp_path, "VM01")
    assert new_logic(store).handle_config(config(7))
    assert not new_logic(FlashStore.for_machine(tmp_path, "VM01")).handle_config(config(7))


def test_a_disabled_slot_is_refused() -> None:
    logic = new_logic()
    logic.handle_config(config(1, enabled=False))
    decision = logic.handle_command(dispense(), NOW)
    assert isinstance(decision, Publish) and decision.results[0].error == "SLOT_DISABLED"


def test_a_second_dispense_while_the_motor_runs_is_answered_busy() -> None:
    logic = new_logic()
    assert isinstance(logic.handle_command(dispense("C1"), NOW), StartDispense)
    decision = logic.handle_command(dispense("C2"), NOW + 0.5)
    assert isinstance(decision, Publish) and decision.reason is Reason.REFUSED
    busy = decision.results[0]
    assert (busy.command_id, busy.success, busy.error) == ("C2", False, "BUSY")
    assert logic.handle_command(dispense("C2"), NOW + 1) == Publish((busy,), Reason.DUPLICATE)
    logic.finish_dispense(
        "C1", success=True, drop_detected=True, duration_ms=1500, error=None, now=NOW + 1.5
    )
    assert isinstance(logic.handle_command(dispense("C3"), NOW + 2), StartDispense)


def test_finite_stock_runs_out_as_no_drop_and_is_reported_as_levels() -> None:
    logic = new_logic(stock_per_slot=1)
    run_to_result(logic, "C1")
    assert logic.stock(1) == 0
    logic.handle_command(dispense("C2"), NOW)
    empty = logic.finish_dispense(
        "C2", success=True, drop_detected=True, duration_ms=1500, error=None, now=NOW
    )
    assert (empty.drop_detected, empty.error) == (False, "NO_DROP")
    assert logic.slot_levels(2) == [(1, "EMPTY"), (2, "FULL")]


def test_a_malformed_command_is_ignored() -> None:
    assert isinstance(new_logic().handle_command(b"not json", NOW), Ignored)
    assert isinstance(new_logic().handle_command(b'{"cmd":"reboot"}', NOW), Ignored)
