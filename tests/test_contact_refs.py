"""Naming a contact in a path: `id:<uuid>`, `ext:<external id>` or bare, percent-encoded as
one segment, on every route that takes a contact in its path (in-process and through uvicorn)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from sqlalchemy import func
from sqlmodel import select
from starlette.types import Receive, Scope, Send
from temporalio.client import Client

from api.app import create_app
from api.contact_refs import (
    ContactRefPaths,
    find_contact_id,
    parse_contact_ref,
    partly_decoded,
)
from api.resources import Resources
from nurture.apikeys import create_api_key
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact
from nurture.devstack import EmbeddedServer
from nurture.errors import Invalid
from nurture.settings import Settings
from tests.support import ok, problems

# External ids a client may have: slashes, percent signs, an encoded slash written literally,
# ids that look like prefixes, spaces and URL syntax, unicode.
AWKWARD = [
    "a/b",
    "100%",
    "x%2Fy",
    "%41%",
    "/lead/",
    "two words?#&=+;:",
    "Łódź/zoë ✉",
]


def seg(ref: str) -> str:
    """A reference as one path segment, as a client encodes it."""
    return quote(ref, safe="")


def contacts_url(ref: str) -> str:
    return f"/v1/contacts/{seg(ref)}"


async def contact_count(sessions: SessionFactory) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Contact)) or 0)


# --- parsing and the path rewrite, without a database ----------------------------------------


def test_parse_reads_prefixes_bare_values_and_refuses_malformed_ones() -> None:
    some_id = uuid.uuid4()

    by_id = parse_contact_ref(f"id:{some_id}")
    by_ext = parse_contact_ref("ext:id:x")
    bare_uuid = parse_contact_ref(str(some_id).upper())
    bare = parse_contact_ref("ada")

    assert (by_id.kind, by_id.contact_id, by_id.external_id) == ("id", some_id, None)
    assert (by_ext.kind, by_ext.contact_id, by_ext.external_id) == ("ext", None, "id:x")
    assert (bare_uuid.contact_id, bare_uuid.external_id) == (some_id, str(some_id).upper())
    assert (bare.kind, bare.contact_id, bare.external_id) == ("bare", None, "ada")
    assert parse_contact_ref("ext:" + "x" * 255).external_id == "x" * 255
    for malformed in ("id:ada", "id:", "", "ext:", "x" * 256, "ext:" + "x" * 256, "a\x00"):
        with pytest.raises(Invalid) as refused:
            parse_contact_ref(malformed)
        assert "id:<uuid>, ext:<external id>, or a bare external id / uuid" in str(refused.value)


def test_partly_decoded_keeps_encoded_slashes_and_percent_signs() -> None:
    assert partly_decoded(b"/v1/contacts/a%2Fb%2f%25%41%C5%81%20") == "/v1/contacts/a%2Fb%2F%25AŁ "
    assert partly_decoded(b"/v1/contacts/plain") == "/v1/contacts/plain"


async def _scope_after(path: str, raw_path: bytes | None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)

    scope: dict[str, Any] = {"type": "http", "path": path}
    if raw_path is not None:
        scope["raw_path"] = raw_path

    async def receive() -> Any:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        raise AssertionError("not sent")

    await ContactRefPaths(app)(scope, receive, send)
    return seen


async def test_only_contact_and_list_paths_are_rebuilt_from_the_raw_path() -> None:
    contacts = await _scope_after("/v1/contacts/a/b", b"/v1/contacts/a%2Fb")
    members = await _scope_after("/v1/lists/vip/members/1/2%", b"/v1/lists/vip/members/1%2F2%25")
    elsewhere = await _scope_after("/v1/templates/email/a/b", b"/v1/templates/email/a%2Fb")
    no_raw_path = await _scope_after("/v1/contacts/a/b", None)
    disagreeing = await _scope_after("/v1/contacts/other", b"/v1/contacts/a%2Fb")

    assert contacts["path"] == "/v1/contacts/a%2Fb"
    assert members["path"] == "/v1/lists/vip/members/1%2F2%25"
    assert elsewhere["path"] == "/v1/templates/email/a/b"
    assert no_raw_path["path"] == "/v1/contacts/a/b"
    assert disagreeing["path"] == "/v1/contacts/other"


async def test_httpx_asgi_transport_sets_raw_path() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t.test"
    ) as http:
        await http.get("/v1/contacts/a%2Fb%25?x=1")

    assert seen["raw_path"] == b"/v1/contacts/a%2Fb%25"
    assert seen["path"] == "/v1/contacts/a/b%"


# --- through the app -------------------------------------------------------------------------


async def test_awkward_external_ids_work_on_every_contact_route(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.post("/v1/lists", json={"key": "vip", "name": "VIP"}), 201)
    for external_id in AWKWARD:
        created = ok(await api.put(contacts_url(external_id), json={"tags": ["t"]}), 201)
        assert created["external_id"] == external_id
        ok(await api.post("/v1/lists/vip/members", json={"contact_ids": [created["id"]]}))

        bare = ok(await api.get(contacts_url(external_id)))
        prefixed = ok(await api.get(contacts_url(f"ext:{external_id}")))
        by_id = ok(await api.get(contacts_url(f"id:{created['id']}")))
        updated = ok(await api.put(contacts_url(f"ext:{external_id}"), json={"tags": ["u"]}))
        patched = ok(await api.patch(contacts_url(external_id), json={"add_tags": ["p"]}))
        removed = await api.delete(f"/v1/lists/vip/members/{seg('ext:' + external_id)}")

        assert bare["id"] == prefixed["id"] == by_id["id"] == created["id"], external_id
        assert bare["lists"] == ["vip"]
        assert updated["tags"] == ["u"]
        assert patched["tags"] == ["u", "p"]
        assert removed.status_code == 204, removed.text
        assert ok(await api.get(contacts_url(external_id)))["lists"] == []
    assert await contact_count(sessions) == len(AWKWARD)

    for external_id in AWKWARD:
        assert (await api.delete(contacts_url(external_id))).status_code == 204
        assert (await api.get(contacts_url(external_id))).status_code == 404
    assert await contact_count(sessions) == 0


async def test_external_ids_that_begin_like_a_prefix_need_ext(api: httpx.AsyncClient) -> None:
    looks_like_id = ok(await api.put(contacts_url("ext:id:crm-7"), json={}), 201)
    looks_like_ext = ok(await api.put(contacts_url("ext:ext:crm-8"), json={}), 201)
    crm_8 = ok(await api.put(contacts_url("crm-8"), json={}), 201)

    bare_id = await api.get(contacts_url("id:crm-7"))
    bare_ext = ok(await api.get(contacts_url("ext:crm-8")))
    prefixed = ok(await api.get(contacts_url("ext:ext:crm-8")))
    colon_inside = ok(await api.put(contacts_url("crm:9"), json={}), 201)

    assert (looks_like_id["external_id"], looks_like_ext["external_id"]) == (
        "id:crm-7", "ext:crm-8",
    )  # fmt: skip
    assert list(problems(bare_id)) == ["path.ref"]  # id: is always the prefix
    assert bare_ext["id"] == crm_8["id"]  # ext: is always the prefix
    assert prefixed["id"] == looks_like_ext["id"]
    assert colon_inside["external_id"] == "crm:9"
    assert ok(await api.get(contacts_url("crm:9")))["id"] == colon_inside["id"]


async def test_a_slash_in_an_external_id_is_not_a_path_separator(api: httpx.AsyncClient) -> None:
    ok(await api.put(contacts_url("a/b"), json={}), 201)
    ok(await api.put(contacts_url("a"), json={}), 201)

    unencoded = await api.get("/v1/contacts/a/b")  # two segments: no such route
    literal = await api.get(contacts_url("a%2Fb"))  # the id "a%2Fb", which nobody has

    assert unencoded.status_code == 404
    assert unencoded.json()["error"] == "not_found"
    assert literal.status_code == 404
    assert literal.json()["detail"] == "no contact with reference 'ext:a%2Fb'"


async def test_a_bare_uuid_is_nurtures_id_first_then_an_external_id(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    crm_id = str(uuid.uuid4())
    from_crm = ok(await api.put(contacts_url(crm_id), json={"email": "crm@example.com"}), 201)
    ada = ok(await api.put(contacts_url("ada"), json={"email": "ada@example.com"}), 201)
    # An external id that is another contact's Nurture id: the bare reading finds ada.
    shadow = ok(await api.put(contacts_url(f"ext:{ada['id']}"), json={}), 201)

    found_by_external_id = ok(await api.get(contacts_url(crm_id)))
    as_id = await api.get(contacts_url(f"id:{crm_id}"))
    as_ext = ok(await api.get(contacts_url(f"ext:{crm_id}")))
    bare_ada = ok(await api.get(contacts_url(ada["id"])))
    ext_ada_id = ok(await api.get(contacts_url(f"ext:{ada['id']}")))
    unknown = str(uuid.uuid4())
    nobody = await api.get(contacts_url(unknown))

    assert from_crm["external_id"] == crm_id
    assert found_by_external_id["id"] == as_ext["id"] == from_crm["id"]
    assert as_id.status_code == 404
    assert as_id.json() == {
        "error": "not_found",
        "detail": f"no contact with reference 'id:{crm_id}'",
    }
    assert bare_ada["id"] == ada["id"]
    assert ext_ada_id["id"] == shadow["id"]
    assert nobody.status_code == 404
    assert nobody.json()["detail"] == (
        f"no contact with reference '{unknown}' (neither id:{unknown} nor ext:{unknown})"
    )
    async with sessions() as session:
        assert await find_contact_id(session, crm_id) == uuid.UUID(from_crm["id"])
        assert await find_contact_id(session, ada["id"]) == uuid.UUID(ada["id"])
        assert await find_contact_id(session, f"ext:{ada['id']}") == uuid.UUID(shadow["id"])
        assert await find_contact_id(session, "ext:nobody") is None


async def test_put_by_nurtures_id_updates_with_replace_semantics(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ada = ok(
        await api.put(
            contacts_url("ada"),
            json={"email": "ada@example.com", "fields": {"a": 1, "b": 2}, "tags": ["x", "y"]},
        ),
        201,
    )

    by_id = await api.put(contacts_url(f"id:{ada['id']}"), json={"fields": {"c": 3}})
    by_bare_id = await api.put(contacts_url(ada["id"]), json={"tags": ["z"]})
    unknown = str(uuid.uuid4())
    by_unknown_id = await api.put(contacts_url(f"id:{unknown}"), json={"tags": ["z"]})

    assert ok(by_id)["fields"] == {"c": 3}  # replaced, as a PUT by external id does
    assert ok(by_id)["tags"] == ["x", "y"]  # left out: not changed
    assert ok(by_bare_id)["tags"] == ["z"]
    assert ok(by_bare_id)["fields"] == {"c": 3}
    assert (ok(by_bare_id)["id"], ok(by_bare_id)["external_id"]) == (ada["id"], "ada")
    assert by_unknown_id.status_code == 404
    assert by_unknown_id.json()["detail"] == f"no contact with reference 'id:{unknown}'"
    assert await contact_count(sessions) == 1
    # A bare uuid that is nobody's id is an external id: the contact is created.
    created = ok(await api.put(contacts_url(unknown), json={}), 201)
    assert created["external_id"] == unknown
    assert ok(await api.put(contacts_url(unknown), json={"tags": ["again"]}))["id"] == created["id"]


async def test_unknown_and_malformed_references(api: httpx.AsyncClient) -> None:
    ok(await api.post("/v1/lists", json={"key": "vip", "name": "VIP"}), 201)
    ada = ok(await api.put(contacts_url("ada"), json={}), 201)

    patched_by_external_id = ok(await api.patch("/v1/contacts/ada", json={"add_tags": ["x"]}))
    unknown = {
        "get": await api.get(contacts_url("bob")),
        "patch": await api.patch(contacts_url("ext:bob"), json={"add_tags": ["x"]}),
        "delete": await api.delete(contacts_url("bob")),
        "remove member": await api.delete("/v1/lists/vip/members/bob"),
    }
    unknown_list = await api.delete(f"/v1/lists/nope/members/{ada['id']}")
    malformed = {
        "id:ada": await api.get(contacts_url("id:ada")),
        "id:": await api.patch(contacts_url("id:"), json={}),
        "ext:": await api.put(contacts_url("ext:"), json={}),
        "long": await api.put(contacts_url("x" * 256), json={}),
        "long ext": await api.get(contacts_url("ext:" + "é" * 256)),
        "not utf-8": await api.get("/v1/contacts/%FF"),
        "nul": await api.put(contacts_url("a\x00b"), json={}),
        "member": await api.delete(f"/v1/lists/vip/members/{seg('id:1')}"),
    }

    assert patched_by_external_id["id"] == ada["id"]
    assert patched_by_external_id["tags"] == ["x"]
    for name, response in unknown.items():
        assert response.status_code == 404, name
        assert response.json() == {
            "error": "not_found",
            "detail": "no contact with reference 'ext:bob'",
        }, name
    assert unknown_list.json() == {"error": "not_found", "detail": "no list 'nope'"}
    for name, response in malformed.items():
        assert response.json()["error"] == "invalid", name
        [(path, message)] = problems(response).items()
        assert path == "path.ref", name
        assert "a contact reference is id:<uuid>, ext:<external id>, or a bare" in message, name
        assert message == response.json()["message"]
    assert "id: must be followed by a uuid" in problems(malformed["id:ada"])["path.ref"]
    assert "empty contact reference" in problems(malformed["ext:"])["path.ref"]
    assert "longer than 255 characters" in problems(malformed["long"])["path.ref"]
    # A 255-character external id (more bytes than that once encoded) is fine.
    assert ok(await api.put(contacts_url("ext:" + "é" * 255), json={}), 201)["external_id"] == (
        "é" * 255
    )


async def test_openapi_documents_the_reference(api: httpx.AsyncClient) -> None:
    spec = ok(await api.get("/openapi.json"))
    contact = spec["paths"]["/v1/contacts/{ref}"]
    member = spec["paths"]["/v1/lists/{key}/members/{ref}"]

    assert set(contact) == {"put", "get", "patch", "delete"}
    for operation in [*contact.values(), member["delete"]]:
        [ref] = [p for p in operation["parameters"] if p["name"] == "ref"]
        assert ref["in"] == "path"
        assert "`id:<uuid>`" in ref["description"] and "`ext:<external id>`" in ref["description"]
        assert "a%2Fb" in operation["description"]
    assert contact["put"]["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ContactOut"
    }
    assert {"200", "201", "404", "422"} <= set(contact["put"]["responses"])


# --- through uvicorn on loopback -------------------------------------------------------------


@pytest.fixture
async def served(
    sessions: SessionFactory, client: Client, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The app served by uvicorn (h11) on 127.0.0.1, and a client for it over TCP."""
    app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
    key = await create_api_key(sessions, "uvicorn")
    listening = socket.create_server(("127.0.0.1", 0))  # connections wait until uvicorn serves
    port = listening.getsockname()[1]
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning")
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key.secret}"},
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task
        listening.close()


async def test_references_through_uvicorn(served: httpx.AsyncClient) -> None:
    crm_id = str(uuid.uuid4())
    ok(await served.post("/v1/lists", json={"key": "vip", "name": "VIP"}), 201)
    for external_id in [*AWKWARD, crm_id]:
        created = ok(await served.put(contacts_url(external_id), json={}), 201)
        ok(await served.post("/v1/lists/vip/members", json={"contact_ids": [created["id"]]}))
        read = ok(await served.get(contacts_url(f"ext:{external_id}")))
        patched = ok(await served.patch(contacts_url(external_id), json={"add_tags": ["p"]}))
        removed = await served.delete(f"/v1/lists/vip/members/{seg(external_id)}")
        deleted = await served.delete(contacts_url(external_id))

        assert created["external_id"] == external_id
        assert read["id"] == patched["id"] == created["id"], external_id
        assert read["lists"] == ["vip"]
        assert (removed.status_code, deleted.status_code) == (204, 204), external_id
    malformed = await served.get(contacts_url("id:ada"))
    assert list(problems(malformed)) == ["path.ref"]
