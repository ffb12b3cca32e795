"""Pure edge guards: client address behind proxies, JSON depth, datetime range, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_network

import pytest
from pydantic import TypeAdapter, ValidationError

from vendhub.config import Settings
from vendhub.entrypoints.api.schemas import MachineUpdate, SafeDatetime, SlotUpdate
from vendhub.entrypoints.api.security import client_address, json_depth_exceeds

PROXIES = [ip_network("10.0.0.0/8"), ip_network("::1/128")]


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address("203.0.113.5", "1.2.3.4", []) == "203.0.113.5"
    assert client_address("203.0.113.5", "1.2.3.4", PROXIES) == "203.0.113.5"
    assert client_address(None, None, PROXIES) == "unknown"


def test_behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() -> None:
    assert client_address("10.0.0.2", "198.51.100.7", PROXIES) == "198.51.100.7"
    # A client that writes its own X-Forwarded-For cannot choose its address: the proxy
    # appends the real one, which is the right-most untrusted hop.
    assert client_address("10.0.0.2", "1.1.1.1, 198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_address("10.0.0.2", "198.51.100.7, 10.0.0.9", PROXIES) == "198.51.100.7"
    assert client_address("::1", "2001:db8::1", PROXIES) == "2001:db8::1"
    # Garbage in the chain: believe only the peer we saw.
    assert client_address("10.0.0.2", "not-an-ip", PROXIES) == "10.0.0.2"
    # Only proxies all the way: the left-most one.
    assert client_address("10.0.0.2", "10.0.0.3", PROXIES) == "10.0.0.3"


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth_exceeds(b"[" * 30000, 32)
    assert json_depth_exceeds(b'{"a":' * 33 + b"1" + b"}" * 33, 32)
    assert not json_depth_exceeds(b'{"a":' * 32 + b"1" + b"}" * 32, 32)
    assert not json_depth_exceeds(b'{"s": "' + b"[" * 5000 + b'"}', 32)
    assert not json_depth_exceeds(b'{"s": "\\"' + b"[" * 100 + b'"}', 32)
    assert not json_depth_exceeds(b"[1]," * 1000, 32)


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-12:00",
        "1969-12-31T23:59:59Z",
        "9999-06-01T00:00:00Z",
    ],
)
def test_datetimes_outside_what_databases_store_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(SafeDatetime).validate_python(value)


def test_datetimes_in_range_come_back_in_utc() -> None:
    parsed = TypeAdapter(SafeDatetime).validate_python("2026-11-27T07:00:00+07:00")
    assert parsed == datetime(2026, 11, 27, 0, 0, tzinfo=UTC) and parsed.tzinfo is UTC


def test_null_is_refused_only_for_columns_that_cannot_hold_it() -> None:
    with pytest.raises(ValidationError):
        MachineUpdate.model_validate({"is_active": None})
    with pytest.raises(ValidationError):
        SlotUpdate.model_validate({"capacity": None})
    assert MachineUpdate.model_validate({"location": None}).location is None
    assert SlotUpdate.model_validate({"price_override": None}).price_override is None
    with pytest.raises(ValidationError):
        SlotUpdate.model_validate({"price_override": 2**63})


def test_security_settings_are_parsed_and_bad_ones_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        trusted_proxies="10.0.0.0/8, 192.168.1.1",
        cors_origins="https://a.example, https://b.example",
    )
    assert [str(n) for n in settings.trusted_proxy_networks] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]
    assert Settings(_env_file=None).cors_origin_list == []  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings(_env_file=None, trusted_proxies="10.0.0.0/33")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="RATE_LIMIT_ORDERS"):
        Settings(_env_file=None, rate_limit_orders="lots")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Settings(_env_file=None, anon_max_unpaid_units=0)  # type: ignore[call-arg]
