"""dispense_logs: the seed's table as a view over dispenses, so its SQL checks run as written

Revision ID: 0009
Revises: 0003
Create Date: 2026-11-27 09:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _flag(column: str) -> str:
    # The seed ran on MySQL, where BOOLEAN is TINYINT: its checks read success = 1.
    return f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} THEN 1 ELSE 0 END AS {column}"


def upgrade() -> None:
    op.execute(
        "CREATE VIEW dispense_logs AS SELECT "
        "id, order_id, machine_id, slot_number, command_sent_at, completed_at, "
        f"{_flag('success')}, {_flag('drop_detected')}, "
        "duration_ms, error_message, created_at "
        "FROM dispenses"
    )


def downgrade() -> None:
    op.execute("DROP VIEW dispense_logs")
