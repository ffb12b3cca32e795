"""`vendhub serve` and a simulated machine, each on its own login, through a private Mosquitto
configured by `vendhub broker config`."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from tests.conftest import MQTT_HOST, free_port
from tests.e2e.conftest import Api, Server, Sim, clean_env, machine_name, prepare, server_env
from tests.e2e.test_order_e2e import FINAL, buy
from tests.private_broker import PrivateMosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def broker_config(env: dict[str, str], cwd: Path, *args: str) -> str:
    from tests.e2e.conftest import vendhub

    done = vendhub("broker", "config", *args, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()
    return line


def test_a_paid_order_completes_through_a_machine_on_its_own_broker_login(
    tmp_path: Path,
) -> None:
    port, backend_port = free_port(), free_port()
    machine_id = machine_name("VMAUTH")
    env = server_env(
        f"sqlite:///{tmp_path / 'auth.db'}",
        machine_id,
        MQTT_USERNAME="vendhub",
        MQTT_PASSWORD="backend-broker-secret",
    )
    env["MQTT_BROKER_URL"] = f"mqtt://{MQTT_HOST}:{backend_port}"
    prepare(env, tmp_path, machine_id)
    directory = tmp_path / "mosquitto"
    args = ["--dir", str(directory), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--backend-port", str(backend_port), "--user", getpass.getuser()]
    assert "0 machine login(s)" in broker_config(env, tmp_path, *args)
    broker = PrivateMosquitto(directory, port, backend_port)
    server = Server(env, tmp_path)
    sim = Sim(env["MQTT_TOPIC_PREFIX"], [machine_id], tmp_path, port=port)
    try:
        broker.start()
        server.start()  # /ready: the backend logged in on its own listener
        api = Api(server.base_url)
        api.login()
        issued = api.post(f"/api/machines/{machine_id}/credentials")
        assert issued["username"] == machine_id
        assert "1 machine login(s)" in broker_config(env, tmp_path, *args)
        broker.reload()
        credentials = tmp_path / "credentials.json"
        credentials.write_text(json.dumps({machine_id: issued["password"]}))
        sim.extra = ["--credentials", str(credentials)]
        sim.start()
        api.wait_online(machine_id, within=30)
        created = buy(api, machine_id, slot=1)
        done = api.order_when(created["order_id"], FINAL)
        assert done["status"] == "COMPLETED"
        assert [u["status"] for u in done["dispenses"]] == ["DROPPED"]
    finally:
        sim.stop()
        server.stop()
        broker.stop()
    # Both logged in under their own names; the machine's client id is its username.
    log = broker.log.read_text()
    assert f"as {machine_id} (" in log and f"u'{machine_id}')" in log, log
    assert f"as {env['MQTT_CLIENT_ID']} (" in log and "u'vendhub')" in log, log


def test_broker_config_without_backend_credentials_refuses_in_one_line(tmp_path: Path) -> None:
    from tests.e2e.conftest import vendhub

    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    assert vendhub("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    done = vendhub("broker", "config", "--dir", str(tmp_path / "b"), env=env, cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "MQTT_USERNAME and MQTT_PASSWORD must be set" in line
    assert not (tmp_path / "b").exists()
