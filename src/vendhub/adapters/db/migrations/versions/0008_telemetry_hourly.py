"""telemetry_hourly: hourly min/avg/max per machine, kept longer than raw readings

Revision ID: 0008
Revises: 0003
Create Date: 2026-11-27 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_hourly",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("hour", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("temperature_min", sa.Float(), nullable=True),
        sa.Column("temperature_avg", sa.Float(), nullable=True),
        sa.Column("temperature_max", sa.Float(), nullable=True),
        sa.Column("humidity_min", sa.Float(), nullable=True),
        sa.Column("humidity_avg", sa.Float(), nullable=True),
        sa.Column("humidity_max", sa.Float(), nullable=True),
        sa.Column("rssi_min", sa.Integer(), nullable=True),
        sa.Column("rssi_avg", sa.Float(), nullable=True),
        sa.Column("rssi_max", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_hourly")),
        sa.UniqueConstraint("machine_id", "hour", name=op.f("uq_telemetry_hourly_machine_id_hour")),
    )
    with op.batch_alter_table("telemetry_hourly", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telemetry_hourly_hour"), ["hour"], unique=False)
    # The rollup reads one hour of the whole fleet at a time.
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_telemetry_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_received_at"))
    with op.batch_alter_table("telemetry_hourly", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_hourly_hour"))
    op.drop_table("telemetry_hourly")
