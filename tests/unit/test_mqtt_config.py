"""Broker URLs become client settings (TLS, credentials, default ports)."""

from __future__ import annotations

import pytest

from vendhub.adapters.mqtt.client import MqttConfig


def test_plain_url_defaults_to_port_1883_without_tls() -> None:
    cfg = MqttConfig.from_url("mqtt://localhost")
    assert (cfg.host, cfg.port, cfg.tls) == ("localhost", 1883, False)


def test_mqtts_url_means_tls_on_8883_with_credentials_from_the_url() -> None:
    cfg = MqttConfig.from_url("mqtts://vending_admin:s%40cret@broker:8883")
    assert (cfg.port, cfg.tls, cfg.username, cfg.password) == (
        8883,
        True,
        "vending_admin",
        "s@cret",
    )


def test_explicit_credentials_override_the_url() -> None:
    cfg = MqttConfig.from_url("mqtt://a:b@h:1884", username="u", password="p")
    assert (cfg.port, cfg.username, cfg.password) == (1884, "u", "p")


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        MqttConfig.from_url("http://broker")
