"""contact changes (change log and transactional outbox), timeline notes, enrollment causes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=160), nullable=False),
        sa.Column(
            "changes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "joined_lists",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.Column("reload", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("origin_enrollment_id", sa.Uuid(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_contact_changes_contact", "contact_changes", ["contact_id", "at"])
    op.create_index(
        "ix_contact_changes_unannounced",
        "contact_changes",
        ["lease_until"],
        postgresql_where=sa.text("announced_at IS NULL"),
    )
    op.create_table(
        "timeline_notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("journey_key", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=160), nullable=True),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_timeline_notes_contact", "timeline_notes", ["contact_id", "at"])
    op.add_column("enrollments", sa.Column("entered_by", sa.String(length=160), nullable=True))
    op.add_column("enrollments", sa.Column("change_id", sa.BigInteger(), nullable=True))
    op.create_index("ix_enrollments_change_id", "enrollments", ["change_id"])
    # The timeline reads a contact's messages and events newest first.
    op.create_index("ix_messages_contact_created", "messages", ["contact_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_contact_created", table_name="messages")
    op.drop_index("ix_enrollments_change_id", table_name="enrollments")
    op.drop_column("enrollments", "change_id")
    op.drop_column("enrollments", "entered_by")
    op.drop_index("ix_timeline_notes_contact", table_name="timeline_notes")
    op.drop_table("timeline_notes")
    op.drop_index("ix_contact_changes_unannounced", table_name="contact_changes")
    op.drop_index("ix_contact_changes_contact", table_name="contact_changes")
    op.drop_table("contact_changes")
