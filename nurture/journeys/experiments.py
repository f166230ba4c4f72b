"""Splits (A/B/n) and holdouts: which path and which group a contact gets, the same each time.

Assignment is a pure function of the journey key, the step (for a split) and the contact id,
hashed with SHA-256 into one of 10,000 buckets: no randomness, no state, so a contact who
re-enters takes the same path, a replayed workflow decides as it did, and the enrollment row
(`Enrollment.variants`, `Enrollment.experiment_group`, set at entry) agrees with the workflow.
Splits and the holdout hash with different salts, so being held out says nothing about the
path a treated contact takes.
"""

from __future__ import annotations

import hashlib
import uuid

from nurture.journeys.definition import JourneyDefinition, SplitStep

BUCKETS = 10_000
CONTROL = "control"
TREATMENT = "treatment"


def bucket(*parts: str) -> int:
    """0..9999 from a hash of the parts (uniform enough: 64 bits reduced mod 10,000)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def split_path(journey_key: str, step_id: str, contact_id: uuid.UUID | str, step: SplitStep) -> str:
    """The name of the path this contact takes at this split step."""
    point = bucket("split", journey_key, step_id, str(contact_id))
    upper = 0
    for path in step.paths:
        upper += path.weight * BUCKETS // 100
        if point < upper:
            return path.name
    # Weights sum to 100 (validated); only rounding could leave a bucket over.
    return step.paths[-1].name


def in_holdout(journey_key: str, contact_id: uuid.UUID | str, percent: float) -> bool:
    if percent <= 0:
        return False
    return bucket("holdout", journey_key, str(contact_id)) < round(percent * BUCKETS / 100)


def experiment_group(definition: JourneyDefinition, contact_id: uuid.UUID | str) -> str | None:
    """ "control" or "treatment" for a journey with a holdout; None without one."""
    if definition.entry.holdout_percent <= 0:
        return None
    held = in_holdout(definition.key, contact_id, definition.entry.holdout_percent)
    return CONTROL if held else TREATMENT


def variants(definition: JourneyDefinition, contact_id: uuid.UUID | str) -> dict[str, str]:
    """{split step id: path name} for every split step of the definition."""
    return {
        step_id: split_path(definition.key, step_id, contact_id, step)
        for step_id, step in definition.steps.items()
        if isinstance(step, SplitStep)
    }
