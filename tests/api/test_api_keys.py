"""API keys: made (shown once, stored as a hash), listed, revoked, and used end to end: a key
acts as its maker with its scopes only."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from tests.api.conftest import ApiServer

KEYS = "/v1/api-keys"


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def create(client: httpx.Client, *scopes: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "integration", "scopes": list(scopes), **fields}
    response = client.post(KEYS, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def listed(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get(KEYS, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def stored(api: ApiServer, key_id: str) -> dict[str, Any]:
    assert api.settings.database_url is not None
    with psycopg.connect(api.settings.database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM api_keys WHERE id = %s", (key_id,)).fetchone() or {}


def test_a_key_is_shown_once_and_only_its_hash_is_stored(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        made = create(client, "rules:read", "keys", name="ci runner")
        key = made["key"]
        assert key.startswith(f"sa_{made['prefix']}_")
        assert made["name"] == "ci runner"
        assert made["scopes"] == ["keys", "rules:read"]
        assert made["last_used_at"] is None and made["revoked_at"] is None
        assert made["expires_at"] is None
        (item,) = listed(client)
        assert item == {k: v for k, v in made.items() if k != "key"}
        assert key not in client.get(KEYS).text
    row = stored(api, made["id"])
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(row, default=str)


def test_a_key_acts_as_its_maker_and_records_its_use(api: ApiServer) -> None:
    owner = user()
    with api.as_user(owner) as client:
        made = create(client, "keys")
        create(client, "alerts:read", name="second")
    with api.client(made["key"]) as keyed:
        # X-API-Key works as well as the bearer header
        items = listed(keyed)
        with api.client(headers={"X-API-Key": made["key"]}) as header:
            assert [item["id"] for item in listed(header)] == [item["id"] for item in items]
        assert {item["name"] for item in items} == {"integration", "second"}
        by_key = create(keyed, "keys", name="made by a key")
    assert stored(api, by_key["id"])["user_external_id"] == owner
    with api.as_user(owner) as client:
        mine = {item["id"]: item for item in listed(client)}
    assert by_key["id"] in mine
    assert mine[made["id"]]["last_used_at"] is not None


def test_scopes_limit_what_a_key_may_do(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        reader = create(client, "rules:read")["key"]
        keeper = create(client, "keys")["key"]
    with api.client(reader) as keyed:
        for method, path in [("GET", KEYS), ("POST", KEYS), ("GET", "/v1/webhooks")]:
            problem = assert_problem(keyed.request(method, path, json={}), 403)
            assert "scope" in problem["detail"]
    with api.client(keeper) as keyed:
        assert len(listed(keyed)) == 2
        problem = assert_problem(keyed.get("/v1/webhooks"), 403)
        assert "'webhooks' scope" in problem["detail"]
        # a key cannot make a key with more than it has
        refused = keyed.post(KEYS, json={"name": "wider", "scopes": ["keys", "rules:write"]})
        assert "rules:write" in assert_problem(refused, 403)["detail"]
        assert len(listed(keyed)) == 2


def test_only_admins_give_the_admin_scope(api: ApiServer) -> None:
    somebody = user()
    with api.as_user(somebody) as client:
        theirs = create(client, "keys")
        refused = client.post(KEYS, json={"name": "root", "scopes": ["admin"]})
        assert "admins only" in assert_problem(refused, 403)["detail"]
        assert len(listed(client)) == 1
    with api.as_user(user(), ["admin"]) as admin:
        root = create(admin, "admin", "keys")
    with api.client(root["key"]) as keyed:
        # an admin key acts for anyone: lists and revokes another user's keys
        assert [item["id"] for item in listed(keyed, user_id=somebody)] == [theirs["id"]]
        assert keyed.delete(f"{KEYS}/{theirs['id']}").status_code == 204
    with api.client(theirs["key"]) as revoked:
        assert_problem(revoked.get(KEYS), 401)


def test_invalid_requests_are_422(api: ApiServer) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with api.as_user(user()) as client:
        for body, pointer in [
            ({"name": "x", "scopes": ["rules:read", "everything"]}, "scopes.1"),
            ({"name": "x", "scopes": []}, "scopes"),
            ({"name": "", "scopes": ["keys"]}, "name"),
            ({"scopes": ["keys"]}, "name"),
            ({"name": "x", "scopes": ["keys"], "expires_at": past}, "expires_at"),
            ({"name": "x", "scopes": ["keys"], "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
            ({"name": "x", "scopes": ["keys"], "key": "sa_mine_x"}, "key"),
        ]:
            problem = assert_problem(client.post(KEYS, json=body), 422)
            assert problem["detail"].startswith(pointer), problem
        assert listed(client) == []
        assert_problem(client.delete(f"{KEYS}/not-a-uuid"), 422)
        assert_problem(client.get(KEYS, params={"cursor": "garbage"}), 422)
        assert_problem(client.get(KEYS, params={"limit": 0}), 422)


def test_credentials_and_the_keys_scope_are_needed(api: ApiServer) -> None:
    owner = user()
    with api.as_user(owner) as client:
        made = create(client, "keys")
    routes = [
        ("POST", KEYS, {"name": "x", "scopes": ["keys"]}),
        ("GET", KEYS, None),
        ("DELETE", f"{KEYS}/{made['id']}", None),
    ]
    with (
        api.client() as anonymous,
        api.client("sa_deadbeef_not-a-real-key") as unknown,
        api.as_user(owner, ["analyst"]) as analyst,
    ):
        for method, path, body in routes:
            assert_problem(anonymous.request(method, path, json=body), 401)
            assert_problem(unknown.request(method, path, json=body), 401)
            problem = assert_problem(analyst.request(method, path, json=body), 403)
            assert "'keys' scope" in problem["detail"]
    with api.as_user(user()) as stranger:
        assert_problem(stranger.get(KEYS, params={"user_id": owner}), 403)
    assert stored(api, made["id"])["revoked_at"] is None


def test_another_users_key_is_not_found(api: ApiServer) -> None:
    with api.as_user(user()) as alice:
        theirs = create(alice, "keys", name="alice-secret-integration")
    with api.as_user(user()) as bob:
        response = bob.delete(f"{KEYS}/{theirs['id']}")
        assert_problem(response, 404)
        assert "alice-secret-integration" not in response.text
        assert theirs["prefix"] not in response.text
        assert listed(bob) == []
    with api.client(theirs["key"]) as keyed:
        assert len(listed(keyed)) == 1  # still works


def test_a_revoked_key_gets_401(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        made = create(client, "keys")
        with api.client(made["key"]) as keyed:
            assert len(listed(keyed)) == 1
            assert client.delete(f"{KEYS}/{made['id']}").status_code == 204
            problem = assert_problem(keyed.get(KEYS), 401)
            assert "revoked" in problem["detail"]
        (item,) = listed(client)
        assert item["revoked_at"] is not None
        # revoking again changes nothing
        assert client.delete(f"{KEYS}/{made['id']}").status_code == 204
        assert listed(client)[0]["revoked_at"] == item["revoked_at"]
        assert_problem(client.delete(f"{KEYS}/{uuid.uuid4()}"), 404)


def test_an_expired_key_gets_401(api: ApiServer) -> None:
    expiry = datetime.now(UTC) + timedelta(hours=1)
    with api.as_user(user()) as client:
        made = create(client, "keys", expires_at=expiry.isoformat())
    assert datetime.fromisoformat(made["expires_at"]) == expiry
    with api.client(made["key"]) as keyed:
        assert len(listed(keyed)) == 1
        # the hour passes (moved into the past rather than waited for)
        assert api.settings.database_url is not None
        with psycopg.connect(api.settings.database_url) as conn:
            conn.execute(
                "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s",
                (made["id"],),
            )
        problem = assert_problem(keyed.get(KEYS), 401)
        assert "expired" in problem["detail"]


def test_keys_are_listed_newest_first_a_page_at_a_time(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        made = [create(client, "keys", name=f"k{n}")["id"] for n in range(3)]
        first = client.get(KEYS, params={"limit": 2}).json()
        second = client.get(KEYS, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert second["next_cursor"] is None
    assert [item["id"] for item in first["items"] + second["items"]] == made[::-1]
