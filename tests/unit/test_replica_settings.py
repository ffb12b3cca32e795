"""Replicas out of the box: distinct, stable client ids and shared fleet subscriptions."""

from __future__ import annotations

import socket

import pytest

from vendhub.bootstrap import mqtt_config, subscriptions
from vendhub.config import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("MQTT_CLIENT_ID", "REPLICA_ID", "MQTT_SHARE_GROUP", "MQTT_BROKER_URL", "PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_two_replicas_on_one_host_get_distinct_client_ids_from_their_ports() -> None:
    a, b = Settings(port=3001), Settings(port=3002)
    assert a.client_id != b.client_id
    assert a.client_id.startswith("vendhub-") and a.client_id.endswith("-3001")


def test_the_client_id_is_the_same_across_restarts_of_one_replica() -> None:
    assert Settings(replica_id="r2").client_id == Settings(replica_id="r2").client_id


def test_replicas_on_different_hosts_differ_by_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "web-1.example")
    one = Settings(replica_id="a").client_id
    monkeypatch.setattr(socket, "gethostname", lambda: "web-2.example")
    assert one == "vendhub-web-1-example-a"
    assert Settings(replica_id="a").client_id == "vendhub-web-2-example-a"


def test_mqtt_client_id_when_set_is_used_as_is() -> None:
    settings = Settings(mqtt_client_id="vending-backend", mqtt_broker_url="mqtt://b:1883")
    assert mqtt_config(settings).client_id == "vending-backend"


def test_an_external_broker_shares_results_and_telemetry_but_not_status() -> None:
    settings = Settings(mqtt_broker_url="mqtt://broker:1883")
    assert subscriptions("vm", settings.share_group) == [
        "$share/vendhub/vm/+/dispense_result",
        "$share/vendhub/vm/+/telemetry",
        "vm/+/status",
    ]


def test_the_embedded_broker_and_none_turn_sharing_off() -> None:
    assert Settings().share_group is None
    assert Settings(mqtt_broker_url="mqtt://b", mqtt_share_group="none").share_group is None
    assert Settings(mqtt_share_group="fleet").share_group == "fleet"


def test_each_worker_of_serve_workers_gets_its_own_stable_client_id() -> None:
    from vendhub.entrypoints.serve import worker_client_id

    settings = Settings(port=3001, mqtt_broker_url="mqtt://b:1883")
    ids = [worker_client_id(settings, n) for n in range(3)]
    assert len(set(ids)) == 3 and ids[0] == f"{settings.client_id}-w0"
    assert worker_client_id(settings, 1) == worker_client_id(Settings(port=3001), 1)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database_url": "sqlite:///x.db", "mqtt_broker_url": "mqtt://b:1883"}, "PostgreSQL"),
        ({"database_url": "postgresql://h/db"}, "external MQTT broker"),
        (
            {
                "database_url": "postgresql://h/db",
                "mqtt_broker_url": "mqtt://b:1883",
                "mqtt_share_group": "none",
            },
            "MQTT_SHARE_GROUP",
        ),
    ],
)
def test_more_than_one_worker_needs_a_server_database_and_a_sharing_broker(
    values: dict[str, str], named: str
) -> None:
    from vendhub.entrypoints.preflight import StartupError
    from vendhub.entrypoints.serve import check_workers

    settings = Settings(**values)  # type: ignore[arg-type]
    check_workers(settings, 1)  # one worker runs on anything
    with pytest.raises(StartupError, match=named):
        check_workers(settings, 2)


def test_two_workers_on_postgresql_and_an_external_broker_are_accepted() -> None:
    from vendhub.entrypoints.serve import check_workers

    check_workers(Settings(database_url="postgresql://h/db", mqtt_broker_url="mqtt://b:1883"), 2)
