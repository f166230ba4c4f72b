"""The console's pages over HTTP (the browser tests drive them in Chromium): signing in, the
session cookie, revocation, and the pages' answers to unknown things."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlmodel import col, select
from temporalio.client import Client

from api.app import create_app
from api.resources import Resources
from nurture.apikeys import create_api_key, revoke_api_key
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, EnrollmentStep, Journey, JourneyVersion
from nurture.settings import Settings
from tests.support import example, make_contact, publish_journey

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_session_lives_as_long_as_its_key(
    sessions: SessionFactory, client: Client, settings: Settings
) -> None:
    await publish_journey(sessions, example("quickstart"))
    key = await create_api_key(sessions, "console")
    app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture.test") as http:
        elsewhere = {**FORM, "Origin": "https://evil.example"}
        cross = await http.post(
            "/console/login", content=f"api_key={key.secret}", headers=elsewhere
        )
        assert cross.status_code == 403 and "nurture_session" not in cross.cookies
        refused = await http.post("/console/login", content="api_key=nrt_wrong", headers=FORM)
        assert refused.status_code == 401 and "not valid" in refused.text
        assert "nurture_session" not in refused.cookies

        ours = {**FORM, "Origin": "http://nurture.test"}
        login = await http.post("/console/login", content=f"api_key={key.secret}", headers=ours)
        assert (login.status_code, login.headers["location"]) == (303, "/console/")
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and key.secret not in cookie
        session = login.cookies["nurture_session"]  # kept by the client from here on

        page = await http.get("/console/journeys/quickstart")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert 'data-step="clicked_shop"' in page.text
        assert (await http.get("/console/journeys/nope")).status_code == 404
        unknown = await http.get(f"/console/contacts/{uuid.uuid4()}")
        assert unknown.status_code == 404

        # A tampered cookie, and a revoked key's session, are sent to the login page.
        http.cookies.set("nurture_session", session[:-2] + "xx", domain="nurture.test")
        assert (await http.get("/console/")).status_code == 303
        http.cookies.set("nurture_session", session, domain="nurture.test")
        assert (await http.get("/console/")).status_code == 200
        await revoke_api_key(sessions, key.key.id)
        after = await http.get("/console/")
        assert (after.status_code, after.headers["location"]) == (303, "/console/login")

        logout = await http.post("/console/logout")
        assert logout.status_code == 303 and 'nurture_session=""' in logout.headers["set-cookie"]


async def test_the_journey_page_words_how_enrollments_ended(
    sessions: SessionFactory, client: Client, settings: Settings
) -> None:
    """The Steps table's "Ended here" says how in words (the raw reason in its tooltip), and
    an enrollment that ended inside a step is not counted again among the step's outcomes."""
    definition = {**example("quickstart"), "key": f"ended-{uuid.uuid4().hex[:8]}"}
    number = await publish_journey(sessions, definition)
    async with sessions.begin() as session:
        version = await session.scalar(
            select(JourneyVersion)
            .join(Journey, col(Journey.id) == col(JourneyVersion.journey_id))
            .where(col(Journey.key) == definition["key"], col(JourneyVersion.version) == number)
        )
        assert version is not None
        ended = (
            ("exited", "goal_met", "clicked_shop", "wait_for", "exited: goal_met"),
            ("exited", "goal_met", "clicked_shop", "wait_for", "exited: goal_met"),
            ("completed", None, "thanks", "send_email", "sent"),
            ("active", None, "clicked_shop", "wait_for", "event click"),
        )
        for status, reason, step, step_type, outcome in ended:
            enrollment = Enrollment(
                journey_id=version.journey_id,
                journey_version_id=version.id,
                version=number,
                contact_id=await make_contact(sessions),
                workflow_id=f"test-{uuid.uuid4()}",
                status=status,
                current_step=step,
                exit_reason=reason,
            )
            session.add(enrollment)
            await session.flush()
            session.add(
                EnrollmentStep(
                    enrollment_id=enrollment.id,
                    step_id=step,
                    visit=1,
                    step_type=step_type,
                    outcome=outcome,
                )
            )
    key = await create_api_key(sessions, "console")
    app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture.test") as http:
        ours = {**FORM, "Origin": "http://nurture.test"}
        login = await http.post("/console/login", content=f"api_key={key.secret}", headers=ours)
        assert login.status_code == 303
        page = await http.get(f"/console/journeys/{definition['key']}")
    assert page.status_code == 200

    def cells(step: str) -> list[str]:
        row = re.search(rf'<tr data-step="{step}">(.*?)</tr>', page.text, re.S)
        assert row is not None, step
        return [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
        ]

    # Step, type, entered, here now, passed, ended here, outcomes.
    assert cells("clicked_shop")[5:] == ["met its goal: 2", "event click: 1"]
    assert cells("thanks")[5:] == ["completed the journey: 1", "sent: 1"]
    assert '<span title="goal_met">met its goal</span>' in page.text
    assert "exited: goal_met" not in page.text


async def test_docs_pages_load_nothing_from_elsewhere(api: httpx.AsyncClient) -> None:
    assets = {
        "/docs": [
            "/static/vendor/swagger-ui/swagger-ui-bundle.js",
            "/static/vendor/swagger-ui/swagger-ui.css",
        ],
        "/redoc": ["/static/vendor/redoc/redoc.standalone.js"],
    }
    for path, files in assets.items():
        page = await api.get(path)
        assert page.status_code == 200
        assert "https://" not in page.text and "fonts.googleapis" not in page.text
        for asset in files:
            assert f'"{asset}"' in page.text
            assert (await api.get(asset)).status_code == 200
