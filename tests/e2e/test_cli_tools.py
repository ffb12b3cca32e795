"""`vendhub sim` and `vendhub mqtt …` follow the configuration; output is not wrapped."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from tests.conftest import MQTT_HOST, MQTT_PORT, free_port, unique
from tests.e2e.conftest import VENDHUB, clean_env, vendhub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def configured(tmp_path: Path, prefix: str, **extra: str) -> dict[str, str]:
    values = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'tools.db'}",
        "MQTT_BROKER_URL": f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        "MQTT_TOPIC_PREFIX": prefix,
    }
    return clean_env(**{**values, **extra})


async def test_sim_register_creates_its_machines_and_talks_on_the_configured_prefix(
    tmp_path: Path,
) -> None:
    prefix, pattern = unique("tools"), unique("S") + "{n:02d}"
    env = configured(tmp_path, prefix)
    assert vendhub("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    ids = [pattern.format(n=n) for n in (1, 2, 3)]
    async with aiomqtt.Client(MQTT_HOST, MQTT_PORT, identifier=unique("tools-sub-")) as client:
        await client.subscribe(f"{prefix}/+/status", qos=1)
        process = await asyncio.create_subprocess_exec(
            *VENDHUB,
            "sim",
            "--register",
            "--machines",
            "3",
            "--id-pattern",
            pattern,
            "--stock",
            "4",
            "--duration",
            "3",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        seen: set[str] = set()

        async def statuses() -> None:
            async for message in client.messages:
                if json.loads(message.payload)["status"] == "ONLINE":  # type: ignore[arg-type]
                    seen.add(str(message.topic).split("/")[-2])
                    if seen == set(ids):
                        return

        await asyncio.wait_for(statuses(), 30)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    text = stderr.decode()
    assert "registered 3 new machine(s)" in text
    assert "registering machines" in text and "connecting machines" in text  # progress
    with sqlite3.connect(tmp_path / "tools.db") as conn:
        rows = conn.execute(
            "SELECT machine_id, count(*), sum(current_stock) FROM slots GROUP BY machine_id"
        ).fetchall()
    assert sorted(rows) == [(machine_id, 6, 24) for machine_id in ids]


def test_printed_json_is_one_line_even_in_a_narrow_terminal(tmp_path: Path) -> None:
    prefix = unique("tools")
    payload = json.dumps({"temperature": 4.5, "note": "x" * 150, "slots": [{"id": 1}]})
    env = configured(tmp_path, prefix, COLUMNS="80")
    done = vendhub("mqtt", "publish", "--payload", payload, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"published to {prefix}/VM01/telemetry: {payload}" in done.stderr.splitlines()


def test_mqtt_tools_with_no_broker_there_say_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = configured(tmp_path, unique("tools"), MQTT_BROKER_URL=f"mqtt://127.0.0.1:{port}")
    done = vendhub("mqtt", "publish", env=env, cwd=tmp_path)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 2
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "MQTT_BROKER_URL" in lines[0]


def test_mqtt_tools_run_beside_serve_use_its_embedded_broker(tmp_path: Path) -> None:
    """`serve` records where its embedded broker listens; tools started in the same directory
    use it instead of the default port (where another broker may run)."""
    import subprocess
    import time

    import httpx

    http_port, broker_port, prefix = free_port(), free_port(), unique("tools")
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    serve_env = clean_env(
        DATABASE_URL=db,
        PORT=str(http_port),
        MQTT_EMBEDDED_PORT=str(broker_port),
        MQTT_TOPIC_PREFIX=prefix,
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*VENDHUB, "serve", "--migrate"], env=serve_env, cwd=tmp_path, stdout=out, stderr=out
        )
    tool_env = clean_env(DATABASE_URL=db, MQTT_TOPIC_PREFIX=prefix)  # no broker port given

    async def publish_and_receive() -> bytes:
        async with aiomqtt.Client("127.0.0.1", broker_port, identifier=unique("emb-")) as client:
            await client.subscribe(f"{prefix}/VM01/telemetry", qos=1)
            done = await asyncio.to_thread(vendhub, "mqtt", "publish", env=tool_env, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert isinstance(message.payload, bytes)
        return message.payload

    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert json.loads(asyncio.run(publish_and_receive()))["temperature"] == 4.5
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not (tmp_path / ".vendhub-broker").exists()  # removed when serve stops
