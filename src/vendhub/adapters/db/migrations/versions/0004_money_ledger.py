"""money ledger: one row per gateway payment, refunds tied to payments, result fingerprints

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_receipts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_status", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("payment_type", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_payment_receipts_amount_nonnegative")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_payment_receipts_order_id_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_receipts")),
        sa.UniqueConstraint(
            "order_id", "transaction_id", name=op.f("uq_payment_receipts_order_id_transaction_id")
        ),
    )
    op.create_index(
        op.f("ix_payment_receipts_received_at"), "payment_receipts", ["received_at"], unique=False
    )
    # Payments recorded before the ledger existed become its first rows.
    op.execute(
        "INSERT INTO payment_receipts (id, order_id, transaction_id, transaction_status, amount,"
        " payment_type, source, received_at)"
        " SELECT id, order_id, COALESCE(transaction_id, '-'), 'settlement', amount, payment_type,"
        " 'migration', paid_at FROM payments WHERE paid_at IS NOT NULL"
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("receipt_id", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_refunds_receipt_id"), ["receipt_id"])
    with op.batch_alter_table("dispenses", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dispatched_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table("dispense_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispense_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=120), nullable=True))
        batch_op.create_index(
            op.f("ix_dispense_results_machine_id_order_id_slot_number"),
            ["machine_id", "order_id", "slot_number"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("dispense_results", schema=None) as batch_op:
        batch_op.drop_index(op.f("ix_dispense_results_machine_id_order_id_slot_number"))
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("dispense_id")
    with op.batch_alter_table("dispenses", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_refunds_receipt_id"), type_="unique")
        batch_op.drop_column("receipt_id")
    op.drop_index(op.f("ix_payment_receipts_received_at"), table_name="payment_receipts")
    op.drop_table("payment_receipts")
