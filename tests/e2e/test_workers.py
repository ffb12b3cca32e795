"""`vendhub serve --workers 2`: one port, two worker processes on PostgreSQL and the real
Mosquitto; a dead worker is replaced; SIGTERM stops them all; a second Ctrl-C kills them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Api, Server, Sim, machine_name, prepare, server_env, vendhub
from tests.e2e.test_replicas import FINAL, STOCK, ledger, pay, postgres_url  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def workers(server: Server) -> dict[int, list[int]]:
    """Worker index → pids the supervisor started for it, in order, from its log."""
    found: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d+) started, pid (\d+)", server.log.read_text()):
        found.setdefault(int(index), []).append(int(pid))
    return found


def client_ids(server: Server) -> list[str]:
    return re.findall(r"MQTT connected to \S+ as (\S+);", server.log.read_text())


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_two_workers_share_one_port_replace_a_dead_one_and_stop_together(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    machines = [machine_name("VMWa"), machine_name("VMWb")]
    env = server_env(postgres_url, machines[0])
    prepare(env, tmp_path, *machines)
    server = Server(env, tmp_path, args=["--workers", "2"])
    sim = Sim(env["MQTT_TOPIC_PREFIX"], machines, tmp_path)
    orders: list[str] = []
    expected: dict[tuple[str, int], int] = {}

    def pay_some(api: Api, count: int, first_slot: int) -> list[str]:
        paid = []
        for n in range(count):
            machine_id, slot = machines[n % 2], first_slot + n % 3
            paid.append(pay(api, machine_id, slot))
            expected[(machine_id, slot)] = expected.get((machine_id, slot), STOCK) - 1
        return paid

    try:
        server.start()
        assert server.process is not None
        api = Api(server.base_url)
        api.wait(lambda: len(client_ids(server)) == 2, within=40)
        started = workers(server)
        pids = [started[0][0], started[1][0]]
        assert sorted(started) == [0, 1] and len(set(pids)) == 2, started
        assert server.process.pid not in pids and all(alive(pid) for pid in pids)
        # Each worker its own MQTT client id, the supervisor's plus -w{index}.
        base = env["MQTT_CLIENT_ID"]
        assert sorted(client_ids(server)) == [f"{base}-w0", f"{base}-w1"]

        sim.start()
        api.login()
        for machine_id in machines:
            api.wait_online(machine_id)
        orders += pay_some(api, 8, 1)
        for order_id in orders:
            assert api.order_when(order_id, FINAL, within=60)["status"] == "COMPLETED"

        # Worker 0 dies without any shutdown; the supervisor starts another in its place,
        # which connects under the same client id (the broker keeps its session).
        os.kill(pids[0], signal.SIGKILL)
        api.wait(lambda: len(workers(server).get(0, [])) == 2, within=30)
        replacement = workers(server)[0][1]
        assert replacement not in pids and alive(replacement) and alive(pids[1])
        api.wait(lambda: client_ids(server).count(f"{base}-w0") == 2, within=40)
        late = pay_some(api, 4, 4)
        for order_id in late:
            done: dict[str, Any] = api.order_when(order_id, FINAL, within=90)
            assert done["status"] == "COMPLETED", done
        orders += late

        # SIGTERM to the supervisor: every worker shuts down, the supervisor exits 0.
        assert server.terminate(within=60) == 0
        assert not any(alive(pid) for pid in [*pids, replacement])
        assert "supervisor" in server.log.read_text().splitlines()[-1]
    finally:
        sim.stop()
        server.stop()

    units, stock = asyncio.run(ledger(postgres_url))
    assert sorted(units) == sorted((order_id, 1, 1) for order_id in orders)
    for key, count in stock.items():
        assert count == expected.get(key, STOCK), key


def test_a_second_ctrl_c_kills_the_workers_still_stopping_and_exits_non_zero(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    machine = machine_name("VMWc")
    env = server_env(postgres_url, machine)
    prepare(env, tmp_path, machine)
    server = Server(env, tmp_path, args=["--workers", "2"])
    pids: list[int] = []
    try:
        server.start()
        assert server.process is not None
        api = Api(server.base_url)
        api.wait(lambda: len(client_ids(server)) == 2, within=40)
        started = workers(server)
        pids = [started[0][0], started[1][0]]
        # Worker 0 is stuck: it cannot act on the supervisor's SIGTERM, so the graceful stop
        # would wait for it until the shutdown deadline.
        os.kill(pids[0], signal.SIGSTOP)
        server.process.send_signal(signal.SIGINT)  # first Ctrl-C: graceful stop
        # The graceful stop is under way (worker 1 has stopped); worker 0 is still there.
        api.wait(lambda: not alive(pids[1]), within=40)
        assert alive(pids[0]) and server.process.poll() is None
        server.process.send_signal(signal.SIGINT)  # second Ctrl-C: now
        # Bounded only against a hang: the exit code says the workers were killed on request,
        # not at the graceful shutdown's deadline (that exits 1).
        assert server.process.wait(timeout=60) == 128 + signal.SIGINT
        assert not any(alive(pid) for pid in pids)
        lines = server.log.read_text().splitlines()
        assert any("second Ctrl-C: killing 1 worker(s)" in line for line in lines), lines[-5:]
        assert "supervisor" in lines[-1] and "killed" in lines[-1], lines[-1]
    finally:
        for pid in pids:  # never leave a stopped worker behind
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        server.stop()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"DATABASE_URL": "sqlite:///x.db"}, "PostgreSQL or MariaDB"),
        ({"MQTT_BROKER_URL": "embedded"}, "external MQTT broker"),
        ({"MQTT_SHARE_GROUP": "none"}, "MQTT_SHARE_GROUP"),
    ],
)
def test_more_than_one_worker_without_what_it_needs_is_refused_in_one_line(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
    settings: dict[str, str],
    named: str,
) -> None:
    env = {**server_env(postgres_url, "VM01"), **settings}
    done = vendhub("serve", "--workers", "2", env=env, cwd=tmp_path, timeout=30)
    assert done.returncode == 2, done.stderr + done.stdout
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in lines[0], lines
