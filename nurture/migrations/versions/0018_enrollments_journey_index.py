"""enrollments: drop ix_enrollments_journey_id, which two other indexes lead with

Revision ID: 0018
Revises: 0012
Create Date: 2026-12-02 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ix_enrollments_journey_status_step and ix_enrollments_journey_enrolled (full indexes,
    # journey_id first) serve every lookup by journey, including the foreign key's check when
    # a journey is deleted; this one only cost every insert one more index write.
    op.drop_index("ix_enrollments_journey_id", table_name="enrollments")


def downgrade() -> None:
    op.create_index("ix_enrollments_journey_id", "enrollments", ["journey_id"])
