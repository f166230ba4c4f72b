"""Split/holdout on enrollments, owner teams, lead scoring rules and points, device tokens

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-01 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.add_column("enrollments", sa.Column("experiment_group", sa.String(16), nullable=True))
    op.add_column(
        "enrollments",
        sa.Column(
            "variants",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.create_table(
        "owner_teams",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("turn", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(
        "team_owners",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("owner_teams.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("weight", sa.Integer(), server_default="1", nullable=False),
        sa.UniqueConstraint("team_id", "email"),
    )
    op.create_table(
        "owner_assignments",
        sa.Column("operation_key", sa.String(255), primary_key=True),
        sa.Column(
            "team_id",
            sa.Uuid(),
            sa.ForeignKey("owner_teams.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "contact_id",
            sa.Uuid(),
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("turn", sa.BigInteger(), nullable=False),
        sa.Column("owner_name", sa.String(200), nullable=False),
        sa.Column("owner_email", sa.String(320), nullable=False),
        sa.Column("assigned_at", ts, nullable=False),
    )
    op.create_table(
        "scoring_rules",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column(
            "match", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("decay_days", sa.Integer(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "score_points",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "contact_id",
            sa.Uuid(),
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "rule_id",
            sa.Uuid(),
            sa.ForeignKey("scoring_rules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source_key", sa.String(255), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("awarded_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=True),
        sa.Column("expired", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.UniqueConstraint("rule_id", "contact_id", "source_key"),
    )
    op.create_index(
        "ix_score_points_expiring",
        "score_points",
        ["expires_at"],
        postgresql_where=sa.text("NOT expired"),
    )
    op.create_table(
        "device_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "contact_id",
            sa.Uuid(),
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("token", sa.String(4096), nullable=False, unique=True),
        sa.Column("platform", sa.String(16), nullable=True),
        sa.Column("created_at", ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_tokens")
    op.drop_index("ix_score_points_expiring", table_name="score_points")
    op.drop_table("score_points")
    op.drop_table("scoring_rules")
    op.drop_table("owner_assignments")
    op.drop_table("team_owners")
    op.drop_table("owner_teams")
    op.drop_column("enrollments", "variants")
    op.drop_column("enrollments", "experiment_group")
