"""messages: 'attempting' (the provider may have the message) and 'unknown' states, attempted_at

Revision ID: 0012
Revises: 0016
Create Date: 2026-12-01 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("message_status", "messages", type_="check")
    op.create_check_constraint(
        "message_status",
        "messages",
        "status IN ('sending', 'attempting', 'sent', 'skipped', 'failed', 'unknown')",
    )
    op.add_column("messages", sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "attempted_at")
    op.execute("UPDATE messages SET status = 'sending' WHERE status IN ('attempting', 'unknown')")
    op.drop_constraint("message_status", "messages", type_="check")
    op.create_check_constraint(
        "message_status", "messages", "status IN ('sending', 'sent', 'skipped', 'failed')"
    )
