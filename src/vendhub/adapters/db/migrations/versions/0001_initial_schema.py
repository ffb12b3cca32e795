"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 02:02:53.512178
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispense_results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("command_id", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("slot_number", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispense_results")),
    )
    with op.batch_alter_table("dispense_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispense_results_command_id"), ["command_id"], unique=False
        )

    op.create_table(
        "machine_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("event_type", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("severity", sa.String(length=8), server_default="info", nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machine_events")),
    )
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_machine_events_machine_id_created_at"),
            ["machine_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "machines",
        sa.Column("id", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="UNKNOWN", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("fw", sa.String(length=64), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("last_seen_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("config_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("telemetry_interval_s", sa.Integer(), server_default="60", nullable=False),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machines")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("qos", sa.Integer(), server_default="1", nullable=False),
        sa.Column("retain", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("dispense_id", sa.String(length=40), nullable=True),
        sa.Column("published_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_published_at_id"), ["published_at", "id"], unique=False
        )

    op.create_table(
        "payment_notifications",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_status", sa.String(length=32), nullable=False),
        sa.Column("fraud_status", sa.String(length=32), nullable=True),
        sa.Column("status_code", sa.String(length=8), nullable=True),
        sa.Column("gross_amount", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("received_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_notifications")),
        sa.UniqueConstraint(
            "order_id",
            "transaction_id",
            "transaction_status",
            name=op.f("uq_payment_notifications_order_id_transaction_id_transaction_status"),
        ),
    )
    with op.batch_alter_table("payment_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payment_notifications_order_id"), ["order_id"], unique=False
        )

    op.create_table(
        "products",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.String(length=60), nullable=True),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("image_url", sa.String(length=500), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("price >= 0", name=op.f("ck_products_price_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    op.create_table(
        "telemetry",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("received_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("device_ts", sa.BigInteger(), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("humidity", sa.Float(), nullable=True),
        sa.Column("rssi", sa.Integer(), nullable=True),
        sa.Column("door", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry")),
    )
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telemetry_machine_id_received_at"),
            ["machine_id", "received_at"],
            unique=False,
        )

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("total_amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("customer_phone", sa.String(length=32), nullable=True),
        sa.Column("payment_method", sa.String(length=32), nullable=True),
        sa.Column("expires_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("paid_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("dispensed_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("total_amount >= 0", name=op.f("ck_orders_total_nonnegative")),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_orders_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orders_machine_id_created_at"),
            ["machine_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_orders_status_expires_at"), ["status", "expires_at"], unique=False
        )

    op.create_table(
        "slots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("slot_number", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.String(length=40), nullable=True),
        sa.Column("capacity", sa.Integer(), server_default="10", nullable=False),
        sa.Column("current_stock", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reserved", sa.Integer(), server_default="0", nullable=False),
        sa.Column("price_override", sa.BigInteger(), nullable=True),
        sa.Column("motor_duration_ms", sa.Integer(), server_default="1500", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("sensed_level", sa.String(length=16), nullable=True),
        sa.Column("sensed_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "current_stock <= capacity", name=op.f("ck_slots_stock_within_capacity")
        ),
        sa.CheckConstraint("current_stock >= 0", name=op.f("ck_slots_stock_nonnegative")),
        sa.CheckConstraint(
            "reserved <= current_stock", name=op.f("ck_slots_reserved_within_stock")
        ),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_slots_reserved_nonnegative")),
        sa.CheckConstraint("slot_number >= 1", name=op.f("ck_slots_slot_number_positive")),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_slots_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_slots_product_id_products")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slots")),
        sa.UniqueConstraint(
            "machine_id", "slot_number", name=op.f("uq_slots_machine_id_slot_number")
        ),
    )
    op.create_table(
        "order_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("slot_id", sa.String(length=40), nullable=False),
        sa.Column("slot_number", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.String(length=40), nullable=False),
        sa.Column("product_name", sa.String(length=120), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("released", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_order_items_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_items_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_order_items_product_id_products")
        ),
        sa.ForeignKeyConstraint(
            ["slot_id"], ["slots.id"], name=op.f("fk_order_items_slot_id_slots")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_items")),
    )
    with op.batch_alter_table("order_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_items_order_id"), ["order_id"], unique=False)

    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=True),
        sa.Column("payment_type", sa.String(length=32), nullable=True),
        sa.Column("token", sa.String(length=255), nullable=True),
        sa.Column("redirect_url", sa.String(length=500), nullable=True),
        sa.Column("qr_string", sa.Text(), nullable=True),
        sa.Column("paid_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_payments_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("order_id", name=op.f("uq_payments_order_id")),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("dispense_id", sa.String(length=40), nullable=True),
        sa.Column("refund_key", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("provider_ref", sa.String(length=64), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_refunds_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("dispense_id", name=op.f("uq_refunds_dispense_id")),
        sa.UniqueConstraint("refund_key", name=op.f("uq_refunds_refund_key")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refunds_order_id"), ["order_id"], unique=False)

    op.create_table(
        "stock_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("slot_id", sa.String(length=40), nullable=False),
        sa.Column("slot_number", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.String(length=40), nullable=True),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column("quantity_change", sa.Integer(), nullable=False),
        sa.Column("stock_before", sa.Integer(), nullable=False),
        sa.Column("stock_after", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("dispense_id", sa.String(length=40), nullable=True),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["slot_id"], ["slots.id"], name=op.f("fk_stock_logs_slot_id_slots")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_logs")),
        sa.UniqueConstraint(
            "dispense_id", "change_type", name=op.f("uq_stock_logs_dispense_id_change_type")
        ),
    )
    with op.batch_alter_table("stock_logs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stock_logs_machine_id_created_at"),
            ["machine_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "dispenses",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("order_item_id", sa.String(length=40), nullable=False),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("slot_id", sa.String(length=40), nullable=False),
        sa.Column("slot_number", sa.Integer(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("timeout_ms", sa.Integer(), nullable=False),
        sa.Column("expires_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("command_sent_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("next_attempt_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("completed_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("drop_detected", sa.Boolean(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("inflight_machine", sa.String(length=50), nullable=True),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_dispenses_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["order_item_id"],
            ["order_items.id"],
            name=op.f("fk_dispenses_order_item_id_order_items"),
        ),
        sa.ForeignKeyConstraint(["slot_id"], ["slots.id"], name=op.f("fk_dispenses_slot_id_slots")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispenses")),
        sa.UniqueConstraint("inflight_machine", name=op.f("uq_dispenses_inflight_machine")),
    )
    with op.batch_alter_table("dispenses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispenses_machine_id_status_created_at"),
            ["machine_id", "status", "created_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_dispenses_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes; dropping an index first fails on MariaDB when a
    # foreign key needs it (errno 1553).
    op.drop_table("dispenses")
    op.drop_table("stock_logs")
    op.drop_table("refunds")
    op.drop_table("payments")
    op.drop_table("order_items")
    op.drop_table("slots")
    op.drop_table("orders")
    op.drop_table("users")
    op.drop_table("telemetry")
    op.drop_table("products")
    op.drop_table("payment_notifications")
    op.drop_table("outbox")
    op.drop_table("machines")
    op.drop_table("machine_events")
    op.drop_table("dispense_results")
