"""`vendhub bench`'s table: each figure beside the ceiling measured in the same run."""

from __future__ import annotations

from vendhub.bench import table


def test_each_figure_is_printed_beside_its_ceiling_and_their_ratio() -> None:
    figures = {
        "statements_per_order": 38.0,
        "transactions_per_order": 7.0,
        "asyncpg_us_per_statement": 50.0,
        "core_us_per_statement": 200.0,
        "orders_per_s_1p": 40.0,
        "cpu_ms_per_order_1p": 19.0,
        "webhook_to_command_p50_ms_1p": 900.0,
        "webhook_to_command_p99_ms_1p": 1500.0,
        "webhooks_shed_1p": 0.0,
        "telemetry_msgs_per_s": 9000.0,
        "telemetry_raw_broker_msgs_per_s": 60000.0,
        "telemetry_share_stored": 1.0,
    }
    lines = table(figures, 32)
    # Rows with a ceiling end in three columns: measured, ceiling, ratio.
    rows = {line.rsplit(None, 3)[0].strip(): line.split() for line in lines[1:]}
    # 38 statements at 50 µs on raw asyncpg: 1.9 ms per order, 526 orders/s on one core.
    orders = rows["orders/s end to end, 32 in flight, 1 process(es)"]
    assert orders[-3:] == ["40.0", "526.3", "0.08"]
    assert rows["CPU ms per order (1 process(es))"][-3:] == ["19.0", "1.9", "10.00"]
    # Queueing alone: 32 in flight at 40/s is 800 ms.
    assert rows["webhook→command p50 ms (1 process(es))"][-3:] == ["900.0", "800.0", "1.12"]
    assert rows["CPU µs per statement, SQLAlchemy Core"][-3:] == ["200", "50", "4.00"]
    assert rows["telemetry stored msgs/s"][-3:] == ["9000", "60000", "0.15"]
    assert rows["statements per order (service layer)"][-3:] == ["38.0", "15.0", "2.53"]
    assert not any("2 process" in line for line in lines)
