"""Owner teams (assign_owner steps): turns are handed out once each under concurrency,
round-robin or by weight, and a repeated operation gets the owner it got the first time."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from nurture.db.engine import SessionFactory
from nurture.errors import Invalid
from nurture.journeys.publishing import publishable
from nurture.owners import NoOwners, Owner, assign, owner_for_turn, save_team, schedule
from tests.support import make_contact, ok, problems


def test_weighted_turns_are_interleaved_in_proportion() -> None:
    owners = [Owner("A", "a@x.io", 3), Owner("B", "b@x.io", 1)]
    assert [owners[i].name for i in schedule(owners, "weighted")] == ["A", "A", "B", "A"]
    picks = Counter(owner_for_turn(owners, "weighted", turn).name for turn in range(1, 401))
    assert picks == {"A": 300, "B": 100}
    assert [owner_for_turn(owners, "round_robin", t).name for t in (1, 2, 3)] == ["A", "B", "A"]


async def test_concurrent_assignments_never_share_a_turn(sessions: SessionFactory) -> None:
    owners = [Owner("A", "a@x.io"), Owner("B", "b@x.io"), Owner("C", "c@x.io")]
    await save_team(sessions, "sales", "Sales", "round_robin", owners)
    contact = await make_contact(sessions)
    results = await asyncio.gather(
        *(assign(sessions, "sales", contact, f"op-{i}") for i in range(30))
    )
    turns = sorted(turn for _, turn in results)
    assert turns == list(range(1, 31))  # each turn handed out once
    assert Counter(owner.name for owner, _ in results) == {"A": 10, "B": 10, "C": 10}
    # A retried operation (same key, even concurrently) gets its first owner, no new turn.
    again = await asyncio.gather(*(assign(sessions, "sales", contact, "op-3") for _ in range(5)))
    assert set(again) == {results[3]}
    _, turn = await assign(sessions, "sales", contact, "op-new")
    assert turn == 31


async def test_a_missing_or_empty_team_is_a_clear_failure(sessions: SessionFactory) -> None:
    contact = await make_contact(sessions)
    try:
        await assign(sessions, "nobody", contact, "k")
    except NoOwners as err:
        assert "no owner team 'nobody'" in str(err)
    else:
        raise AssertionError("assigned from a team that does not exist")


async def test_teams_over_the_api(api: httpx.AsyncClient) -> None:
    team = {
        "name": "Sales EMEA",
        "strategy": "weighted",
        "owners": [
            {"name": "Ann", "email": "ann@x.io", "weight": 2},
            {"name": "Bob", "email": "bob@x.io"},
        ],
    }
    created = ok(await api.put("/v1/owner-teams/emea", json=team), 201)
    assert created["owners"][1] == {"name": "Bob", "email": "bob@x.io", "weight": 1}
    team["owners"] = team["owners"][:1]
    assert len(ok(await api.put("/v1/owner-teams/emea", json=team))["owners"]) == 1
    assert [t["key"] for t in ok(await api.get("/v1/owner-teams"))["items"]] == ["emea"]
    found = problems(await api.put("/v1/owner-teams/emea", json={**team, "owners": []}))
    assert "body.owners" in found, found
    bad_key = await api.put("/v1/owner-teams/Not%20A%20Key", json=team)
    assert bad_key.status_code == 422
    assert (await api.delete("/v1/owner-teams/emea")).status_code == 204
    assert (await api.get("/v1/owner-teams/emea")).status_code == 404


async def test_publishing_needs_the_team_to_exist(sessions: SessionFactory) -> None:
    journey = {
        "key": "handoff",
        "name": "Hand-off",
        "start": "assign",
        "steps": {"assign": {"type": "assign_owner", "team": "sales"}},
    }
    async with sessions() as session:
        try:
            await publishable(session, journey)
        except Invalid as err:
            assert err.detail == [{"path": "steps.assign.team", "message": "no owner team 'sales'"}]
        else:
            raise AssertionError("published with a team that does not exist")
    await save_team(sessions, "sales", "Sales", "round_robin", [Owner("A", "a@x.io")])
    async with sessions() as session:
        assert (await publishable(session, journey)).steps["assign"].type == "assign_owner"
