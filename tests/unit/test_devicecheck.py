"""devicecheck's pure parts: targets, result validation, the junk it sends, the table."""

from __future__ import annotations

import io
import json

import pytest

from vendhub.devicecheck import CHECKS, Outcome, Report, Target, UsageError
from vendhub.devicecheck.__main__ import render
from vendhub.devicecheck.checks import malformed_commands, new_id, result_problems
from vendhub.protocol.messages import InvalidPayload, parse_command

COMMAND = {"commandId": "C1", "orderId": "ORD-C1", "slot": 1}


def dispense(command_id: str) -> dict[str, object]:
    return {
        "cmd": "dispense",
        "commandId": command_id,
        "orderId": f"ORD-{command_id}",
        "slot": 1,
        "timeoutMs": 2150,
        "expiresAt": 1795745000,
    }


def test_a_broker_url_gives_host_port_tls_and_credentials() -> None:
    plain = Target.from_url("mqtt://10.0.0.5", "vm", "VM01")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("10.0.0.5", 1883, False, None)
    secure = Target.from_url("mqtts://u%40x:p%3Aw@broker.example", "vm", "VM01")
    assert (secure.port, secure.tls, secure.username, secure.password) == (
        8883,
        True,
        "u@x",
        "p:w",
    )
    explicit = Target.from_url("mqtt://h:1884", "vm", "VM01", username="VM01", password="s")
    assert (explicit.port, explicit.username, explicit.password) == (1884, "VM01", "s")


@pytest.mark.parametrize(
    ("url", "prefix", "machine"),
    [
        ("http://h", "vm", "VM01"),
        ("mqtt://h:99999", "vm", "VM01"),
        ("mqtt://h", "vm", "VM/01"),
        ("mqtt://h", "vm/+", "VM01"),
        ("mqtt://h", "", "VM01"),
    ],
)
def test_bad_targets_are_usage_errors(url: str, prefix: str, machine: str) -> None:
    with pytest.raises(UsageError):
        Target.from_url(url, prefix, machine)


def test_a_complete_result_has_no_problems() -> None:
    result = {
        **COMMAND,
        "success": True,
        "dropDetected": True,
        "durationMs": 1500,
        "error": None,
    }
    assert result_problems(result, COMMAND) == []


def test_result_problems_name_each_missing_or_wrong_field() -> None:
    result = {"orderId": "ORD-X", "slot": 1, "success": 1, "dropDetected": True, "error": None}
    problems = result_problems(result, COMMAND)
    assert "missing commandId" in problems and "missing durationMs" in problems
    assert "orderId 'ORD-X' != 'ORD-C1'" in problems
    assert "success is not a boolean" in problems
    assert result_problems(None, COMMAND) == ["result is not a JSON object"]
    dropped_with_error = {**COMMAND, "success": True, "dropDetected": True, "durationMs": 1}
    assert "a dropped unit reports an error" in result_problems(
        {**dropped_with_error, "error": "JAM"}, COMMAND
    )


def test_every_junk_command_is_one_the_protocol_itself_rejects() -> None:
    junk = malformed_commands(dispense)
    assert len(junk) == 19
    for payload in junk:
        with pytest.raises(InvalidPayload):
            parse_command(payload)
    assert parse_command(dispense_bytes()).cmd == "dispense"  # the template itself is valid


def dispense_bytes() -> bytes:
    return json.dumps(dispense(new_id("T"))).encode()


def test_the_table_keeps_each_check_on_one_line_however_long_the_detail() -> None:
    report = Report(Target.from_url("mqtt://h", "vm", "VM01"))
    report.outcomes = [Outcome(name, True, "x" * 150) for name, _ in CHECKS]
    report.outcomes[3] = Outcome(CHECKS[3][0], False, "y" * 300)
    out = io.StringIO()
    render(report, out)
    lines = out.getvalue().splitlines()
    for name, obligation in CHECKS:
        assert sum(f" {name} " in line and obligation in line for line in lines) == 1
    assert any("FAIL" in line and "y" * 300 in line for line in lines)
    assert f"{len(CHECKS) - 1}/{len(CHECKS)} checks passed" in out.getvalue()
