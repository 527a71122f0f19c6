"""The service itself: health, readiness, problem documents, the OpenAPI document."""

from __future__ import annotations

import json

from api.serve import OPENAPI_FILE, openapi_text
from tests.api.conftest import ApiServer


def test_healthz_answers_without_credentials(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_each_dependency(api: ApiServer) -> None:
    with api.client() as client:
        body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"kafka", "postgres", "redis"}
    assert all(check["status"] == "ok" for check in body["checks"].values())


def test_unknown_route_is_a_problem_document(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["detail"] == "no route GET /v1/nothing-here"
    assert body["type"].startswith("https://")


def test_served_openapi_document_is_3_1(api: ApiServer) -> None:
    with api.client() as client:
        document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")


def test_checked_in_openapi_document_equals_the_generated_one() -> None:
    generated = openapi_text()
    assert OPENAPI_FILE.exists(), "run `python -m api.serve` to write docs/api/openapi.json"
    checked_in = OPENAPI_FILE.read_text()
    assert json.loads(checked_in) == json.loads(generated), (
        "docs/api/openapi.json is stale: run `python -m api.serve` and commit it"
    )


def test_a_body_that_is_not_utf8_is_a_422_problem(api: ApiServer) -> None:
    with api.as_user("utf8-tester") as client:
        response = client.post(
            "/v1/feedback", content=b'{"x": "\xff"}', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422
    assert body["detail"].startswith("body: not UTF-8 encoded JSON (")
    assert body["errors"][0]["pointer"] == "body"


def test_every_documented_error_is_a_problem_document(api: ApiServer) -> None:
    with api.client() as client:
        document = client.get("/openapi.json").json()
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    errors = {
        (method, path, status): response.get("content")
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status, response in operation["responses"].items()
        if status[0] in "45"
    }
    # The readiness report is the one error answer with a body of its own.
    assert errors.pop(("get", "/readyz", "503"))["application/json"]
    assert errors and all(content == problem for content in errors.values())
    schema = document["components"]["schemas"]
    assert set(schema["Problem"]["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in schema


def test_malformed_json_is_a_422_problem_saying_where(api: ApiServer) -> None:
    with api.as_user("json-tester") as client:
        response = client.post(
            "/v1/feedback", content=b'{"alert_id": ', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "body: not valid JSON (Expecting value at character 13)"
    assert body["errors"] == [
        {"pointer": "body", "detail": "not valid JSON (Expecting value at character 13)"}
    ]
