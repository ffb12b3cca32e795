"""payments: gateway QR/expiry, reconciliation and gateway-close bookkeeping; refund completion

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DT = vendhub.adapters.db.types.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("qr_url", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("gateway_expires_at", UTC_DT(), nullable=True))
        batch_op.add_column(sa.Column("checked_at", UTC_DT(), nullable=True))
        batch_op.add_column(
            sa.Column("check_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("gateway_closed_at", UTC_DT(), nullable=True))
        batch_op.add_column(
            sa.Column("close_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("close_next_at", UTC_DT(), nullable=True))
        batch_op.add_column(sa.Column("close_error", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_payments_status_gateway_closed_at"),
            ["status", "gateway_closed_at"],
            unique=False,
        )
    with op.batch_alter_table("payment_notifications", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="webhook", nullable=False)
        )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("completed_at", UTC_DT(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_refunds_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )
    # Orders closed before this revision were never closed at a gateway that could still
    # take money for them; do not send a burst of expire calls for history on first start.
    op.execute(
        "UPDATE payments SET gateway_closed_at = updated_at WHERE status IN ('EXPIRED', 'FAILED')"
    )


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refunds_status_next_attempt_at"))
        batch_op.drop_column("completed_at")
    with op.batch_alter_table("payment_notifications", schema=None) as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_status_gateway_closed_at"))
        for column in (
            "close_error",
            "close_next_at",
            "close_attempts",
            "gateway_closed_at",
            "check_count",
            "checked_at",
            "gateway_expires_at",
            "qr_url",
        ):
            batch_op.drop_column(column)
