"""security: token_version on users, order access tokens and client keys, kiosk keys

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-27 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_key", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("access_token_hash", sa.String(64), nullable=True))
        batch_op.create_index(
            "ix_orders_machine_id_client_key_status", ["machine_id", "client_key", "status"]
        )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kiosk_key_hash", sa.String(64), nullable=True))
        batch_op.create_unique_constraint("uq_machines_kiosk_key_hash", ["kiosk_key_hash"])


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_constraint("uq_machines_kiosk_key_hash", type_="unique")
        batch_op.drop_column("kiosk_key_hash")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_machine_id_client_key_status")
        batch_op.drop_column("access_token_hash")
        batch_op.drop_column("client_key")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("token_version")
