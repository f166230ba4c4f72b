"""incremental segment sweeps: segment_sweeps (when each watched segment was last swept, and
with which filter), and the indexes that find what changed since

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-01 14:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segment_sweeps",
        sa.Column(
            "segment_id",
            sa.Uuid(),
            sa.ForeignKey("segments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("swept_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("full_swept_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filter_digest", sa.String(length=64), nullable=False),
    )
    # Contacts changed since the last sweep, and events that moved in or out of a time window.
    op.create_index("ix_contact_changes_at", "contact_changes", ["at"])
    op.create_index("ix_events_received_at", "events", ["received_at"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_events_occurred_at", table_name="events")
    op.drop_index("ix_events_received_at", table_name="events")
    op.drop_index("ix_contact_changes_at", table_name="contact_changes")
    op.drop_table("segment_sweeps")
