"""Indexes for journey analytics: enrollments by journey/status/step and by day, the events
and suppressions of a message

Revision ID: 0016
Revises: 0010
Create Date: 2026-12-01 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_enrollments_journey_status_step",
        "enrollments",
        ["journey_id", "status", "current_step"],
    )
    op.create_index("ix_enrollments_journey_enrolled", "enrollments", ["journey_id", "enrolled_at"])
    op.create_index(
        "ix_events_message_kind",
        "events",
        ["message_id", "kind"],
        postgresql_where=sa.text("message_id IS NOT NULL"),
    )
    op.create_index(
        "ix_suppressions_message",
        "suppressions",
        ["message_id"],
        postgresql_where=sa.text("message_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_suppressions_message", table_name="suppressions")
    op.drop_index("ix_events_message_kind", table_name="events")
    op.drop_index("ix_enrollments_journey_enrolled", table_name="enrollments")
    op.drop_index("ix_enrollments_journey_status_step", table_name="enrollments")
