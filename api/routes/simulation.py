"""Simulate a journey in virtual time before launch (docs/simulation.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contact_refs import find_contact_id
from api.deps import ResourcesDep
from api.schemas.common import BODY_TOO_LARGE, error_responses
from nurture.errors import Unavailable
from nurture.simulation.prepare import simulate
from nurture.simulation.report import SimulationReport
from nurture.simulation.script import SimulationRequest

router = APIRouter(prefix="/journeys", tags=["journeys"])


@router.post(
    "/{key}/simulate",
    response_model=SimulationReport,
    summary="Simulate a journey in virtual time: nothing is sent or stored",
    description="Runs the draft (the default), the live version or a given version for test "
    "contacts (existing ones by reference, or described inline) with a script of their "
    "behaviour at virtual moments: `opens`/`clicks` a message some time `after` it is sent, "
    "an `event`, a change of fields, tags or lists `at` some time after entry. The journey's "
    "real interpreter runs on a time-skipping Temporal test server with stand-in activities "
    "on in-memory copies of the contacts, so months pass in moments and no contact, message, "
    "event or counter is touched. Answers, per contact: the path with virtual timestamps, each "
    "message rendered (subject, text, the links it would track) but not sent, the waits, the "
    "branch decisions with the values they saw, the goal and the exit. A draft with problems "
    "is a 422 listing them, as `publish` does.",
    responses=error_responses(
        {
            404: "no journey with this key, or no such version",
            413: BODY_TOO_LARGE,
            422: "the draft is invalid, or the script names a contact or step that does not "
            "exist: `detail` lists every problem",
            503: "the simulation server could not be started",
        }
    ),
)
async def simulate_journey(
    key: str,
    body: SimulationRequest,
    resources: ResourcesDep,
    version: Annotated[
        str | None,
        Query(
            pattern=r"^(draft|live|[1-9][0-9]{0,8})$",
            description='overrides the body\'s `version`: "draft", "live" or a version number',
        ),
    ] = None,
) -> SimulationReport:
    chosen: str | int | None = int(version) if version and version.isdigit() else version
    try:
        return await simulate(
            resources.sessions,
            key,
            body,
            find_contact_id,
            resources.settings.public_base_url,
            chosen,
        )
    except FileNotFoundError as err:  # the temporal-test-server binary is not installed
        raise Unavailable(f"simulations are unavailable here: {err}") from err
