"""Property-based fuzzing of every documented operation (schemathesis) against the real server.

Schemathesis reads the document the server serves at /openapi.json and sends, for every
operation, requests that fit it and requests that do not. Every answer must be one the document
promises: no 5xx, a documented status code and content type, a body that matches the documented
schema, and every 4xx/5xx an ``application/problem+json`` document with type, title, status and
detail, without a stack trace. A user's pass goes past authentication, an analyst's reads other
users' resources; a smaller one has no credentials. The live inbox's event stream never ends, so
it is not fuzzed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api.problems import PROBLEM_JSON
from api.serve import openapi_document
from connectors.embedded import StackUrls
from sinks.channels.webhook import SECRET_KEY_ENV
from tests.api.conftest import ApiServer, api_settings, running_api
from tests.fakes.identity import IdentityProvider

pytestmark = pytest.mark.integration

SEED = 9
STREAMS = "^/v1/inbox/(events|ws)$"
UNLIMITED = 1_000_000
# The anonymous pass comes from its own loopback address: the server counts requests without
# credentials per client address in the shared Redis, and other modules' servers share 127.0.0.1.
ANONYMOUS_ADDRESS = "127.0.0.9"
STACK_TRACE = re.compile(r'Traceback \(most recent call last\)|File "[^"]*", line \d+')


@pytest.fixture(scope="module")
def api(stack: StackUrls, database_url: str, identity: IdentityProvider) -> Iterator[ApiServer]:
    """The module's server (in this process: its webhook secrets' key is set here), with rate
    limits no fuzzing run reaches."""
    settings = api_settings(
        stack,
        database_url,
        identity,
        rate_limit_read_per_minute=UNLIMITED,
        rate_limit_write_per_minute=UNLIMITED,
        rate_limit_stream_per_minute=UNLIMITED,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_KEY_ENV, Fernet.generate_key().decode())
        with running_api(settings, identity) as server:
            yield server


def _schema(max_examples: int) -> Any:
    """The document the app serves, loaded at import time (parametrize needs the operations
    before any server runs); test_the_fuzzed_document_is_the_served_one ties the two."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": max_examples,
                "deterministic": True,
                "no-shrink": True,
                "database": "none",
            },
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_dict(DOCUMENT, config=config).exclude(path_regex=STREAMS)


DOCUMENT = openapi_document()
user_schema = _schema(25)
analyst_schema = _schema(10)
anonymous_schema = _schema(5)


def _bearer(api: ApiServer, roles: list[str]) -> dict[str, str]:
    token = api.identity.token(f"fuzz-{uuid.uuid4().hex[:8]}", roles, lifetime_s=3600)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def user_headers(api: ApiServer) -> dict[str, str]:
    return _bearer(api, ["user"])


@pytest.fixture(scope="module")
def analyst_headers(api: ApiServer) -> dict[str, str]:
    """An analyst reads any user's resources (the user_id parameters) but changes none."""
    return _bearer(api, ["analyst"])


class _FromAddress(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (ANONYMOUS_ADDRESS, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture(scope="module")
def anonymous_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.mount("http://", _FromAddress())
        yield session


def problem_document(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is an RFC 9457 problem document naming its status, without a stack trace."""
    if response.status_code < 400:
        return None
    media_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media_type == PROBLEM_JSON, f"{response.status_code} answered as {media_type!r}"
    body = response.json()
    assert isinstance(body, dict), f"problem body is not an object: {body!r}"
    missing = {"type", "title", "status", "detail"} - body.keys()
    assert not missing, f"problem document without {sorted(missing)}: {body!r}"
    assert body["status"] == response.status_code, f"status {body['status']} in the body"
    assert isinstance(body["detail"], str) and body["detail"].strip(), "empty detail"
    assert not STACK_TRACE.search(response.text), f"a stack trace: {response.text}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    problem_document,
]


def test_the_fuzzed_document_is_the_served_one(api: ApiServer) -> None:
    with api.client() as client:
        assert client.get("/openapi.json").json() == DOCUMENT


@user_schema.parametrize()
def test_every_operation_as_a_user(case: Any, api: ApiServer, user_headers: dict[str, str]) -> None:
    case.call_and_validate(base_url=api.url, headers=user_headers, checks=CHECKS)


@analyst_schema.parametrize()
def test_every_operation_as_an_analyst(
    case: Any, api: ApiServer, analyst_headers: dict[str, str]
) -> None:
    case.call_and_validate(base_url=api.url, headers=analyst_headers, checks=CHECKS)


@anonymous_schema.parametrize()
def test_every_operation_without_credentials(
    case: Any, api: ApiServer, anonymous_session: requests.Session
) -> None:
    response = case.call(base_url=api.url, session=anonymous_session)
    case.validate_response(response, checks=CHECKS)
    if not case.path.startswith("/v1/"):
        return
    # FastAPI parses a JSON body before it resolves the route's dependencies (authentication
    # among them): a body that is not JSON at all is refused first, saying only that.
    unreadable = response.status_code == 422 and response.json()["detail"].startswith(
        ("body: not valid JSON (", "body: not UTF-8 encoded JSON (")
    )
    assert response.status_code == 401 or unreadable, response.text
