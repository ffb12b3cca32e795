"""Mosquitto password hashes and the generated broker configuration (no broker here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vendhub.adapters.mqtt import mosquitto
from vendhub.sim.__main__ import _options, _parser
from vendhub.sim.options import SimOptions

# Written by `mosquitto_passwd -b pw.txt VM01 secret` (Mosquitto 2.0.11).
MOSQUITTO_PASSWD_LINE = (
    "VM01:$7$101$x/P5/tgGzc4ppsAj$3/EC/gNtNniP/tyJiG3XG6fTmsvqu6CNqSYNfSDt1skGJVVYWIHo+/9wmB9"
    "UtXHJ7dZzMGFuz2wK9aWcBhOeoA=="
)


def test_a_hash_written_by_mosquitto_passwd_verifies_only_its_password() -> None:
    _, encoded = MOSQUITTO_PASSWD_LINE.split(":", 1)
    assert mosquitto.verify_password("secret", encoded)
    assert not mosquitto.verify_password("Secret", encoded)


def test_our_hash_has_mosquitto_passwd_s_shape_and_a_fresh_salt_each_time() -> None:
    # Spaces and "!" are not in base64's alphabet, so the password cannot appear in the
    # hash by chance (a two-letter one did, now and then).
    pw = "a pass word!"
    first, second = mosquitto.hash_password(pw), mosquitto.hash_password(pw)
    assert first != second
    empty, scheme, iterations, salt, digest = first.split("$")
    assert (empty, scheme, iterations) == ("", "7", str(mosquitto.ITERATIONS))
    assert len(salt) == 16 and len(digest) == 88  # base64 of 12 and 64 bytes
    assert mosquitto.verify_password(pw, first) and mosquitto.verify_password(pw, second)
    assert pw not in first


@pytest.mark.parametrize("garbage", ["", "plain", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$1$!!$!!"])
def test_malformed_hashes_never_verify(garbage: str) -> None:
    assert not mosquitto.verify_password("pw", garbage)


def test_issued_passwords_are_random_url_safe_and_32_characters() -> None:
    passwords = {mosquitto.new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) == 32 and p.replace("-", "").replace("_", "").isalnum() for p in passwords)


def layout(tmp_path: Path, **overrides: object) -> mosquitto.BrokerLayout:
    values: dict[str, object] = {
        "directory": tmp_path,
        "prefix": "vm",
        "backend_username": "vendhub",
        "backend_password_hash": "$7$1000$AAAA$BBBB",
        "machines": [("VM01", "$7$1000$CCCC$DDDD"), ("VM02", "$7$1000$EEEE$FFFF")],
        "port": 1883,
        "bind": "0.0.0.0",
        "backend_port": 1884,
        "backend_bind": "127.0.0.1",
    }
    values.update(overrides)
    return mosquitto.BrokerLayout(**values)  # type: ignore[arg-type]


def test_the_device_acl_gives_each_machine_only_its_own_topics(tmp_path: Path) -> None:
    acl = mosquitto.render(layout(tmp_path))[mosquitto.DEVICE_ACL]
    block = acl.split("user VM01\n")[1].split("\n\n")[0].strip().splitlines()
    assert block == [
        "topic write vm/VM01/dispense_result",
        "topic write vm/VM01/telemetry",
        "topic write vm/VM01/status",
        "topic read vm/VM01/command",
        "topic read vm/VM01/config",
    ]
    assert "#" not in acl.split("\n", 1)[1] and "+" not in acl and "pattern" not in acl


def test_the_backend_alone_may_use_the_whole_prefix_on_its_own_listener(tmp_path: Path) -> None:
    files = mosquitto.render(layout(tmp_path, prefix="fleet/id"))
    assert files[mosquitto.BACKEND_ACL] == "user vendhub\ntopic readwrite fleet/id/#\n"
    assert files[mosquitto.BACKEND_PASSWORDS] == "vendhub:$7$1000$AAAA$BBBB\n"
    assert "vendhub" not in files[mosquitto.DEVICE_PASSWORDS]
    assert files[mosquitto.DEVICE_PASSWORDS].splitlines() == [
        "VM01:$7$1000$CCCC$DDDD",
        "VM02:$7$1000$EEEE$FFFF",
    ]


def test_the_conf_refuses_anonymous_everywhere_and_forces_device_client_ids(
    tmp_path: Path,
) -> None:
    conf = mosquitto.render(layout(tmp_path))[mosquitto.CONF]
    lines = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    device = lines[lines.index("listener 1883 0.0.0.0") : lines.index("listener 1884 127.0.0.1")]
    backend = lines[lines.index("listener 1884 127.0.0.1") :]
    assert "per_listener_settings true" in lines
    assert "allow_anonymous false" in device and "allow_anonymous false" in backend
    assert "use_username_as_clientid true" in device
    assert "use_username_as_clientid true" not in backend
    assert f"password_file {tmp_path.resolve() / mosquitto.DEVICE_PASSWORDS}" in device
    assert f"acl_file {tmp_path.resolve() / mosquitto.BACKEND_ACL}" in backend


@pytest.mark.parametrize(
    "overrides",
    [{"backend_port": 1883}, {"prefix": "vm/#"}, {"backend_username": "a b"}, {"bind": ""}],
)
def test_a_layout_that_mosquitto_would_misread_is_refused(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    with pytest.raises(mosquitto.BrokerConfigError):
        layout(tmp_path, **overrides)


def test_a_simulated_machine_logs_in_as_itself_with_its_own_password(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text('{"VM01": "p1", "VM02": "p2"}')
    options = _options(_parser().parse_args(["--ids", "VM01,VM02", "--credentials", str(creds)]))
    assert options.login("VM01") == ("VM01", "p1")
    assert options.login("VM02") == ("VM02", "p2")
    assert SimOptions(password="only").login("VM07") == ("VM07", "only")
    assert SimOptions(username="u", password="p").login("VM07") == ("u", "p")
    assert SimOptions().login("VM07") == (None, None)


def test_a_credentials_file_that_is_not_a_json_object_of_strings_is_refused(
    tmp_path: Path,
) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text('{"VM01": 5}')
    with pytest.raises(SystemExit):
        _parser().parse_args(["--credentials", str(creds)])


def test_a_certificate_makes_the_device_listener_tls_and_needs_its_key(tmp_path: Path) -> None:
    conf = mosquitto.render(
        layout(tmp_path, certfile=tmp_path / "c.pem", keyfile=tmp_path / "k.pem")
    )[mosquitto.CONF]
    device = conf.split("listener 1883")[1].split("listener 1884")[0]
    assert f"certfile {tmp_path.resolve() / 'c.pem'}" in device
    assert f"keyfile {tmp_path.resolve() / 'k.pem'}" in device
    assert "certfile" not in mosquitto.render(layout(tmp_path))[mosquitto.CONF]
    with pytest.raises(mosquitto.BrokerConfigError, match="both"):
        layout(tmp_path, certfile=tmp_path / "c.pem")
