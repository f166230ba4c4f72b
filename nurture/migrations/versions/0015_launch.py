"""Launching safely: test contacts, a journey's audience and rollout, its owner, tags and
description, and the order in which drafts and versions were written

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 14:20:00.000000

The `*_order` columns keep the key order of the stored JSON (jsonb sorts keys). Rows written
before have none: they are read back with their steps in journey order (from `start`,
following each step's exits), see `nurture.journeys.ordering`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "contacts",
        sa.Column("is_test", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    # Few test contacts among many: a partial index finds them without weighing on the rest.
    op.create_index("ix_contacts_is_test", "contacts", ["id"], postgresql_where=sa.text("is_test"))
    op.add_column(
        "journeys",
        sa.Column("audience", sa.String(16), server_default="everyone", nullable=False),
    )
    op.add_column(
        "journeys",
        sa.Column(
            "rollout_percent", sa.Numeric(5, 2), server_default=sa.text("100"), nullable=False
        ),
    )
    op.add_column("journeys", sa.Column("owner", sa.String(320), nullable=True))
    op.add_column(
        "journeys",
        sa.Column(
            "tags",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )
    op.add_column("journeys", sa.Column("description", sa.Text(), nullable=True))
    op.add_column("journeys", sa.Column("draft_order", postgresql.JSONB(), nullable=True))
    op.add_column(
        "journey_versions", sa.Column("definition_order", postgresql.JSONB(), nullable=True)
    )
    op.create_index("ix_journeys_tags", "journeys", ["tags"], postgresql_using="gin")
    op.create_index("ix_journeys_owner", "journeys", ["owner"])
    # Held-back notes are counted per journey.
    op.create_index(
        "ix_timeline_notes_held_back",
        "timeline_notes",
        ["journey_key", "contact_id"],
        postgresql_where=sa.text("reason = 'held_back'"),
    )


def downgrade() -> None:
    op.drop_index("ix_timeline_notes_held_back", "timeline_notes")
    op.drop_index("ix_journeys_owner", "journeys")
    op.drop_index("ix_journeys_tags", "journeys")
    op.drop_column("journey_versions", "definition_order")
    for column in ("draft_order", "description", "tags", "owner", "rollout_percent", "audience"):
        op.drop_column("journeys", column)
    op.drop_index("ix_contacts_is_test", "contacts")
    op.drop_column("contacts", "is_test")
