"""The assign_owner step's activity: the team's next owner, once per step run."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.contracts import OwnerChosen, OwnerRequest
from nurture.db.engine import SessionFactory
from nurture.owners import NoOwners, assign


class OwnerActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def assign_owner(self, request: OwnerRequest) -> OwnerChosen:
        try:
            owner, turn = await assign(
                self._sessions, request.team, request.contact_id, request.operation_key
            )
        except NoOwners as err:
            raise ApplicationError(str(err), type="NoOwners", non_retryable=True) from err
        return OwnerChosen(team=request.team, name=owner.name, email=owner.email, turn=turn)
