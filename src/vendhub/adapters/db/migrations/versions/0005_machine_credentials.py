"""machine_credentials: each machine's MQTT password hash (Mosquitto's PBKDF2 format)

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-27 09:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vendhub.adapters.db.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "machine_credentials",
        sa.Column("machine_id", sa.String(length=50), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.Column("rotated_at", vendhub.adapters.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name=op.f("fk_machine_credentials_machine_id_machines"),
        ),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_machine_credentials")),
    )


def downgrade() -> None:
    op.drop_table("machine_credentials")
