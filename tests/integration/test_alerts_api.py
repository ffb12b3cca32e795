"""Alerts over HTTP on every database: filters, pagination, acknowledgement once, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    api_client,
    assert_error,
    bearer,
    outbox_rows,
    pay,
    quick_shop,
    report,
)
from vendhub.services import alerts
from vendhub.services.alerts import Severity
from vendhub.services.checkout import checkout
from vendhub.services.orders import OrderLine

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with api_client(database_urls[backend]) as (http, container):
        await quick_shop(container.ctx, stock=5)
        yield http, container


async def _events(container: Any) -> None:
    now = container.ctx.clock()
    async with container.ctx.engine.begin() as conn:
        for i, (machine, kind, severity) in enumerate(
            [
                ("VM01", "STATUS", Severity.INFO),
                ("VM01", "VEND_FAILED", Severity.WARNING),
                ("VM02", "STATUS", Severity.WARNING),
                ("VM01", "REFUND_FAILED", Severity.CRITICAL),
                ("VM02", "UNKNOWN_RESULT", Severity.WARNING),
            ]
        ):
            await alerts.record(
                conn,
                machine_id=machine,
                kind=kind,
                message=f"event {i}",
                severity=severity,
                now=now + timedelta(seconds=i),
            )


async def test_alerts_are_listed_newest_first_filtered_and_paged_without_info_events(
    client: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = client
    await _events(container)
    admin = bearer(container, "u-admin", "ADMIN", "boss")
    assert_error(await http.get("/api/alerts"), 401)

    everything = (await http.get("/api/alerts", headers=admin)).json()
    assert everything["total"] == 4  # the info event is timeline, not an alert
    assert [a["message"] for a in everything["data"]] == [
        "event 4",
        "event 3",
        "event 2",
        "event 1",
    ]
    assert set(everything["data"][0]) >= {"id", "machine_id", "kind", "severity", "created_at"}

    page = (await http.get("/api/alerts?limit=2&offset=2", headers=admin)).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 2)
    assert [a["message"] for a in page["data"]] == ["event 2", "event 1"]

    vm01 = (await http.get("/api/alerts?machine_id=VM01", headers=admin)).json()
    assert {a["kind"] for a in vm01["data"]} == {"VEND_FAILED", "REFUND_FAILED"}
    critical = (await http.get("/api/alerts?severity=critical", headers=admin)).json()
    assert [a["kind"] for a in critical["data"]] == ["REFUND_FAILED"]
    info = (await http.get("/api/alerts?severity=info", headers=admin)).json()
    assert [a["message"] for a in info["data"]] == ["event 0"]
    kind = (await http.get("/api/alerts?kind=UNKNOWN_RESULT", headers=admin)).json()
    assert [a["machine_id"] for a in kind["data"]] == ["VM02"]

    for bad in ("limit=0", "limit=201", "offset=-1", "severity=loud", "state=closed"):
        assert_error(await http.get(f"/api/alerts?{bad}", headers=admin), 422)
    assert_error(await http.get("/api/alerts?since=2026-11-27T00:00:00", headers=admin), 422)


async def test_an_alert_is_acknowledged_once_with_who_and_when_and_auditors_may_not(
    client: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = client
    await _events(container)
    tech = bearer(container, "u-tech", "TECHNICIAN", "tina")
    admin = bearer(container, "u-admin", "ADMIN", "boss")
    auditor = bearer(container, "u-audit", "AUDITOR", "audrey")
    first = (await http.get("/api/alerts?state=open", headers=tech)).json()["data"][0]

    assert_error(await http.post(f"/api/alerts/{first['id']}/ack", headers=auditor), 403)
    acked = await http.post(f"/api/alerts/{first['id']}/ack", headers=tech)
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert body["acknowledged_by"] == "tina" and body["acknowledged_at"] is not None

    again = (await http.post(f"/api/alerts/{first['id']}/ack", headers=admin)).json()
    assert (again["acknowledged_by"], again["acknowledged_at"]) == ("tina", body["acknowledged_at"])

    still_open = (await http.get("/api/alerts?state=open", headers=tech)).json()
    assert first["id"] not in [a["id"] for a in still_open["data"]]
    assert still_open["total"] == 3
    done = (await http.get("/api/alerts?state=acknowledged", headers=tech)).json()
    assert [a["id"] for a in done["data"]] == [first["id"]]

    assert_error(await http.post("/api/alerts/999999/ack", headers=tech), 404)
    assert_error(await http.post("/api/alerts/abc/ack", headers=tech), 422)


async def test_a_failed_vend_raises_a_vend_failed_alert_naming_the_order(
    client: tuple[httpx.AsyncClient, Any],
) -> None:
    _http, container = client
    ctx = container.ctx
    order_id = await checkout(
        ctx,
        container.payments,
        "VM01",
        [OrderLine(slot_number=2)],
        customer_phone=None,
        payment_method=None,
    )
    ctx.mqtt_connected = lambda: True
    await pay(ctx, order_id, 5000)
    [command] = [r["body"] for r in await outbox_rows(ctx, "dispense")]
    await report(ctx, command, dropped=False, error="MOTOR_JAM")
    found = await alerts.list_alerts(ctx, alerts.AlertFilter(kind="VEND_FAILED"), 10, 0)
    [alert] = found.items
    assert alert["machine_id"] == "VM01" and alert["severity"] == "warning"
    assert alert["details"]["order_id"] == order_id and order_id in alert["message"]
