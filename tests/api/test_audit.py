"""The audit log of writes and X-Request-ID, against the real server and its database."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.api.conftest import ApiServer
from tests.api.test_auth import insert_api_key


def rows(api: ApiServer, request_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(api.settings.database_url or "", row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT actor, actor_role, via, api_key_id::text, method, path, status, "
            "client_address, user_agent, request_id FROM api_audit_log WHERE request_id = %s",
            (request_id,),
        ).fetchall()


def test_a_write_is_recorded_with_who_what_status_and_where(api: ApiServer) -> None:
    request_id = f"audit-{uuid.uuid4().hex}"
    with api.as_user("audrey") as client:
        response = client.post(
            "/v1/me",
            json={},
            headers={"X-Request-ID": request_id, "User-Agent": "audit-test/1.0"},
        )
    assert response.headers["x-request-id"] == request_id
    assert rows(api, request_id) == [
        {
            "actor": "audrey",
            "actor_role": "user",
            "via": "jwt",
            "api_key_id": None,
            "method": "POST",
            "path": "/v1/me",
            "status": response.status_code,
            "client_address": "127.0.0.1",
            "user_agent": "audit-test/1.0",
            "request_id": request_id,
        }
    ]


def test_every_write_method_and_api_keys_are_recorded(api: ApiServer) -> None:
    key, key_id = insert_api_key(api.settings.database_url or "", "keith", ["rules:read"])
    with api.client(key) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            request_id = f"audit-{uuid.uuid4().hex}"
            response = client.request(method, "/v1/profile", headers={"X-Request-ID": request_id})
            [row] = rows(api, request_id)
            assert (row["method"], row["status"]) == (method, response.status_code)
            assert (row["actor"], row["via"], row["api_key_id"]) == ("keith", "api_key", key_id)


def test_reads_and_unauthenticated_writes_are_not_recorded(api: ApiServer) -> None:
    read_id, anonymous_id, refused_id = (f"audit-{uuid.uuid4().hex}" for _ in range(3))
    with api.as_user("audrey") as client:
        assert client.get("/v1/me", headers={"X-Request-ID": read_id}).status_code == 200
    with api.client() as client:
        assert (
            client.patch("/v1/profile", headers={"X-Request-ID": anonymous_id}).status_code == 401
        )
    with api.client("sa_nope_nope") as client:
        assert client.patch("/v1/profile", headers={"X-Request-ID": refused_id}).status_code == 401
    assert rows(api, read_id) == rows(api, anonymous_id) == rows(api, refused_id) == []


def test_analysts_can_read_the_audit_log(api: ApiServer) -> None:
    request_id = f"audit-{uuid.uuid4().hex}"
    with api.as_user("audrey") as client:
        client.delete("/v1/me", headers={"X-Request-ID": request_id})
    with psycopg.connect(api.settings.database_url or "") as conn:
        conn.execute("SET ROLE smart_alerts_analyst")
        found = conn.execute(
            "SELECT actor FROM api_audit_log WHERE request_id = %s", (request_id,)
        ).fetchall()
        assert found == [("audrey",)]
        conn.rollback()


def test_request_ids_are_echoed_or_made(api: ApiServer) -> None:
    with api.client() as client:
        made = client.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert client.get("/healthz").headers["x-request-id"] != made
        given = client.get("/healthz", headers={"X-Request-ID": "trace-42.a"})
        assert given.headers["x-request-id"] == "trace-42.a"
        for unsafe in ("has spaces in it", "x" * 129, "semi;colon"):
            answer = client.get("/healthz", headers={"X-Request-ID": unsafe})
            assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
        problem = client.get("/v1/me", headers={"X-Request-ID": "on-a-401"})
        assert (problem.status_code, problem.headers["x-request-id"]) == (401, "on-a-401")


def test_writes_refused_by_the_body_limit_are_recorded_too(api: ApiServer) -> None:
    request_id = f"audit-{uuid.uuid4().hex}"
    too_large = b"x" * (api.settings.api.max_body_bytes + 1)
    with api.as_user("audrey") as client:
        response = client.post("/v1/rules", content=too_large, headers={"X-Request-ID": request_id})
    assert response.status_code == 413
    [row] = rows(api, request_id)
    assert (row["actor"], row["path"], row["status"]) == ("audrey", "/v1/rules", 413)
