"""Journey analytics: indexes (enrollments by journey/status/step and by day, the events and
suppressions of a message) and per-message stats kept by triggers

Revision ID: 0016
Revises: 0017
Create Date: 2026-12-01 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Each AFTER INSERT trigger records the first time of what happened to a message (duplicates
# never reach them: events and webhook events are deduplicated by ON CONFLICT DO NOTHING).
STATS_SQL = """
CREATE FUNCTION nurture_mark_message(m uuid, what text, at timestamptz) RETURNS void AS $$
BEGIN
    INSERT INTO message_stats (message_id) VALUES (m) ON CONFLICT DO NOTHING;
    EXECUTE format(
        'UPDATE message_stats SET %1$I = LEAST(COALESCE(%1$I, $2), $2) WHERE message_id = $1',
        what
    ) USING m, at;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION nurture_event_stats() RETURNS trigger AS $$
BEGIN
    IF NEW.message_id IS NULL OR NEW.kind NOT IN ('open', 'click') THEN
        RETURN NULL;
    END IF;
    IF NEW.machine THEN
        IF NEW.kind = 'open' THEN
            PERFORM nurture_mark_message(NEW.message_id, 'machine_opened_at', NEW.occurred_at);
        END IF;
        RETURN NULL;
    END IF;
    -- A click is an open too.
    PERFORM nurture_mark_message(NEW.message_id, 'opened_at', NEW.occurred_at);
    IF NEW.kind = 'click' THEN
        PERFORM nurture_mark_message(NEW.message_id, 'clicked_at', NEW.occurred_at);
        INSERT INTO message_link_clicks (message_id, link, clicked_at)
        VALUES (NEW.message_id, COALESCE(NEW.link, '(unnamed)'), NEW.occurred_at)
        ON CONFLICT (message_id, link) DO UPDATE
        SET clicked_at = LEAST(message_link_clicks.clicked_at, EXCLUDED.clicked_at);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER events_message_stats AFTER INSERT ON events
FOR EACH ROW EXECUTE FUNCTION nurture_event_stats();

CREATE FUNCTION nurture_report_stats() RETURNS trigger AS $$
BEGIN
    -- A report stored before its message was known is matched later (UPDATE of message_id).
    IF NEW.message_id IS NULL
       OR (TG_OP = 'UPDATE' AND OLD.message_id IS NOT DISTINCT FROM NEW.message_id) THEN
        RETURN NULL;
    END IF;
    IF NEW.kind = 'delivered' THEN
        PERFORM nurture_mark_message(NEW.message_id, 'delivered_at', NEW.occurred_at);
    ELSIF NEW.kind = 'bounced' AND COALESCE((NEW.payload->>'permanent')::boolean, false) THEN
        PERFORM nurture_mark_message(NEW.message_id, 'bounced_at', NEW.occurred_at);
    ELSIF NEW.kind = 'complained' THEN
        PERFORM nurture_mark_message(NEW.message_id, 'complained_at', NEW.occurred_at);
    ELSIF NEW.kind = 'unsubscribed' THEN
        PERFORM nurture_mark_message(NEW.message_id, 'unsubscribed_at', NEW.occurred_at);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER webhook_events_message_stats AFTER INSERT OR UPDATE OF message_id
ON webhook_events FOR EACH ROW EXECUTE FUNCTION nurture_report_stats();

CREATE FUNCTION nurture_suppression_stats() RETURNS trigger AS $$
BEGIN
    IF NEW.message_id IS NOT NULL AND NEW.reason IN ('unsubscribed', 'complained', 'bounced') THEN
        PERFORM nurture_mark_message(NEW.message_id, NEW.reason || '_at', NEW.created_at);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER suppressions_message_stats AFTER INSERT ON suppressions
FOR EACH ROW EXECUTE FUNCTION nurture_suppression_stats();
"""

# What happened before the triggers existed.
BACKFILL_SQL = [
    """INSERT INTO message_stats (message_id, opened_at, clicked_at, machine_opened_at)
       SELECT message_id,
              min(occurred_at) FILTER (WHERE NOT machine),
              min(occurred_at) FILTER (WHERE NOT machine AND kind = 'click'),
              min(occurred_at) FILTER (WHERE machine AND kind = 'open')
       FROM events WHERE message_id IS NOT NULL AND kind IN ('open', 'click')
       GROUP BY message_id""",
    """INSERT INTO message_link_clicks (message_id, link, clicked_at)
       SELECT message_id, COALESCE(link, '(unnamed)'), min(occurred_at)
       FROM events WHERE message_id IS NOT NULL AND kind = 'click' AND NOT machine
       GROUP BY message_id, COALESCE(link, '(unnamed)')""",
    """SELECT nurture_mark_message(message_id, kind || '_at', occurred_at)
       FROM webhook_events
       WHERE message_id IS NOT NULL AND (kind IN ('delivered', 'complained', 'unsubscribed')
             OR (kind = 'bounced' AND COALESCE((payload->>'permanent')::boolean, false)))""",
    """SELECT nurture_mark_message(message_id, reason || '_at', created_at)
       FROM suppressions
       WHERE message_id IS NOT NULL AND reason IN ('unsubscribed', 'complained', 'bounced')""",
]


def upgrade() -> None:
    op.create_table(
        "message_stats",
        sa.Column(
            "message_id",
            sa.Uuid(),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        *[
            sa.Column(name, sa.DateTime(timezone=True), nullable=True)
            for name in (
                "opened_at",
                "clicked_at",
                "machine_opened_at",
                "delivered_at",
                "bounced_at",
                "complained_at",
                "unsubscribed_at",
            )
        ],
    )
    op.create_table(
        "message_link_clicks",
        sa.Column(
            "message_id",
            sa.Uuid(),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("link", sa.String(128), primary_key=True),
        sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=False),
    )
    # One statement per call: asyncpg prepares each, and a prepared statement is one command.
    for statement in STATS_SQL.strip().split("\n\nCREATE "):
        op.execute(statement if statement.startswith("CREATE ") else "CREATE " + statement)
    for statement in BACKFILL_SQL:
        op.execute(statement)
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
    op.execute("DROP TRIGGER suppressions_message_stats ON suppressions")
    op.execute("DROP TRIGGER webhook_events_message_stats ON webhook_events")
    op.execute("DROP TRIGGER events_message_stats ON events")
    op.execute("DROP FUNCTION nurture_suppression_stats()")
    op.execute("DROP FUNCTION nurture_report_stats()")
    op.execute("DROP FUNCTION nurture_event_stats()")
    op.execute("DROP FUNCTION nurture_mark_message(uuid, text, timestamptz)")
    op.drop_table("message_link_clicks")
    op.drop_table("message_stats")
    op.drop_index("ix_suppressions_message", table_name="suppressions")
    op.drop_index("ix_events_message_kind", table_name="events")
    op.drop_index("ix_enrollments_journey_enrolled", table_name="enrollments")
    op.drop_index("ix_enrollments_journey_status_step", table_name="enrollments")
