"""The tables. API models are separate classes (in `api/`); these are never returned directly.

Idempotency lives here as UNIQUE constraints: a message per idempotency key, an event per dedupe
key, a contact operation per operation key, a step record per (enrollment, step, visit). Retried
activities insert with ON CONFLICT and so never send or increment twice.
"""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp(nullable: bool = False, default_now: bool = True) -> Any:
    return Field(
        default_factory=utcnow if default_now else None,
        sa_type=DateTime(timezone=True),
        nullable=nullable,
    )


# Default factories are plain functions, not the builtins `dict` and `list`: SQLModel asks
# pydantic, for every row object it builds, whether each unset field's factory takes an
# argument, and pydantic answers with `inspect.signature`, which for a builtin means parsing its
# text signature with the tokenizer (3 % of the API's CPU per event request, by py-spy).
def _new_dict() -> dict[str, Any]:
    return {}


def _new_list() -> list[Any]:
    return []


def _json(default: Any = dict) -> Any:
    return Field(
        default_factory=_new_dict if default is dict else _new_list,
        sa_column_kwargs={
            "server_default": text("'{}'::jsonb" if default is dict else "'[]'::jsonb")
        },
        sa_type=JSONB,
        nullable=False,
    )


class JourneyStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class EnrollmentStatus(StrEnum):
    PENDING = "pending"  # row committed, workflow not yet confirmed running
    ACTIVE = "active"
    COMPLETED = "completed"  # ran off the end of the graph
    EXITED = "exited"  # left early: goal met, exit step, unenrolled; see exit_reason
    NOT_ENROLLED = "not_enrolled"  # refused at entry, e.g. goal already met
    FAILED = "failed"


ACTIVE_ENROLLMENT_STATUSES = (EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE)


class MessageStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"  # never reached a provider; see reason
    FAILED = "failed"  # a provider refused it for good
    # Handed to the provider, answer not recorded yet: a retry that finds this does not know
    # whether the provider has the message (see activities/messaging.py).
    ATTEMPTING = "attempting"
    # The worker died during the provider call and the channel cannot be asked: recorded, not
    # sent again (UNCERTAIN_SENDS=unknown). See docs/operations.md.
    UNKNOWN = "unknown"


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_tags", "tags", postgresql_using="gin"),
        Index("ix_contacts_is_test", "id", postgresql_where=text("is_test")),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    external_id: str | None = Field(default=None, unique=True, index=True, max_length=255)
    email: str | None = Field(default=None, max_length=320, index=True)
    phone: str | None = Field(default=None, max_length=32)
    time_zone: str | None = Field(default=None, max_length=64)
    fields: dict[str, Any] = _json()
    tags: list[str] = Field(
        default_factory=_new_list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    )
    # channel -> "granted" | "revoked"; a channel not listed has no recorded choice.
    consent: dict[str, str] = _json()
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    # A test contact (a colleague's address): admitted to journeys open to test contacts only
    # and to every canary, and left out of goal conversion (docs/launching.md).
    is_test: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})


class ContactList(SQLModel, table=True):
    __tablename__ = "lists"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=200)
    created_at: datetime = _timestamp()


class ListMembership(SQLModel, table=True):
    __tablename__ = "list_memberships"

    list_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True)
    )
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    )
    added_at: datetime = _timestamp()


class Journey(SQLModel, table=True):
    """The editable draft; what runs is always a `JourneyVersion`."""

    __tablename__ = "journeys"
    __table_args__ = (
        Index("ix_journeys_trigger", "trigger_type", "trigger_key"),
        Index("ix_journeys_tags", "tags", postgresql_using="gin"),
        Index("ix_journeys_owner", "owner"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=200)
    status: str = Field(default=JourneyStatus.DRAFT, max_length=16)
    draft: dict[str, Any] = _json()
    # The live version's trigger, kept here so "which journeys start on event X / list Y" is
    # one indexed query rather than a scan of every definition.
    trigger_type: str | None = Field(default=None, max_length=32)
    trigger_key: str | None = Field(default=None, max_length=128)
    published_at: datetime | None = _timestamp(nullable=True, default_now=False)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    # When a version without a goal last replaced one with a goal. HubSpot restarts goal
    # counting then, so conversion counts only enrollments from this moment on.
    goal_reset_at: datetime | None = _timestamp(nullable=True, default_now=False)
    # Launch state, changed through the API without republishing (nurture.journeys.launch):
    # "test_only" admits test contacts alone; `rollout_percent` admits that share of the rest.
    audience: str = Field(
        default="everyone", max_length=16, sa_column_kwargs={"server_default": "everyone"}
    )
    rollout_percent: float = Field(
        default=100.0,
        sa_type=Numeric(5, 2, asdecimal=False),
        sa_column_kwargs={"server_default": text("100")},
    )
    # From the draft (owner, tags, description), for listing and filtering journeys.
    owner: str | None = Field(default=None, max_length=320)
    tags: list[str] = Field(
        default_factory=_new_list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    )
    description: str | None = Field(default=None, sa_type=Text)
    # The key order of `draft` as written (jsonb does not keep it): nurture.journeys.ordering.
    draft_order: Any = Field(default=None, sa_type=JSONB, nullable=True)


class JourneyVersion(SQLModel, table=True):
    """A published, immutable definition (a database trigger refuses updates)."""

    __tablename__ = "journey_versions"
    __table_args__ = (UniqueConstraint("journey_id", "version"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    journey_id: uuid.UUID = Field(foreign_key="journeys.id", index=True)
    version: int = Field(sa_column=Column(Integer, nullable=False))
    definition: dict[str, Any] = _json()
    published_at: datetime = _timestamp()
    # The key order of `definition` as written (nurture.journeys.ordering).
    definition_order: Any = Field(default=None, sa_type=JSONB, nullable=True)


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    __table_args__ = (
        # At most one enrollment in flight per (journey, contact); history rows may repeat.
        Index(
            "uq_enrollments_active",
            "journey_id",
            "contact_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'active')"),
        ),
        # Journey analytics: counts by status and step, and by day entered.
        Index("ix_enrollments_journey_status_step", "journey_id", "status", "current_step"),
        Index("ix_enrollments_journey_enrolled", "journey_id", "enrolled_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # No index of its own: the two analytics indexes above lead with it (each index is one
    # more write for every insert).
    journey_id: uuid.UUID = Field(foreign_key="journeys.id")
    journey_version_id: uuid.UUID = Field(foreign_key="journey_versions.id")
    version: int
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    workflow_id: str = Field(max_length=255, index=True)
    status: str = Field(default=EnrollmentStatus.PENDING, max_length=16, index=True)
    current_step: str | None = Field(default=None, max_length=64)
    exit_reason: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, sa_type=Text)
    enrolled_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    ended_at: datetime | None = _timestamp(nullable=True, default_now=False)
    # What started it, for the contact's timeline: "api", "list_joined:<list>",
    # "segment_entered:<segment>", "event:<name>", "bulk:<list or segment>".
    entered_by: str | None = Field(default=None, max_length=160)
    # The contact change whose announcement started it: announcing a change twice finds this
    # row and does not enroll again.
    change_id: int | None = Field(default=None, sa_type=BigInteger, index=True)
    # Set when the workflow was told its contact changed and has not reloaded it yet: further
    # changes until then are not signalled again (one `contact_changed` covers them all).
    contact_stale: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    # A journey with a holdout: "treatment" or "control" (held out: sent nothing, measured
    # against the goal); None without one. Decided at entry, per contact (experiments.py).
    experiment_group: str | None = Field(default=None, max_length=16)
    # The path each split step of the pinned version gives this contact: {step id: path name},
    # decided at entry (the workflow takes the same), for reports over Postgres.
    variants: dict[str, Any] = _json()


class EnrollmentStep(SQLModel, table=True):
    """The path a contact took: one row per visit of a step."""

    __tablename__ = "enrollment_steps"
    __table_args__ = (UniqueConstraint("enrollment_id", "step_id", "visit"),)

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("enrollments.id", ondelete="CASCADE"), nullable=False)
    )
    step_id: str = Field(max_length=64)
    visit: int
    step_type: str = Field(max_length=32)
    entered_at: datetime = _timestamp()
    left_at: datetime | None = _timestamp(nullable=True, default_now=False)
    outcome: str | None = Field(default=None, max_length=255)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(
            "status IN ('sending', 'attempting', 'sent', 'skipped', 'failed', 'unknown')",
            name="message_status",
        ),
        Index("ix_messages_contact_created", "contact_id", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # {enrollment}:{step}:{visit}: a retried send finds its own row instead of sending again.
    idempotency_key: str = Field(unique=True, max_length=255)
    enrollment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(
            ForeignKey("enrollments.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    contact_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True, index=True),
    )
    step_id: str | None = Field(default=None, max_length=64)
    channel: str = Field(max_length=16)
    template: str = Field(max_length=255)
    template_version: int | None = None  # the template version rendered for this send
    status: str = Field(default=MessageStatus.SENDING, max_length=16)
    reason: str | None = Field(default=None, max_length=255)
    provider: str | None = Field(default=None, max_length=32)
    provider_message_id: str | None = Field(default=None, max_length=255, index=True)
    created_at: datetime = _timestamp()
    sent_at: datetime | None = _timestamp(nullable=True, default_now=False)
    # When the first provider call began: a retry looks the message up from then on.
    attempted_at: datetime | None = _timestamp(nullable=True, default_now=False)


class OutboxMessage(SQLModel, table=True):
    """The development channel's "provider": what would have been delivered, once per key."""

    __tablename__ = "outbox_messages"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=255)
    channel: str = Field(max_length=16)
    to_address: str = Field(max_length=320)
    template: str = Field(max_length=255)
    payload: dict[str, Any] = _json()
    created_at: datetime = _timestamp()


class Event(SQLModel, table=True):
    """Engagement (open, click) and custom events, stored before they are signalled."""

    __tablename__ = "events"
    __table_args__ = (
        # What an incremental segment sweep looks at: events received since the last sweep,
        # and events a time window moved past.
        Index("ix_events_received_at", "received_at"),
        Index("ix_events_occurred_at", "occurred_at"),
        # Journey analytics: the opens and clicks of a journey's messages.
        Index(
            "ix_events_message_kind",
            "message_id",
            "kind",
            postgresql_where=text("message_id IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    dedupe_key: str = Field(unique=True, max_length=255)
    contact_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=True, index=True),
    )
    kind: str = Field(max_length=16)  # open | click | custom
    name: str | None = Field(default=None, max_length=128)
    message_id: uuid.UUID | None = Field(default=None, foreign_key="messages.id")
    link: str | None = Field(default=None, max_length=128)
    properties: dict[str, Any] = _json()
    # An open by a mail proxy or prefetcher (Apple Mail Privacy Protection...), not a person.
    machine: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    occurred_at: datetime = _timestamp()
    received_at: datetime = _timestamp()
    # Set once the event reached Temporal; still NULL means it is due for redelivery.
    signalled_at: datetime | None = _timestamp(nullable=True, default_now=False)


class AppliedOperation(SQLModel, table=True):
    """Keys of contact changes already applied, so a retried increment is not applied twice."""

    __tablename__ = "applied_operations"

    key: str = Field(
        sa_column=Column(String(255), primary_key=True),
    )
    applied_at: datetime = _timestamp()


class ApiKey(SQLModel, table=True):
    """A bearer token for the API; only a SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16, description="the first characters, to tell keys apart")
    secret_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = _timestamp()
    last_used_at: datetime | None = _timestamp(nullable=True, default_now=False)
    revoked_at: datetime | None = _timestamp(nullable=True, default_now=False)


class BulkEnrollment(SQLModel, table=True):
    """Progress of enrolling a whole list or segment, run by the BulkEnroll workflow (one row
    per run: a recurring segment journey has one per scheduled run)."""

    __tablename__ = "bulk_enrollments"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    journey_id: uuid.UUID = Field(foreign_key="journeys.id", index=True)
    # The audience: a list or a segment (one of the two).
    list_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("lists.id", ondelete="CASCADE"), nullable=True),
    )
    segment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("segments.id", ondelete="CASCADE"), nullable=True),
    )
    workflow_id: str = Field(max_length=255, unique=True)
    status: str = Field(default="running", max_length=16)  # running | completed | failed
    total: int = 0
    done: int = 0
    enrolled: int = 0
    skipped: int = 0
    created_at: datetime = _timestamp()
    finished_at: datetime | None = _timestamp(nullable=True, default_now=False)


class Template(SQLModel, table=True):
    """Message content a send step refers to by key; must exist before a journey is published."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("key", "channel"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(max_length=255)
    channel: str = Field(max_length=16)  # email | sms
    subject: str | None = Field(default=None, max_length=998)
    html: str | None = Field(default=None, sa_type=Text)
    text: str | None = Field(default=None, sa_type=Text)
    # `text` is a column of this class, hence the literal server default.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class TemplateVersion(SQLModel, table=True):
    """Every saved state of a template, so a message can say exactly what it rendered."""

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    template_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("templates.id", ondelete="CASCADE"), nullable=False)
    )
    version: int
    subject: str | None = Field(default=None, max_length=998)
    html: str | None = Field(default=None, sa_type=Text)
    text: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _timestamp()


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"  # hard bounce: the address does not exist
    COMPLAINED = "complained"  # marked as spam


class Suppression(SQLModel, table=True):
    """A contact that must not receive messages on a channel, and why."""

    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("contact_id", "channel"),
        # Journey analytics: unsubscribes and complaints per message.
        Index(
            "ix_suppressions_message", "message_id", postgresql_where=text("message_id IS NOT NULL")
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    channel: str = Field(max_length=16)
    reason: str = Field(max_length=32)
    source: str = Field(max_length=64)  # "unsubscribe_link", "webhook:sendgrid", "api"...
    message_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
    )
    created_at: datetime = _timestamp()


class WebhookEvent(SQLModel, table=True):
    """A verified provider callback (delivered, bounce, open...), stored before it is acted on.

    An event whose message is not known yet keeps `message_id` NULL and is matched later by
    `provider_message_id`, rather than dropped."""

    __tablename__ = "webhook_events"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    provider: str = Field(max_length=32)
    dedupe_key: str = Field(unique=True, max_length=255)
    kind: str = Field(max_length=32)
    provider_message_id: str | None = Field(default=None, max_length=255, index=True)
    message_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True, index=True),
    )
    payload: dict[str, Any] = _json()
    occurred_at: datetime = _timestamp()
    received_at: datetime = _timestamp()
    processed_at: datetime | None = _timestamp(nullable=True, default_now=False)


class Segment(SQLModel, table=True):
    """A saved dynamic audience: a filter over contacts (`nurture.audience.segments.definition`),
    evaluated whenever it is used, so membership is always current."""

    __tablename__ = "segments"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=200)
    filter: dict[str, Any] = _json()
    # Set while a live journey starts on entering this segment: from then on its members are
    # kept in `segment_members`, so that entering is a change from "out" to "in".
    watched_since: datetime | None = _timestamp(nullable=True, default_now=False)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class SegmentMember(SQLModel, table=True):
    """A contact found in a watched segment at the last look (`nurture.audience.segments.membership`).

    `admitted_at` is NULL while the journeys that start on entering have not yet been given
    this entry; the row is written first, so an entry interrupted by a crash is finished by
    the next sweep instead of being lost."""

    __tablename__ = "segment_members"
    __table_args__ = (
        Index(
            "ix_segment_members_unadmitted",
            "segment_id",
            postgresql_where=text("admitted_at IS NULL"),
        ),
    )

    segment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    )
    contact_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True, index=True
        )
    )
    entered_at: datetime = _timestamp()
    admitted_at: datetime | None = _timestamp(nullable=True, default_now=False)


class ContactImport(SQLModel, table=True):
    """One CSV import: its progress, written after each batch, and its report."""

    __tablename__ = "contact_imports"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    status: str = Field(default="running", max_length=16)  # running | completed | failed
    list_key: str | None = Field(default=None, max_length=64)
    rows: int = 0
    imported: int = 0
    created: int = 0
    updated: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = _json(default=list)
    signalled: int = 0  # in-flight enrollments told that their contact changed
    failure: str | None = Field(default=None, sa_type=Text)
    # The BulkEnroll runs that take the imported list members into the list's journeys.
    enrollment_runs: list[str] = _json(default=list)
    started_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    finished_at: datetime | None = _timestamp(nullable=True, default_now=False)


class ContactChangeRecord(SQLModel, table=True):
    """One committed change to a contact, whatever made it (`nurture.audience.changes`).

    Written in the same transaction as the change, so it is both the contact's change log (the
    timeline shows it with its source) and a transactional outbox: `announced_at` stays NULL
    until everything that depends on the contact was told (its other enrollments, the journeys
    its list joins, events and segment entries start). `lease_until` says who may announce it:
    the process that made the change, until then; after that, the relay in the worker."""

    __tablename__ = "contact_changes"
    __table_args__ = (
        Index("ix_contact_changes_contact", "contact_id", "at"),
        Index(
            "ix_contact_changes_unannounced",
            "lease_until",
            postgresql_where=text("announced_at IS NULL"),
        ),
        Index("ix_contact_changes_at", "at"),  # changed since the last segment sweep
    )

    id: int | None = Field(default=None, sa_type=BigInteger, primary_key=True)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    at: datetime = _timestamp()
    # "api", "import:<id>", "journey:<key>:<step>", "webhook:<provider>", "unsubscribe_link"...
    source: str = Field(max_length=160)
    # What changed, for people: {"fields": {name: [before, after]}, "tags_added": [...],
    # "lists_joined": [...], "consent": {...}, "suppressed": {...}, "event": {...}, ...}
    changes: dict[str, Any] = _json()
    # Lists the contact joined (their list_joined journeys start) and the custom event it
    # performed (signalled to its enrollments; its event journeys start).
    joined_lists: list[str] = Field(
        default_factory=_new_list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    )
    event_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("events.id", ondelete="CASCADE"), nullable=True),
    )
    # Whether the contact's enrollments must reload it (fields, tags, lists, consent changed);
    # the enrollment that made the change already has the new values and is not told again.
    reload: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    origin_enrollment_id: uuid.UUID | None = None
    lease_until: datetime | None = _timestamp(nullable=True, default_now=False)
    announced_at: datetime | None = _timestamp(nullable=True, default_now=False)


class TimelineNote(SQLModel, table=True):
    """What a contact's timeline must say that no other table records: a journey the contact
    did not enter and why. Later rules (frequency caps, quiet hours) add kinds of their own."""

    __tablename__ = "timeline_notes"
    __table_args__ = (
        Index("ix_timeline_notes_contact", "contact_id", "at"),
        Index(
            "ix_timeline_notes_held_back",
            "journey_key",
            "contact_id",
            postgresql_where=text("reason = 'held_back'"),
        ),
    )

    id: int | None = Field(default=None, sa_type=BigInteger, primary_key=True)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    at: datetime = _timestamp()
    kind: str = Field(max_length=32)  # not_entered | ...
    journey_key: str | None = Field(default=None, max_length=64)
    # A stable code (reentry_never, max_entries, excluded, goal_already_met, journey_archived...)
    reason: str = Field(max_length=64)
    detail: str | None = Field(default=None, sa_type=Text)
    # What tried: "api", "list_joined:<list>", "segment_entered:<segment>", "event:<name>"...
    source: str | None = Field(default=None, max_length=160)


class WorkspaceSendRules(SQLModel, table=True):
    """The workspace's send rules (`nurture.sending.rules.SendRules` as JSON): one row."""

    __tablename__ = "send_rules"

    id: int = Field(default=1, primary_key=True)
    rules: dict[str, Any] = _json()
    updated_at: datetime = _timestamp()


class SendClaim(SQLModel, table=True):
    """One send counted by frequency caps, made in the send's own transaction under a lock per
    contact and channel (`nurture.sending.gate`). Keyed by the send's idempotency key, so a
    retried send never counts twice. `at` is the instant the enrollment sent it (workflow time)."""

    __tablename__ = "send_claims"
    __table_args__ = (Index("ix_send_claims_contact_channel_at", "contact_id", "channel", "at"),)

    idempotency_key: str = Field(primary_key=True, max_length=255)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    channel: str = Field(max_length=16)
    at: datetime = _timestamp()
    transactional: bool = Field(default=False)


class SendHold(SQLModel, table=True):
    """A send that a rule held, delayed or skipped: the count analytics reads (one row per
    decision; `docs/send-rules.md`) and the contact timeline's "send_held" entries.

    rule: quiet_hours | frequency_cap | expired; action: held | delayed | skipped."""

    __tablename__ = "send_holds"
    __table_args__ = (
        UniqueConstraint("idempotency_key", "at", "rule"),
        Index("ix_send_holds_contact", "contact_id", "at"),
        Index("ix_send_holds_at", "at"),
    )

    id: int | None = Field(default=None, sa_type=BigInteger, primary_key=True)
    idempotency_key: str = Field(max_length=255)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    enrollment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("enrollments.id", ondelete="SET NULL"), nullable=True),
    )
    journey_key: str | None = Field(default=None, max_length=64)
    step_id: str | None = Field(default=None, max_length=64)
    channel: str = Field(max_length=16)
    rule: str = Field(max_length=32)
    action: str = Field(max_length=16)
    detail: str = Field(max_length=255)
    at: datetime = _timestamp()
    until: datetime | None = _timestamp(nullable=True, default_now=False)


class OwnerTeam(SQLModel, table=True):
    """A named team of owners (sales reps) that `assign_owner` steps hand contacts to.

    `turn` counts the assignments made: each takes the next value with one atomic
    UPDATE ... RETURNING, so two workers never hand out the same turn."""

    __tablename__ = "owner_teams"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=200)
    strategy: str = Field(default="round_robin", max_length=16)  # round_robin | weighted
    turn: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class TeamOwner(SQLModel, table=True):
    __tablename__ = "team_owners"
    __table_args__ = (UniqueConstraint("team_id", "email"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    team_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("owner_teams.id", ondelete="CASCADE"), nullable=False)
    )
    position: int
    name: str = Field(max_length=200)
    email: str = Field(max_length=320)
    weight: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class OwnerAssignment(SQLModel, table=True):
    """One assign_owner step's choice, per operation key: a retried activity finds it and
    neither takes another turn nor picks another owner."""

    __tablename__ = "owner_assignments"

    operation_key: str = Field(primary_key=True, max_length=255)
    team_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("owner_teams.id", ondelete="CASCADE"), nullable=False)
    )
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False)
    )
    turn: int = Field(sa_type=BigInteger)
    owner_name: str = Field(max_length=200)
    owner_email: str = Field(max_length=320)
    assigned_at: datetime = _timestamp()


class ScoringRule(SQLModel, table=True):
    """Lead scoring as data: what earns (or costs) points. See nurture/scoring.py."""

    __tablename__ = "scoring_rules"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    # event | open | click | field | tag
    kind: str = Field(max_length=16)
    # event: {"name", "where"}; click: {"link"}; field: a field condition; tag: {"tag"}
    match: dict[str, Any] = _json()
    points: int
    decay_days: int | None = None  # points of this rule count for this many days
    created_at: datetime = _timestamp()


class ScorePoints(SQLModel, table=True):
    """Points a contact earned from a rule; the score is the sum of those not expired."""

    __tablename__ = "score_points"
    __table_args__ = (
        UniqueConstraint("rule_id", "contact_id", "source_key"),
        Index("ix_score_points_expiring", "expires_at", postgresql_where=text("NOT expired")),
    )

    id: int | None = Field(default=None, sa_type=BigInteger, primary_key=True)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    rule_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("scoring_rules.id", ondelete="CASCADE"), nullable=False)
    )
    # What earned them: an event id, or "field" for a field/tag rule (held while it holds).
    source_key: str = Field(max_length=255)
    points: int
    awarded_at: datetime = _timestamp()
    expires_at: datetime | None = _timestamp(nullable=True, default_now=False)
    expired: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})


class DeviceToken(SQLModel, table=True):
    """A push token of one of a contact's devices (FCM registration token)."""

    __tablename__ = "device_tokens"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    contact_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    token: str = Field(unique=True, max_length=4096)
    platform: str | None = Field(default=None, max_length=16)  # android | ios | web
    created_at: datetime = _timestamp()


class SegmentSweep(SQLModel, table=True):
    """When a watched segment was last swept, and with which filter
    (`nurture.audience.segments.incremental`): the next sweep re-checks only the contacts changed
    since, and those a time window moved in or out."""

    __tablename__ = "segment_sweeps"

    segment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    )
    swept_at: datetime = _timestamp()
    full_swept_at: datetime = _timestamp()
    filter_digest: str = Field(max_length=64)


class MessageStats(SQLModel, table=True):
    """What became of a message after it went out, kept by database triggers (migration 0016)
    as events, provider reports and suppressions are inserted: the first time of each, so
    journey analytics read one row per message instead of every event."""

    __tablename__ = "message_stats"

    message_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    )
    opened_at: datetime | None = _timestamp(nullable=True, default_now=False)  # a person
    clicked_at: datetime | None = _timestamp(nullable=True, default_now=False)
    machine_opened_at: datetime | None = _timestamp(nullable=True, default_now=False)
    delivered_at: datetime | None = _timestamp(nullable=True, default_now=False)
    bounced_at: datetime | None = _timestamp(nullable=True, default_now=False)  # hard bounce
    complained_at: datetime | None = _timestamp(nullable=True, default_now=False)
    unsubscribed_at: datetime | None = _timestamp(nullable=True, default_now=False)


class MessageLinkClick(SQLModel, table=True):
    """The first click by a person on each named link of a message (trigger-kept, as above)."""

    __tablename__ = "message_link_clicks"

    message_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    )
    link: str = Field(sa_column=Column(String(128), primary_key=True))
    clicked_at: datetime = _timestamp()
