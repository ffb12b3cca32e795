"""machine_events: acknowledged_at / acknowledged_by, so operators can acknowledge alerts

Revision ID: 0007
Revises: 0003
Create Date: 2026-11-27 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("acknowledged_at", vendhub.adapters.db.types.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("acknowledged_by", sa.String(64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_machine_events_acknowledged_at_created_at"),
            ["acknowledged_at", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machine_events_acknowledged_at_created_at"))
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("acknowledged_at")
