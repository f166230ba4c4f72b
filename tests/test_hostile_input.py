"""Hostile input (issue 10, item 9): what fuzzing found answered 500, or answered what the
OpenAPI document does not say. Each is refused in one place (`api/input_guard.py`,
`api/errors.py`, `api/openapi.py`), so these check a few routes for each kind."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.schemas.common import PG_INT_MAX
from nurture.errors import BadRequest
from nurture.webhooks.base import parse_json
from tests.support import ok, problems

JSON = {"Content-Type": "application/json"}
BIG = "99999999999999999999"  # past int64


async def post_raw(api: httpx.AsyncClient, url: str, body: bytes, **headers: str) -> httpx.Response:
    return await api.post(url, content=body, headers={**JSON, **headers})


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (rb'{"key": "news", "name": "a\u0000b"}', "body.name"),  # an escaped NUL
        (b'{"key": "news", "name": "a\x00b"}', None),  # a raw NUL: not JSON (400)
        (rb'{"key": "news", "name": "\ud800"}', "body.name"),  # an unpaired surrogate
        (rb'{"key": "news", "name": "x\udc00y"}', "body.name"),
        (rb'{"key": "news", "name": "ok", "\u0000": 1}', "body.\x00"),  # in a key
    ],
)
async def test_strings_postgres_cannot_store_are_refused(
    api: httpx.AsyncClient, body: bytes, path: str | None
) -> None:
    response = await post_raw(api, "/v1/lists", body)
    if path is None:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_request"
    else:
        [(found, message)] = problems(response).items()
        assert found == path
        assert "NUL" in message or "surrogate" in message
    assert ok(await api.get("/v1/lists"))["items"] == []


async def test_nested_values_and_contact_fields_too(api: httpx.AsyncClient) -> None:
    body = rb'{"fields": {"notes": ["fine", {"deep": "bad\u0000"}]}}'
    response = await api.put("/v1/contacts/crm-1", content=body, headers=JSON)
    assert list(problems(response)) == ["body.fields.notes.1.deep"]
    event = rb'{"external_id": "crm-1", "name": "order", "properties": {"note": "\udfff"}}'
    assert list(problems(await post_raw(api, "/v1/events", event))) == ["body.properties.note"]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (rb'{"key": "news", "name": "ok", "n": 1e999}', "body.n", "not finite"),
        (b'{"key": "news", "name": "ok", "n": 1' + b"0" * 400 + b".5}", "body.n", "not finite"),
        (b'{"key": "news", "name": "ok", "n": ' + b"[" * 65 + b"]" * 65 + b"}", "body.n", "nested"),
    ],
)
async def test_what_only_the_parsed_body_shows_is_refused(
    api: httpx.AsyncClient, body: bytes, path: str, message: str
) -> None:
    """Past the guard's look at the text (no escape, few brackets, short numbers: nothing to
    walk), the parsed body is walked: an infinite number, a body nested too deep."""
    [(found, problem)] = problems(await post_raw(api, "/v1/lists", body)).items()
    assert found.startswith(path)
    assert message in problem


async def test_a_plain_body_and_a_harmless_escape_are_accepted(api: httpx.AsyncClient) -> None:
    for key, body in (
        ("plain", rb'{"key": "plain", "name": "news"}'),
        ("escaped", rb'{"key": "escaped", "name": "caf\u00e9 [{1e5}]"}'),
    ):
        response = await post_raw(api, "/v1/lists", body)
        assert response.status_code == 201, response.text
        assert response.json()["key"] == key
    names = {item["name"] for item in ok(await api.get("/v1/lists"))["items"]}
    assert names == {"news", "caf\u00e9 [{1e5}]"}


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"key": "news",', b"\xff\xfe{}", b'{"key": NaN}', b'{"n": Infinity}', b"[1]]"],
)
async def test_a_body_that_is_not_json_is_a_400(api: httpx.AsyncClient, body: bytes) -> None:
    response = await post_raw(api, "/v1/lists", body)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"
    assert response.json()["detail"].startswith("the body is not")


async def test_nul_in_query_and_path_parameters(api: httpx.AsyncClient) -> None:
    [(path, _)] = problems(await api.get("/v1/contacts", params={"email": "a\x00@b.c"})).items()
    assert path == "query.email"
    [(path, _)] = problems(await api.get("/v1/journeys/a%00b")).items()
    assert path == "path.key"
    [(path, _)] = problems(await api.get("/v1/lists/x%00/members")).items()
    assert path == "path.key"


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/contacts?offset={BIG}",
        f"/v1/journeys?offset={BIG}",
        f"/v1/enrollments?offset={BIG}",
        f"/v1/templates?offset={BIG}",
        f"/v1/segments?offset={BIG}",
        f"/v1/lists?offset={BIG}",
        f"/v1/templates/email/welcome/versions/{BIG}",
        f"/v1/contacts?limit={BIG}",
    ],
)
async def test_integers_past_what_postgres_holds_are_a_422(
    api: httpx.AsyncClient, url: str
) -> None:
    [(path, message)] = problems(await api.get(url)).items()
    assert path.split(".")[0] in ("query", "path")
    assert "less than or equal to" in message


# An import asks the segment watch for a sweep: a worker takes it, and the test ends it.
@pytest.mark.usefixtures("worker")
async def test_a_csv_with_bare_carriage_returns(api: httpx.AsyncClient) -> None:
    """Old Mac line endings: each CR ends a row (it was a 500, from the csv module)."""
    text = "external_id,email\rcrm-1,a@example.com\rcrm-2,b@example.com\r\r\ncrm-3,c@example.com"
    body = ok(
        await api.post(
            "/v1/contacts/import", content=text.encode(), headers={"Content-Type": "text/csv"}
        )
    )
    assert (body["rows"], body["imported"], body["error_count"]) == (3, 3, 0), body
    assert ok(await api.get("/v1/contacts/crm-2"))["email"] == "b@example.com"


# An import asks the segment watch for a sweep: a worker takes it, and the test ends it.
@pytest.mark.usefixtures("worker")
async def test_a_csv_value_past_the_csv_modules_limit_refuses_its_row(
    api: httpx.AsyncClient,
) -> None:
    text = f'external_id,note\ncrm-1,"{"x" * 140_000}"\ncrm-2,fine\n'
    body = ok(
        await api.post(
            "/v1/contacts/import", content=text.encode(), headers={"Content-Type": "text/csv"}
        )
    )
    assert body["imported"] == 1
    [error] = body["errors"]
    assert error["row"] == 2


async def test_405_names_the_allowed_methods_and_401_how_to_authenticate(
    api: httpx.AsyncClient,
) -> None:
    refused = await api.post("/v1/contacts/crm-1")
    assert refused.status_code == 405
    assert refused.headers["Allow"] == "DELETE, GET, PATCH, PUT"
    assert (await api.delete("/v1/journeys")).headers["Allow"] == "GET, POST"
    # The import's own path, not the contact whose external id would be "import".
    assert (await api.get("/v1/contacts/import")).status_code != 405
    assert (await api.options("/v1/contacts/import")).headers["Allow"] == "POST"

    anonymous = await api.get("/v1/journeys", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="nurture"'
    wrong = await api.get("/v1/journeys", headers={"Authorization": "Bearer nrt_nope"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="nurture"'


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if method in ("get", "put", "post", "patch", "delete")
    ]


async def test_the_openapi_document_says_what_errors_look_like(api: httpx.AsyncClient) -> None:
    document = ok(await api.get("/openapi.json"))
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ErrorOut" in schemas
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, method, operation in _operations(document):
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        for code, response in responses.items():
            if code[0] in "45":
                content = response.get("content", {})
                assert content.get("application/json", {}).get("schema") == error or (
                    "text/html" in content
                ), (where, code)
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(responses), where
        if operation.get("security"):
            assert "WWW-Authenticate" in responses["401"]["headers"], where
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            assert "404" in responses, where
        for parameter in operation.get("parameters", []):
            schema = parameter["schema"]
            types = [schema, *schema.get("anyOf", [])]
            if any(t.get("type") == "integer" for t in types):
                maximum = max(
                    t.get("maximum", float("inf")) for t in types if t.get("type") == "integer"
                )
                assert maximum <= PG_INT_MAX, (where, parameter["name"])


def test_webhook_bodies_get_the_same_check() -> None:
    assert parse_json(b'{"event": "delivered"}') == {"event": "delivered"}
    for body in (rb'{"event": "a\u0000"}', rb'{"event": "\ud800"}', b'{"n": NaN}'):
        with pytest.raises(BadRequest):
            parse_json(body)
