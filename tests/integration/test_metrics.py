"""/metrics reports the fleet's state: orders, commands, outbox, settled units, latency."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import api_client, order, outbox_rows, pay, quick_shop, report
from vendhub.services import commands
from vendhub.services.orders import get_order

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_metrics_count_orders_commands_and_dispense_latency(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    async with api_client(database_urls[backend]) as (client, container):
        ctx = container.ctx
        await quick_shop(ctx)
        done, waiting = await order(ctx, slot=1), await order(ctx, slot=2)
        await pay(ctx, done, 8000)
        # The publisher's bookkeeping (no broker here): the command counts as sent.
        await commands.mark_done(ctx, await commands.pending(ctx), [])
        [command] = await outbox_rows(ctx, "dispense")
        assert await report(ctx, command["body"]) == "APPLIED"

        samples = _samples((await client.get("/metrics")).text)
        assert samples[("vendhub_orders", (("status", "COMPLETED"),))] == 1
        assert samples[("vendhub_orders", (("status", "PENDING"),))] == 1
        assert samples[("vendhub_commands", (("state", "DROPPED"),))] == 1
        assert samples[("vendhub_commands", (("state", "IN_FLIGHT"),))] == 0
        assert samples[("vendhub_outbox_pending", ())] == 1  # the ack, not yet published
        assert samples[("vendhub_units_settled_total", (("outcome", "dropped"),))] == 1
        assert samples[("vendhub_dispense_latency_seconds_count", ())] == 1
        assert samples[("vendhub_mqtt_connected", ())] == 0
        assert (await get_order(ctx, waiting))["status"] == "PENDING"
        by_status = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "vendhub_orders" and value
        }
        assert by_status == {"COMPLETED": 1, "PENDING": 1}
