"""send rules: workspace rules, frequency-cap claims, held/delayed/skipped sends

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "rules",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "send_claims",
        sa.Column("idempotency_key", sa.String(length=255), primary_key=True),
        sa.Column(
            "contact_id",
            sa.Uuid(),
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("transactional", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_send_claims_contact_channel_at", "send_claims", ["contact_id", "channel", "at"]
    )
    op.create_table(
        "send_holds",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column(
            "contact_id",
            sa.Uuid(),
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "enrollment_id",
            sa.Uuid(),
            sa.ForeignKey("enrollments.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("journey_key", sa.String(length=64), nullable=True),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("idempotency_key", "at", "rule"),
    )
    op.create_index("ix_send_holds_contact", "send_holds", ["contact_id", "at"])
    op.create_index("ix_send_holds_at", "send_holds", ["at"])


def downgrade() -> None:
    op.drop_table("send_holds")
    op.drop_table("send_claims")
    op.drop_table("send_rules")
