"""Treated vs held-out, and split paths, against the journey's goal.

For each holdout group ("treatment", "control") and for each path of each split step: the
distinct contacts counted (enrollments not refused at entry, since the goal reset) and how
many met the goal, with the same meaning as the goal-conversion report
(`nurture.journeys.conversion`): exited with `goal_met`, or ended otherwise and meeting the
live goal now. Held-out contacts end at entry (reason `holdout`), so they count through the
second rule: the goal they meet on their own. A split path counts the contacts whose
enrollment reached the split step (`enrollment_steps`) and took that path
(`enrollments.variants`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from nurture.db.models import Enrollment, EnrollmentStep, Journey
from nurture.errors import NotFound
from nurture.journeys.conversion import (
    _meeting_goal_now,
    counted_enrollment,
    ended_otherwise,
    live_definition,
    met_goal_while_enrolled,
)
from nurture.journeys.definition import Goal, JourneyDefinition, SplitStep
from nurture.journeys.experiments import CONTROL, TREATMENT


@dataclass(frozen=True)
class Arm:
    contacts: int
    met_goal: int

    @property
    def rate(self) -> float | None:
        return self.met_goal / self.contacts if self.contacts else None


@dataclass(frozen=True)
class ExperimentReport:
    journey_key: str
    holdout_percent: float
    goal: Goal | None
    groups: dict[str, Arm] = field(default_factory=dict)
    splits: dict[str, dict[str, Arm]] = field(default_factory=dict)


async def experiment_report(session: AsyncSession, journey_key: str) -> ExperimentReport:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
    if journey is None:
        raise NotFound(f"no journey {journey_key!r}")
    live = await session.scalar(live_definition(journey.id))
    definition = JourneyDefinition.model_validate(live) if live is not None else None
    goal = definition.goal if definition is not None else None
    counted = counted_enrollment(journey.id, journey.goal_reset_at)

    groups: dict[str, Arm] = {}
    for group in (TREATMENT, CONTROL):
        groups[group] = await _arm(
            session, goal, and_(counted, col(Enrollment.experiment_group) == group)
        )
    splits: dict[str, dict[str, Arm]] = {}
    if definition is not None:
        for step_id, step in definition.steps.items():
            if not isinstance(step, SplitStep):
                continue
            reached = (
                select(col(EnrollmentStep.enrollment_id))
                .where(col(EnrollmentStep.step_id) == step_id)
                .correlate(None)
            )
            splits[step_id] = {
                path.name: await _arm(
                    session,
                    goal,
                    and_(
                        counted,
                        col(Enrollment.id).in_(reached),
                        col(Enrollment.variants)[step_id].astext == path.name,
                    ),
                )
                for path in step.paths
            }
    return ExperimentReport(
        journey_key=journey.key,
        holdout_percent=definition.entry.holdout_percent if definition else 0,
        goal=goal,
        groups=groups,
        splits=splits,
    )


async def _arm(session: AsyncSession, goal: Goal | None, where: ColumnElement[bool]) -> Arm:
    contacts = set(await session.scalars(select(col(Enrollment.contact_id)).where(where)))
    met: set[uuid.UUID] = set(
        await session.scalars(
            select(col(Enrollment.contact_id)).where(where, met_goal_while_enrolled())
        )
    )
    if goal is not None:
        ended: Any = and_(where, ended_otherwise())
        others = sorted(
            set(await session.scalars(select(col(Enrollment.contact_id)).where(ended))) - met
        )
        for start in range(0, len(others), 500):
            met |= set(await _meeting_goal_now(session, goal, ended, others[start : start + 500]))
    return Arm(contacts=len(contacts), met_goal=len(met & contacts))
