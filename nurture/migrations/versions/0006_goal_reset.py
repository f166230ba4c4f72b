"""goal reset: when a journey's goal was removed, so conversion counting restarts there

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No backfill: a removal published before this revision was not recorded, so existing
    # journeys keep counting from their first enrollment.
    op.add_column("journeys", sa.Column("goal_reset_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("journeys", "goal_reset_at")
