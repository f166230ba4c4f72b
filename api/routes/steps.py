"""Owner teams (assign_owner steps), lead scoring rules, a contact's push devices, and the
experiment report of a journey (holdout groups and split paths against the goal)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from api.contact_refs import ContactRefDep
from api.deps import ResourcesDep, SessionDep
from api.schemas.common import error_responses
from api.schemas.steps import (
    ArmOut,
    DeviceIn,
    DeviceOut,
    DevicePage,
    ExperimentOut,
    OwnerOut,
    ScoringRuleIn,
    ScoringRuleOut,
    ScoringRulePage,
    TeamIn,
    TeamOut,
    TeamPage,
)
from nurture import scoring
from nurture.audience.devices import add_device, list_devices, remove_device
from nurture.db.models import DeviceToken, ScoringRule
from nurture.errors import NotFound
from nurture.journeys.definition import Key
from nurture.journeys.experiment_report import Arm, experiment_report
from nurture.owners import Owner, Team, delete_team, get_team, list_teams, save_team

router = APIRouter(tags=["sales hand-off, scoring, push, experiments"])


def _team_out(team: Team) -> TeamOut:
    return TeamOut(
        key=team.key,
        name=team.name,
        strategy=team.strategy,
        turn=team.turn,
        owners=[OwnerOut(name=o.name, email=o.email, weight=o.weight) for o in team.owners],
    )


@router.put(
    "/owner-teams/{key}",
    response_model=TeamOut,
    summary="Create or replace an owner team",
    description="`assign_owner` steps hand contacts to its owners in turn (round_robin) or "
    "by weight (weighted). Replacing the owners keeps the turn counter.",
    responses={**error_responses(), 201: {"model": TeamOut, "description": "created"}},
)
async def put_team(key: Key, body: TeamIn, resources: ResourcesDep, response: Response) -> TeamOut:
    team, created = await save_team(
        resources.sessions,
        key,
        body.name,
        body.strategy,
        [Owner(o.name, o.email, o.weight) for o in body.owners],
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return _team_out(team)


@router.get("/owner-teams", response_model=TeamPage, summary="List owner teams")
async def get_teams(session: SessionDep) -> TeamPage:
    return TeamPage(items=[_team_out(team) for team in await list_teams(session)])


@router.get(
    "/owner-teams/{key}",
    response_model=TeamOut,
    summary="Get an owner team",
    responses=error_responses({404: "no team with this key"}),
)
async def get_one_team(key: str, session: SessionDep) -> TeamOut:
    return _team_out(await get_team(session, key))


@router.delete(
    "/owner-teams/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an owner team",
    responses=error_responses({404: "no team with this key"}),
)
async def delete_one_team(key: str, resources: ResourcesDep) -> Response:
    await delete_team(resources.sessions, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- scoring rules -------------------------------------------------------------------------------


def _rule_out(rule: ScoringRule) -> ScoringRuleOut:
    return ScoringRuleOut(
        key=rule.key,
        kind=rule.kind,
        match=rule.match,
        points=rule.points,
        decay_days=rule.decay_days,
        created_at=rule.created_at,
    )


@router.put(
    "/scoring-rules/{key}",
    response_model=ScoringRuleOut,
    summary="Create or replace a lead scoring rule",
    description="Events, opens and clicks earn points when they happen (from then on); a "
    "`condition` rule is applied to every contact at once (their scores are recomputed and "
    "recorded as changes).",
    responses={**error_responses(), 201: {"model": ScoringRuleOut, "description": "created"}},
)
async def put_rule(
    key: Key, body: ScoringRuleIn, resources: ResourcesDep, response: Response
) -> ScoringRuleOut:
    async with resources.sessions.begin() as session:
        existing = await session.scalar(select(ScoringRule).where(col(ScoringRule.key) == key))
        before = existing.kind if existing is not None else None
        values = {
            "kind": body.kind,
            "match": body.match,
            "points": body.points,
            "decay_days": body.decay_days,
        }
        await session.execute(
            insert(ScoringRule)
            .values(key=key, **values)
            .on_conflict_do_update(index_elements=["key"], set_=values)
        )
        rule = await session.scalar(
            select(ScoringRule)
            .where(col(ScoringRule.key) == key)
            .execution_options(populate_existing=True)
        )
        assert rule is not None
    if "condition" in (before, body.kind):
        await scoring.rescore_all(resources.sessions)
    if existing is None:
        response.status_code = status.HTTP_201_CREATED
    return _rule_out(rule)


@router.get("/scoring-rules", response_model=ScoringRulePage, summary="List lead scoring rules")
async def get_rules(session: SessionDep) -> ScoringRulePage:
    rules = await session.scalars(select(ScoringRule).order_by(col(ScoringRule.key)))
    return ScoringRulePage(items=[_rule_out(r) for r in rules], score_field=scoring.SCORE_FIELD)


@router.delete(
    "/scoring-rules/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a lead scoring rule (its points leave the scores)",
    responses=error_responses({404: "no rule with this key"}),
)
async def delete_rule(key: str, resources: ResourcesDep) -> Response:
    async with resources.sessions.begin() as session:
        deleted = await session.scalar(
            delete(ScoringRule).where(col(ScoringRule.key) == key).returning(col(ScoringRule.id))
        )
    if deleted is None:
        raise NotFound(f"no scoring rule {key!r}")
    await scoring.rescore_all(resources.sessions)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- a contact's push devices --------------------------------------------------------------------


def _device_out(device: DeviceToken) -> DeviceOut:
    return DeviceOut(token=device.token, platform=device.platform, created_at=device.created_at)


@router.post(
    "/contacts/{ref}/devices",
    response_model=DeviceOut,
    status_code=status.HTTP_201_CREATED,
    summary="Register a push device token for a contact",
    description="A token already registered for another contact moves to this one. "
    "Registering the same token again answers 200.",
    responses=error_responses({404: "no such contact"}),
)
async def post_device(
    contact_id: ContactRefDep, body: DeviceIn, resources: ResourcesDep, response: Response
) -> DeviceOut:
    device, created = await add_device(resources.sessions, contact_id, body.token, body.platform)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _device_out(device)


@router.get(
    "/contacts/{ref}/devices",
    response_model=DevicePage,
    summary="A contact's push device tokens",
    responses=error_responses({404: "no such contact"}),
)
async def get_devices(contact_id: ContactRefDep, session: SessionDep) -> DevicePage:
    return DevicePage(items=[_device_out(d) for d in await list_devices(session, contact_id)])


@router.delete(
    "/contacts/{ref}/devices/{token}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a push device token of a contact",
    responses=error_responses({404: "no such contact or token"}),
)
async def delete_device(contact_id: ContactRefDep, token: str, resources: ResourcesDep) -> Response:
    await remove_device(resources.sessions, contact_id, token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- experiments ---------------------------------------------------------------------------------


def _arm_out(arm: Arm) -> ArmOut:
    return ArmOut(contacts=arm.contacts, met_goal=arm.met_goal, goal_rate=arm.rate)


@router.get(
    "/journeys/{key}/experiment",
    response_model=ExperimentOut,
    summary="Treated vs held-out contacts, and split paths, against the goal",
    description="Distinct contacts per holdout group and per path of each split step, and "
    "how many met the goal (exited with goal_met, or meet the live goal now).",
    responses=error_responses({404: "no journey with this key"}),
)
async def get_experiment(key: str, session: SessionDep) -> ExperimentOut:
    report = await experiment_report(session, key)
    return ExperimentOut(
        journey_key=report.journey_key,
        holdout_percent=report.holdout_percent,
        goal=report.goal.model_dump(mode="json") if report.goal else None,
        groups={name: _arm_out(arm) for name, arm in report.groups.items()},
        splits={
            step: {name: _arm_out(arm) for name, arm in paths.items()}
            for step, paths in report.splits.items()
        },
    )
