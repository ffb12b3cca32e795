"""Table definitions (the schema Alembic migrations create)."""

from __future__ import annotations

import sqlalchemy as sa

from vendhub.adapters.db.types import BigId, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)

ID = sa.String(40)
Money = sa.BigInteger  # whole rupiah


def _now_col(name: str = "created_at") -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=False)


machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", sa.String(50), primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("location", sa.String(255)),
    sa.Column("status", sa.String(16), nullable=False, server_default="UNKNOWN"),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("fw", sa.String(64)),
    sa.Column("boot_id", sa.String(64)),
    sa.Column("last_seen_at", UTCDateTime()),
    sa.Column("config_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("telemetry_interval_s", sa.Integer, nullable=False, server_default="60"),
    _now_col(),
    _now_col("updated_at"),
    # sha256 of the machine's kiosk key (migration 0006); the key itself is shown once.
    sa.Column("kiosk_key_hash", sa.String(64), unique=True),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("category", sa.String(60)),
    sa.Column("price", Money, nullable=False),
    sa.Column("image_url", sa.String(500)),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    _now_col(),
    _now_col("updated_at"),
    sa.CheckConstraint("price >= 0", name="price_nonnegative"),
)

slots = sa.Table(
    "slots",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("machine_id", sa.String(50), sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("slot_number", sa.Integer, nullable=False),
    sa.Column("product_id", ID, sa.ForeignKey("products.id")),
    sa.Column("capacity", sa.Integer, nullable=False, server_default="10"),
    sa.Column("current_stock", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
    sa.Column("price_override", Money),
    sa.Column("motor_duration_ms", sa.Integer, nullable=False, server_default="1500"),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("sensed_level", sa.String(16)),
    sa.Column("sensed_at", UTCDateTime()),
    _now_col("updated_at"),
    sa.UniqueConstraint("machine_id", "slot_number"),
    # The database itself refuses overselling and negative stock.
    sa.CheckConstraint("current_stock >= 0", name="stock_nonnegative"),
    sa.CheckConstraint("reserved >= 0", name="reserved_nonnegative"),
    sa.CheckConstraint("reserved <= current_stock", name="reserved_within_stock"),
    sa.CheckConstraint("current_stock <= capacity", name="stock_within_capacity"),
    sa.CheckConstraint("slot_number >= 1", name="slot_number_positive"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("machine_id", sa.String(50), sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("total_amount", Money, nullable=False),
    sa.Column("refunded_amount", Money, nullable=False, server_default="0"),
    sa.Column("customer_phone", sa.String(32)),
    sa.Column("payment_method", sa.String(32)),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("paid_at", UTCDateTime()),
    sa.Column("dispensed_at", UTCDateTime()),
    _now_col(),
    _now_col("updated_at"),
    sa.Index(None, "status", "expires_at"),
    sa.Index(None, "machine_id", "created_at"),
    sa.CheckConstraint("total_amount >= 0", name="total_nonnegative"),
    # Who placed it (a hashed client address, or kiosk:{machine}) and the sha256 of the
    # order's access token (migration 0006): caps per client, anonymous reads and cancels.
    sa.Column("client_key", sa.String(64)),
    sa.Column("access_token_hash", sa.String(64)),
    sa.Index(None, "machine_id", "client_key", "status"),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("slot_id", ID, sa.ForeignKey("slots.id"), nullable=False),
    sa.Column("slot_number", sa.Integer, nullable=False),
    sa.Column("product_id", ID, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("product_name", sa.String(120), nullable=False),
    sa.Column("unit_price", Money, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("released", sa.Integer, nullable=False, server_default="0"),
    sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False, unique=True),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("transaction_id", sa.String(64)),
    sa.Column("payment_type", sa.String(32)),
    sa.Column("token", sa.String(255)),
    sa.Column("redirect_url", sa.String(500)),
    sa.Column("qr_string", sa.Text),
    sa.Column("paid_at", UTCDateTime()),
    _now_col(),
    _now_col("updated_at"),
    sa.Column("qr_url", sa.String(500)),
    sa.Column("gateway_expires_at", UTCDateTime()),
    # Reconciliation: when we last asked the gateway about a still-unpaid order.
    sa.Column("checked_at", UTCDateTime()),
    sa.Column("check_count", sa.Integer, nullable=False, server_default="0"),
    # A locally closed order is also closed at the gateway, so it cannot take money later.
    sa.Column("gateway_closed_at", UTCDateTime()),
    sa.Column("close_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("close_next_at", UTCDateTime()),
    sa.Column("close_error", sa.Text),
    sa.Index(None, "status", "gateway_closed_at"),
)

payment_notifications = sa.Table(
    "payment_notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("order_id", ID, nullable=False, index=True),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("transaction_status", sa.String(32), nullable=False),
    sa.Column("fraud_status", sa.String(32)),
    sa.Column("status_code", sa.String(8)),
    sa.Column("gross_amount", sa.String(32)),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    # One row per (order, transaction, status): a duplicate notification is a no-op.
    sa.UniqueConstraint("order_id", "transaction_id", "transaction_status"),
    sa.Column("source", sa.String(16), nullable=False, server_default="webhook"),
)

dispenses = sa.Table(
    "dispenses",
    metadata,
    sa.Column("id", ID, primary_key=True),  # = the commandId on the wire
    sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("order_item_id", ID, sa.ForeignKey("order_items.id"), nullable=False),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("slot_id", ID, sa.ForeignKey("slots.id"), nullable=False),
    sa.Column("slot_number", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("timeout_ms", sa.Integer, nullable=False),
    sa.Column("expires_at", UTCDateTime()),
    sa.Column("command_sent_at", UTCDateTime()),
    sa.Column("next_attempt_at", UTCDateTime()),
    sa.Column("completed_at", UTCDateTime()),
    sa.Column("success", sa.Boolean),
    sa.Column("drop_detected", sa.Boolean),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("error_message", sa.Text),
    # Equals machine_id while IN_FLIGHT, else NULL: one command in flight per machine,
    # enforced by the unique index (NULLs never collide).
    sa.Column("inflight_machine", sa.String(50), unique=True),
    _now_col(),
    sa.Index(None, "machine_id", "status", "created_at"),
    # When the unit went in flight: no honest result can arrive sooner than its durationMs.
    sa.Column("dispatched_at", UTCDateTime()),
)

dispense_results = sa.Table(
    "dispense_results",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("command_id", sa.String(64)),
    sa.Column("order_id", sa.String(64)),
    sa.Column("slot_number", sa.Integer),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Index(None, "command_id"),
    # The unit a result was applied to, and what it said (commandId-less copies, migration 0004).
    sa.Column("dispense_id", ID),
    sa.Column("fingerprint", sa.String(120)),
    sa.Index(None, "machine_id", "order_id", "slot_number"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("qos", sa.Integer, nullable=False, server_default="1"),
    sa.Column("retain", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("dispense_id", ID),
    sa.Column("published_at", UTCDateTime()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    _now_col(),
    sa.Index(None, "published_at", "id"),
    # A settled unit closes its unsent commands by this key (migration 0010).
    sa.Index(None, "dispense_id"),
    # A publisher's lease on an unpublished row (migration 0003).
    sa.Column("claimed_until", UTCDateTime()),
)

stock_logs = sa.Table(
    "stock_logs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("slot_id", ID, sa.ForeignKey("slots.id"), nullable=False),
    sa.Column("slot_number", sa.Integer, nullable=False),
    sa.Column("product_id", ID),
    sa.Column("change_type", sa.String(16), nullable=False),
    sa.Column("quantity_change", sa.Integer, nullable=False),
    sa.Column("stock_before", sa.Integer, nullable=False),
    sa.Column("stock_after", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("order_id", ID),
    sa.Column("dispense_id", ID),
    sa.Column("user_id", ID),
    _now_col(),
    sa.Index(None, "machine_id", "created_at"),
    # A dispensed unit decrements stock once, whatever duplicates arrive.
    sa.UniqueConstraint("dispense_id", "change_type"),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("dispense_id", ID, unique=True),  # one refund per failed unit
    sa.Column("refund_key", sa.String(64), nullable=False, unique=True),
    sa.Column("amount", Money, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", UTCDateTime()),
    sa.Column("provider_ref", sa.String(64)),
    _now_col(),
    _now_col("updated_at"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.Column("completed_at", UTCDateTime()),
    sa.Index(None, "status", "next_attempt_at"),
    # The payment an excess/late refund pays back: at most one refund per such payment.
    sa.Column("receipt_id", ID, unique=True),
)

# The money ledger (migration 0004): one row per gateway transaction that paid for an order.
payment_receipts = sa.Table(
    "payment_receipts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("order_id", ID, sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("transaction_id", sa.String(64), nullable=False),
    sa.Column("transaction_status", sa.String(32), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("payment_type", sa.String(32)),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False, index=True),
    # A transaction told twice (capture then settlement, webhook then status) is one payment.
    sa.UniqueConstraint("order_id", "transaction_id"),
    sa.CheckConstraint("amount >= 0", name="amount_nonnegative"),
)

telemetry = sa.Table(
    "telemetry",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("device_ts", sa.BigInteger),
    sa.Column("temperature", sa.Float),
    sa.Column("humidity", sa.Float),
    sa.Column("rssi", sa.Integer),
    sa.Column("door", sa.String(32)),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index(None, "machine_id", "received_at"),
    sa.Index(None, "received_at"),  # the hourly rollup reads the whole fleet's hour
)

# Hourly min/avg/max per machine; raw `telemetry` rows are deleted once rolled up and older
# than TELEMETRY_RETENTION_DAYS (services/retention.py).
telemetry_hourly = sa.Table(
    "telemetry_hourly",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("hour", UTCDateTime(), nullable=False),
    sa.Column("readings", sa.Integer, nullable=False),
    sa.Column("temperature_min", sa.Float),
    sa.Column("temperature_avg", sa.Float),
    sa.Column("temperature_max", sa.Float),
    sa.Column("humidity_min", sa.Float),
    sa.Column("humidity_avg", sa.Float),
    sa.Column("humidity_max", sa.Float),
    sa.Column("rssi_min", sa.Integer),
    sa.Column("rssi_avg", sa.Float),
    sa.Column("rssi_max", sa.Integer),
    sa.UniqueConstraint("machine_id", "hour"),
    sa.Index(None, "hour"),
)

machine_events = sa.Table(
    "machine_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("machine_id", sa.String(50), nullable=False),
    sa.Column("event_type", sa.String(24), nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("severity", sa.String(8), nullable=False, server_default="info"),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.JSON),
    _now_col(),
    sa.Index(None, "machine_id", "created_at"),
    # An operator acknowledged this alert (migration 0007); NULL while it is open.
    sa.Column("acknowledged_at", UTCDateTime()),
    sa.Column("acknowledged_by", sa.String(64)),
    sa.Index(None, "acknowledged_at", "created_at"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    _now_col(),
    # Bumped on deactivation, role or password change: older tokens stop working (0006).
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
)

# One MQTT login per machine (username = machine id); only Mosquitto's hash of the password.
machine_credentials = sa.Table(
    "machine_credentials",
    metadata,
    sa.Column("machine_id", sa.String(50), sa.ForeignKey("machines.id"), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
    _now_col(),
    _now_col("rotated_at"),
)
