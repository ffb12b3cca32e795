"""vendproto's behaviour; plain asserts so the same file runs under MicroPython and CPython."""

import json

import vendproto as vp

NOW_S = 1795744800
MACHINE = "VM01"


def dispense(command_id="C1", slot=1, expires_at=NOW_S + 60, timeout_ms=2150):
    body = {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": "ORD-" + command_id,
        "slot": slot,
        "timeoutMs": timeout_ms,
        "expiresAt": expires_at,
    }
    return json.dumps(body).encode()


def ack(command_id):
    return json.dumps({"cmd": "ack", "commandId": command_id}).encode()


def config(version, slots=None, interval=60, machine_id=MACHINE):
    body = {"version": version, "machineId": machine_id, "telemetryIntervalS": interval}
    body["slots"] = slots if slots is not None else [{"slot": 1, "motorMs": 1200}]
    return json.dumps(body).encode()


def new_device(store=None, slots=None):
    return vp.Device(MACHINE, "b007", store or vp.MemoryStore(), 0, fw="test-fw", slots=slots)


def published(actions, kind=vp.RESULT):
    return [json.loads(a[2]) for a in actions if a[0] == vp.PUBLISH and a[1] == kind]


def vend(device, command_id="C1", now_ms=0, outcome=(True, True, 1500, None)):
    actions = device.on_command(dispense(command_id), now_ms, NOW_S)
    assert actions[0][0] == vp.START, actions
    success, dropped, duration_ms, error = outcome
    done = device.finish_dispense(command_id, success, dropped, duration_ms, error, now_ms + 1600)
    return published(done)[0]


# --- commands ------------------------------------------------------------------------------


def test_a_dispense_starts_the_motor_for_timeout_minus_the_margin():
    device = new_device()
    actions = device.on_command(dispense(), 0, NOW_S)
    assert len(actions) == 1
    kind, command, motor_ms = actions[0]
    assert kind == vp.START and command["commandId"] == "C1" and motor_ms == 1500
    assert device.busy


def test_the_result_carries_the_seed_fields_and_the_command_id():
    result = vend(new_device())
    assert result == {
        "commandId": "C1",
        "orderId": "ORD-C1",
        "slot": 1,
        "success": True,
        "dropDetected": True,
        "durationMs": 1500,
        "error": None,
    }


def test_the_result_is_in_flash_before_it_is_published():
    store = vp.MemoryStore()
    device = new_device(store)
    device.on_command(dispense(), 0, NOW_S)
    before = store.writes
    device.finish_dispense("C1", True, True, 1500, None, 1600)
    assert store.writes == before + 1
    saved = json.loads(store.text)
    assert saved["results"][0]["commandId"] == "C1" and saved["inProgress"] is None


def test_a_repeated_command_gets_the_stored_result_and_no_second_vend():
    device = new_device()
    first = vend(device)
    again = device.on_command(dispense(), 5000, NOW_S)
    assert [a[0] for a in again] == [vp.PUBLISH]
    assert published(again) == [first]
    assert device.counters["dispenses"] == 1


def test_a_repeat_of_the_command_being_vended_is_silent_until_its_one_result():
    device = new_device()
    device.on_command(dispense("C1"), 0, NOW_S)
    assert device.on_command(dispense("C1"), 100, NOW_S) == []
    done = device.finish_dispense("C1", True, True, 1500, None, 1600)
    assert published(done)[0]["error"] is None
    assert device.counters["dispenses"] == 1


def test_a_different_command_during_a_vend_is_refused_busy_and_remembered():
    device = new_device()
    device.on_command(dispense("C1"), 0, NOW_S)
    refused = published(device.on_command(dispense("C2"), 100, NOW_S))
    assert refused[0]["commandId"] == "C2" and refused[0]["error"] == vp.BUSY
    assert refused[0]["success"] is False
    # Remembered like any result: a repeat of C2 gets the same BUSY, even once idle.
    device.finish_dispense("C1", True, True, 1500, None, 1600)
    assert published(device.on_command(dispense("C2"), 2000, NOW_S)) == refused


def test_an_expired_command_is_refused_with_expired():
    device = new_device()
    refused = published(device.on_command(dispense(expires_at=NOW_S - 1), 0, NOW_S))
    assert refused[0]["error"] == vp.EXPIRED and refused[0]["success"] is False
    assert not device.busy


def test_without_a_clock_a_command_counts_as_unexpired():
    device = new_device()
    actions = device.on_command(dispense(expires_at=NOW_S - 3600), 0, None)
    assert actions[0][0] == vp.START


def test_a_slot_without_a_motor_or_disabled_by_config_is_refused():
    device = new_device(slots={1, 2})
    assert published(device.on_command(dispense("C1", slot=3), 0, NOW_S))[0]["error"] == (
        vp.SLOT_DISABLED
    )
    device.on_config(config(1, [{"slot": 2, "motorMs": 1500, "enabled": False}]))
    assert published(device.on_command(dispense("C2", slot=2), 0, NOW_S))[0]["error"] == (
        vp.SLOT_DISABLED
    )


def test_malformed_and_unknown_commands_are_ignored():
    device = new_device()
    junk = [
        b"not json",
        b"",
        b"\xff\xfe",
        b"[1]",
        b"{}",
        b'{"cmd":"reboot"}',
        b'{"cmd":"DISPENSE","commandId":"X","orderId":"O","slot":1,"timeoutMs":1,"expiresAt":1}',
        b'{"cmd":"ack"}',
        b'{"cmd":"ack","commandId":5}',
        dispense().replace(b'"slot": 1', b'"slot": "1"'),
        dispense().replace(b'"slot": 1', b'"slot": true'),
        dispense().replace(b'"timeoutMs": 2150', b'"timeoutMs": 0'),
        b'{"cmd":"dispense","commandId":"C9","orderId":"O","slot":1,"timeoutMs":2150}',
        b'{"cmd":"dispense","commandId":"' + b"x" * 65 + b'","orderId":"O","slot":1}',
        b"{" + b" " * 9000 + b"}",
    ]
    for payload in junk:
        assert device.on_command(payload, 0, NOW_S) == [], payload
    assert device.counters["ignored"] == len(junk)
    assert device.on_command(dispense(), 0, NOW_S)[0][0] == vp.START


# --- re-sending, ack, sync ---------------------------------------------------------------


def test_results_are_re_sent_with_growing_gaps_until_ack():
    device = new_device()
    vend(device, now_ms=0)  # recorded at 1600
    sends = []
    for now in range(1600, 40000, 100):
        if published(device.poll(now)):
            sends.append(now)
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert sends[0] == 2600
    assert gaps[:4] == [2000, 4000, 8000, 16000]
    device.on_command(ack("C1"), 40000, NOW_S)
    assert all(not device.poll(now) for now in range(40000, 200000, 1000))


def test_the_backoff_is_capped_at_thirty_seconds():
    assert [vp.backoff_ms(n) for n in range(7)] == [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert vp.backoff_ms(100) == 30000


def test_sync_re_sends_every_unacknowledged_result_and_the_status():
    device = new_device()
    vend(device, "C1")
    vend(device, "C2")
    device.on_command(ack("C1"), 2000, NOW_S)
    actions = device.on_command(b'{"cmd":"sync"}', 2000, NOW_S)
    assert [r["commandId"] for r in published(actions)] == ["C2"]
    assert published(actions, vp.STATUS)[0]["status"] == vp.ONLINE


def test_an_ack_for_an_unknown_command_changes_nothing():
    device = new_device()
    assert device.ack("nope", 0) is False
    assert device.dirty_since is None


def test_acks_reach_flash_lazily_with_the_next_write_or_after_the_flush_time():
    store = vp.MemoryStore()
    device = new_device(store)
    vend(device, "C1")
    writes = store.writes
    device.on_command(ack("C1"), 2000, NOW_S)
    assert store.writes == writes  # no flash write for the ack itself
    device.poll(2000 + vp.ACK_FLUSH_MS - 1)
    assert store.writes == writes
    device.poll(2000 + vp.ACK_FLUSH_MS)
    assert store.writes == writes + 1
    assert json.loads(store.text)["results"][0]["acked"] is True


def test_reconnecting_re_sends_unacked_results_at_once():
    device = new_device()
    vend(device, "C1")
    device.poll(2600)
    actions = device.on_connect(3000)
    assert published(actions, vp.STATUS)[0]["bootId"] == "b007"
    assert published(device.poll(3000))[0]["commandId"] == "C1"


# --- flash memory --------------------------------------------------------------------------


def test_remembered_results_survive_a_reboot_and_unacked_ones_are_re_sent():
    store = vp.MemoryStore()
    device = new_device(store)
    first = vend(device, "C1")
    vend(device, "C2")
    device.on_command(ack("C2"), 2000, NOW_S)
    device.flush()
    rebooted = vp.Device(MACHINE, "b008", store, 0)
    assert published(rebooted.on_command(dispense("C1"), 0, NOW_S)) == [first]
    assert rebooted.counters["dispenses"] == 0
    assert rebooted.unacked() == ["C1"]


def test_a_reboot_mid_dispense_becomes_a_motor_timeout_result():
    store = vp.MemoryStore()
    device = new_device(store)
    device.on_command(dispense("C1"), 0, NOW_S)
    rebooted = vp.Device(MACHINE, "b008", store, 0)
    assert rebooted.recovered["error"] == vp.MOTOR_TIMEOUT
    assert rebooted.recovered["success"] is False and not rebooted.busy
    rebooted.on_connect(0)
    assert published(rebooted.poll(0))[0]["commandId"] == "C1"


def test_only_the_last_32_results_are_remembered():
    store = vp.MemoryStore()
    device = new_device(store)
    for n in range(40):
        vend(device, "C%d" % n)
    assert len(device.order) == vp.RESULT_MEMORY and device.order[0] == "C8"
    assert len(json.loads(store.text)["results"]) == vp.RESULT_MEMORY
    # Forgotten: a command that old would be vended again (the backend never re-sends it).
    assert device.on_command(dispense("C0"), 0, NOW_S)[0][0] == vp.START


def test_a_corrupt_flash_file_starts_empty():
    device = vp.Device(MACHINE, "b", vp.MemoryStore("{not json"), 0)
    assert device.order == [] and device.config is None


# --- config, status, maintenance -------------------------------------------------------------


def test_a_newer_config_is_applied_and_the_status_reports_its_version():
    device = new_device()
    actions = device.on_config(config(7, interval=30))
    status = published(actions, vp.STATUS)[0]
    assert status == {"status": "ONLINE", "fw": "test-fw", "bootId": "b007", "configVersion": 7}
    assert actions[0][3] is True  # retained
    assert device.telemetry_interval_s(60) == 30
    assert device.motor_ms(json.loads(dispense())) == 1200


def test_an_older_or_equal_or_foreign_config_is_ignored():
    device = new_device()
    device.on_config(config(7))
    assert device.on_config(config(7, interval=10)) == []
    assert device.on_config(config(6, interval=10)) == []
    assert device.on_config(config(8, machine_id="VM02")) == []
    assert device.on_config(b'{"version":"9"}') == []
    assert device.on_config(config(9, slots=[{"slot": 1, "motorMs": "1"}])) == []
    assert device.config["version"] == 7


def test_the_applied_config_survives_a_reboot():
    store = vp.MemoryStore()
    device = new_device(store)
    device.on_config(config(3, [{"slot": 2, "motorMs": 900, "enabled": False}]))
    rebooted = vp.Device(MACHINE, "b9", store, 0)
    assert json.loads(rebooted.status_payload())["configVersion"] == 3
    assert not rebooted.slot_enabled(2)


def test_the_maintenance_switch_changes_the_retained_status_and_refuses_vends():
    device = new_device()
    actions = device.set_maintenance(True)
    assert published(actions, vp.STATUS)[0]["status"] == vp.MAINTENANCE
    assert device.set_maintenance(True) == []
    assert published(device.on_command(dispense(), 0, NOW_S))[0]["error"] == vp.BUSY
    assert published(device.set_maintenance(False), vp.STATUS)[0]["status"] == vp.ONLINE


def test_motor_time_stays_within_limits():
    device = new_device()
    assert device.motor_ms(json.loads(dispense(timeout_ms=700))) == vp.MIN_MOTOR_MS
    device.on_config(config(1, [{"slot": 1, "motorMs": 5000}]))
    assert device.motor_ms(json.loads(dispense(timeout_ms=2150))) == 2150


# --- one motor run -----------------------------------------------------------------------------


def command(timeout_ms=2150):
    return json.loads(dispense(timeout_ms=timeout_ms))


def test_a_drop_seen_during_the_run_is_a_success_when_the_motor_stops():
    run = vp.DispenseRun(command(), 1500, 1000)
    assert run.step(1400, True) is None and run.motor_on
    assert run.step(2500, True) == (True, True, 1500, None)
    assert not run.motor_on


def test_no_drop_by_timeout_is_no_drop():
    run = vp.DispenseRun(command(), 1500, 0)
    assert run.step(1500, False) is None and not run.motor_on
    assert run.step(2149, False) is None
    assert run.step(2150, False) == (True, False, 1500, vp.NO_DROP)


def test_a_late_drop_before_the_timeout_still_counts():
    run = vp.DispenseRun(command(), 1500, 0)
    run.step(1500, False)
    assert run.step(1900, True) == (True, True, 1500, None)


def test_a_stalled_motor_is_a_jam():
    run = vp.DispenseRun(command(), 1500, 0)
    assert run.step(300, False, stalled=True) == (False, False, 300, vp.JAM)
    assert not run.motor_on


def test_with_a_home_switch_the_motor_runs_until_home_or_times_out():
    run = vp.DispenseRun(command(), 1500, 0)
    assert run.step(1700, False, home=False) is None and run.motor_on
    assert run.step(1800, True, home=True) == (True, True, 1800, None)
    stuck = vp.DispenseRun(command(), 1500, 0)
    assert stuck.step(2150, False, home=False) == (False, False, 2150, vp.MOTOR_TIMEOUT)


def test_telemetry_has_uptime_memory_rssi_and_temperature():
    body = json.loads(vp.telemetry_payload(NOW_S + 0.5, 4.46, -60, 12, 90000, False))
    assert body == {
        "ts": NOW_S,
        "temperature": 4.5,
        "rssi": -60,
        "uptimeS": 12,
        "freeMem": 90000,
        "door": "closed",
    }
    assert "ts" not in json.loads(vp.telemetry_payload(None, None, None, 1, None, True))
