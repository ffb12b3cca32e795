"""The seed's SQL checks (testing guide, "Verify Database") run as written on every database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from tests.conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL, _admin, _create_database
from tests.integration.helpers import order, outbox_rows, pay, quick_shop, report
from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.migrate import alembic_config
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration

SEED_COLUMNS = {
    "order_id",
    "machine_id",
    "slot_number",
    "command_sent_at",
    "completed_at",
    "success",
    "drop_detected",
    "duration_ms",
    "error_message",
    "created_at",
}


async def _vended(ctx: ServiceContext, dropped: bool) -> str:
    await quick_shop(ctx, stock=5)
    order_id = await order(ctx, slot=1)
    assert await pay(ctx, order_id, 8000) == "paid"
    [command] = [r["body"] for r in await outbox_rows(ctx, "dispense")]
    await report(ctx, command, dropped=dropped, error=None if dropped else "JAM")
    return order_id


async def test_seed_checks_find_the_completed_order_its_dispense_log_and_stock_log(
    ctx: ServiceContext,
) -> None:
    order_id = await _vended(ctx, dropped=True)
    async with ctx.engine.connect() as conn:
        # The seed's three queries, with ORDER_ID bound as a parameter.
        [placed] = (
            await conn.execute(
                sa.text("SELECT id, status, paid_at, dispensed_at FROM orders WHERE id = :o"),
                {"o": order_id},
            )
        ).mappings()
        logs = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM dispense_logs WHERE order_id = :o"), {"o": order_id}
                )
            )
            .mappings()
            .all()
        )
        stock = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM stock_logs WHERE reason LIKE :r"),
                    {"r": f"%{order_id}%"},
                )
            )
            .mappings()
            .all()
        )
        seed_style = await conn.scalar(
            sa.text(
                "SELECT COUNT(*) FROM dispense_logs "
                "WHERE order_id = :o AND success = 1 AND drop_detected = 1"
            ),
            {"o": order_id},
        )
    assert placed["status"] == "COMPLETED" and placed["dispensed_at"] is not None
    [log] = logs
    assert set(log) >= SEED_COLUMNS
    assert (log["success"], log["drop_detected"], log["duration_ms"]) == (1, 1, 1500)
    # command_sent_at is set at the broker's PUBACK; no publisher runs here.
    assert log["completed_at"] is not None and log["command_sent_at"] is None
    assert log["slot_number"] == 1 and log["machine_id"] == "VM01"
    assert seed_style == 1
    assert [(s["change_type"], s["quantity_change"]) for s in stock] == [("DISPENSE", -1)]


async def test_a_jammed_unit_shows_in_dispense_logs_as_failed_with_its_error(
    ctx: ServiceContext,
) -> None:
    order_id = await _vended(ctx, dropped=False)
    async with ctx.engine.connect() as conn:
        [log] = (
            await conn.execute(
                sa.text("SELECT * FROM dispense_logs WHERE order_id = :o"), {"o": order_id}
            )
        ).mappings()
    assert (log["success"], log["drop_detected"], log["error_message"]) == (0, 0, "JAM")


async def test_the_view_is_dropped_by_downgrade_and_made_again_by_upgrade(
    backend: str, tmp_path: Path
) -> None:
    url, drop = await asyncio.to_thread(_create_database, backend, tmp_path)
    try:
        # Down to just before 0009, wherever the lead chains it.
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0009-1")
        assert not await _has_view(url)
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        assert await _has_view(url)
    finally:
        if drop:
            await _admin(PG_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL, drop)


async def _has_view(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_view_names())
    finally:
        await engine.dispose()
    return "dispense_logs" in names
