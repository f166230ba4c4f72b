"""Teams of owners (sales reps) and the fair choice of the next one (`assign_owner` steps).

A team hands out turns: one atomic `UPDATE owner_teams SET turn = turn + 1 ... RETURNING`
per assignment, so concurrent workers each get a turn of their own (the row lock orders
them) and nobody is skipped or given twice. The turn picks the owner:

- round_robin: owners in their order, one each;
- weighted: smooth weighted round-robin (nginx's), so an owner of weight 3 next to one of
  weight 1 gets 3 of every 4 contacts, interleaved (A A B A), not in runs.

Each assignment is kept per operation key (`owner_assignments`): a retried activity returns
the owner chosen the first time instead of taking another turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.db.engine import SessionFactory
from nurture.db.models import OwnerAssignment, OwnerTeam, TeamOwner, utcnow
from nurture.errors import Invalid, NotFound
from nurture.journeys.definition import AssignOwnerStep, JourneyDefinition

Strategy = Literal["round_robin", "weighted"]


@dataclass(frozen=True)
class Owner:
    name: str
    email: str
    weight: int = 1


@dataclass(frozen=True)
class Team:
    key: str
    name: str
    strategy: str
    turn: int
    owners: list[Owner]


class NoOwners(Exception):
    """The team is missing or has no owners: nobody to assign (final until it is fixed)."""


def schedule(owners: Sequence[Owner], strategy: str) -> list[int]:
    """One cycle of turns as owner indexes: round-robin, or smooth weighted round-robin."""
    if strategy != "weighted":
        return list(range(len(owners)))
    weights = [max(0, owner.weight) for owner in owners]
    total = sum(weights)
    current = [0] * len(owners)
    order: list[int] = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        chosen = max(range(len(owners)), key=lambda i: (current[i], -i))
        current[chosen] -= total
        order.append(chosen)
    return order


def owner_for_turn(owners: Sequence[Owner], strategy: str, turn: int) -> Owner:
    cycle = schedule(owners, strategy)
    if not cycle:
        raise NoOwners("the team has no owner with a weight above 0")
    return owners[cycle[(turn - 1) % len(cycle)]]


async def save_team(
    sessions: SessionFactory, key: str, name: str, strategy: Strategy, owners: Sequence[Owner]
) -> tuple[Team, bool]:
    """Create the team or replace its name, strategy and owners (its turn counter is kept);
    whether it was created."""
    if not owners:
        raise Invalid("a team needs at least one owner")
    if len({owner.email.lower() for owner in owners}) != len(owners):
        raise Invalid("an owner is listed twice (same email)")
    async with sessions.begin() as session:
        team = await session.scalar(
            select(OwnerTeam).where(col(OwnerTeam.key) == key).with_for_update()
        )
        created = team is None
        if team is None:
            team = OwnerTeam(key=key, name=name, strategy=strategy)
            session.add(team)
            await session.flush()
        else:
            team.name, team.strategy, team.updated_at = name, strategy, utcnow()
            await session.execute(delete(TeamOwner).where(col(TeamOwner.team_id) == team.id))
        for position, owner in enumerate(owners):
            session.add(
                TeamOwner(
                    team_id=team.id,
                    position=position,
                    name=owner.name,
                    email=owner.email,
                    weight=owner.weight,
                )
            )
        await session.flush()
        return await _team(session, team), created


async def get_team(session: AsyncSession, key: str) -> Team:
    team = await session.scalar(select(OwnerTeam).where(col(OwnerTeam.key) == key))
    if team is None:
        raise NotFound(f"no owner team {key!r}")
    return await _team(session, team)


async def list_teams(session: AsyncSession) -> list[Team]:
    teams = await session.scalars(select(OwnerTeam).order_by(col(OwnerTeam.key)))
    return [await _team(session, team) for team in teams]


async def delete_team(sessions: SessionFactory, key: str) -> None:
    async with sessions.begin() as session:
        deleted = await session.scalar(
            delete(OwnerTeam).where(col(OwnerTeam.key) == key).returning(col(OwnerTeam.id))
        )
    if deleted is None:
        raise NotFound(f"no owner team {key!r}")


async def _owners(session: AsyncSession, team_id: uuid.UUID) -> list[Owner]:
    rows = await session.scalars(
        select(TeamOwner).where(col(TeamOwner.team_id) == team_id).order_by(col(TeamOwner.position))
    )
    return [Owner(row.name, row.email, row.weight) for row in rows]


async def _team(session: AsyncSession, team: OwnerTeam) -> Team:
    return Team(team.key, team.name, team.strategy, team.turn, await _owners(session, team.id))


async def assign(
    sessions: SessionFactory, team_key: str, contact_id: uuid.UUID, operation_key: str
) -> tuple[Owner, int]:
    """The owner for this operation: chosen once (the team's next turn), then the same on
    every repeat of the key. Raises `NoOwners`."""
    async with sessions.begin() as session:
        # A retry racing its own first attempt waits here for it, then finds its choice.
        await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(operation_key))))
        done = await session.get(OwnerAssignment, operation_key)
        if done is not None:
            return Owner(done.owner_name, done.owner_email), done.turn
        taken = (
            await session.execute(
                update(OwnerTeam)
                .where(col(OwnerTeam.key) == team_key)
                .values(turn=col(OwnerTeam.turn) + 1)
                .returning(col(OwnerTeam.id), col(OwnerTeam.turn), col(OwnerTeam.strategy))
            )
        ).first()
        if taken is None:
            raise NoOwners(f"no owner team {team_key!r}")
        team_id, turn, strategy = taken
        owners = await _owners(session, team_id)
        if not owners:
            raise NoOwners(f"owner team {team_key!r} has no owners")
        owner = owner_for_turn(owners, strategy, turn)
        session.add(
            OwnerAssignment(
                operation_key=operation_key,
                team_id=team_id,
                contact_id=contact_id,
                turn=turn,
                owner_name=owner.name,
                owner_email=owner.email,
            )
        )
        return owner, int(turn)


async def team_problems(
    session: AsyncSession, definition: JourneyDefinition
) -> list[dict[str, str]]:
    """The teams `assign_owner` steps name that do not exist (checked at publish)."""
    named = [
        (f"steps.{step_id}.team", step.team)
        for step_id, step in definition.steps.items()
        if isinstance(step, AssignOwnerStep)
    ]
    if not named:
        return []
    existing = set(
        await session.scalars(
            select(col(OwnerTeam.key)).where(col(OwnerTeam.key).in_([k for _, k in named]))
        )
    )
    return [{"path": p, "message": f"no owner team {k!r}"} for p, k in named if k not in existing]
