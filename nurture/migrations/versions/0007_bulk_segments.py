"""bulk enrollments of a segment: list or segment, one row per (scheduled) run

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("bulk_enrollments", "list_id", existing_type=sa.Uuid(), nullable=True)
    op.add_column("bulk_enrollments", sa.Column("segment_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "bulk_enrollments_segment_id_fkey",
        "bulk_enrollments",
        "segments",
        ["segment_id"],
        ["id"],
        ondelete="CASCADE",
    )
    # A scheduled run opens its row from its workflow id: at most one row per run.
    op.create_unique_constraint(
        "bulk_enrollments_workflow_id_key", "bulk_enrollments", ["workflow_id"]
    )


def downgrade() -> None:
    op.drop_constraint("bulk_enrollments_workflow_id_key", "bulk_enrollments", type_="unique")
    op.drop_constraint("bulk_enrollments_segment_id_fkey", "bulk_enrollments", type_="foreignkey")
    op.drop_column("bulk_enrollments", "segment_id")
    op.alter_column("bulk_enrollments", "list_id", existing_type=sa.Uuid(), nullable=False)
