"""The profile resource: read (ETag), merge-patch with If-Match, push tokens, analysts' masked
view; every change on users.profiles equals the stored profile, and racing changes lose none."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from api.auth import hash_api_key, new_api_key
from api.problems import Problem
from api.profile_store import change_profile, read_profile
from api.services import Services
from pipeline.cli import commands
from pipeline.messages import Destinations, Profile, QuietHours
from sinks.postgres import HistoryWriter
from tests.api.conftest import ApiServer

MERGE = {"Content-Type": "application/merge-patch+json"}


def _user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def published(api: ApiServer, user_id: str) -> list[dict[str, Any]]:
    """The user's messages on users.profiles, in order (one user's are in one partition)."""
    records = commands.read_topic(api.settings.require_servers()[0], api.settings.topics.profiles)
    values = [json.loads(record.value) for record in records if record.value]
    return [value for value in values if value["user_id"] == user_id]


def patch(client: httpx.Client, body: Any, etag: str | None, **params: str) -> httpx.Response:
    headers = dict(MERGE)
    if etag is not None:
        headers["If-Match"] = etag
    return client.patch("/v1/profile", content=json.dumps(body), headers=headers, params=params)


def test_a_new_user_reads_the_default_profile_at_revision_0(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        response = client.get("/v1/profile")
    assert response.status_code == 200
    assert response.headers["etag"] == '"0"'
    assert Profile.model_validate(response.json()) == Profile(user_id=user)


def test_a_user_starts_from_the_profile_the_job_stored(api: ApiServer) -> None:
    user = _user()
    stored = Profile(
        user_id=user,
        timezone="America/New_York",
        channels={"LOW": ["in_app"], "MEDIUM": ["in_app"], "HIGH": ["push"], "CRITICAL": ["sms"]},
        quiet_hours=QuietHours(start="22:00", end="07:00"),
        digest_seconds=300,
        max_per_hour=4,
        min_relevance=0.25,
        destinations=Destinations(phone="+15551234567", push_tokens=["tok-a"]),
    )
    with HistoryWriter(api.settings.database_url or "") as writer:
        writer.write_profiles([stored])
    with api.as_user(user) as client:
        first = client.get("/v1/profile")
        assert Profile.model_validate(first.json()) == stored
        changed = patch(client, {"max_per_hour": 10}, first.headers["etag"])
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"1"'
    assert Profile.model_validate(changed.json()) == stored.model_copy(update={"max_per_hour": 10})


def test_merge_patch_sets_merges_and_removes_and_publishes_the_answer(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        first = patch(
            client,
            {"timezone": "Europe/London", "quiet_hours": {"start": "23:00", "end": "06:30"}},
            '"0"',
        )
        assert first.status_code == 200, first.text
        second = patch(
            client,
            {"channels": {"CRITICAL": ["push", "voice"]}, "quiet_hours": None},
            first.headers["etag"],
        )
        assert second.status_code == 200, second.text
        assert second.headers["etag"] == '"2"'
        body = second.json()
        assert body["timezone"] == "Europe/London"
        assert "quiet_hours" not in body
        assert body["channels"]["CRITICAL"] == ["push", "voice"]
        assert body["channels"]["LOW"] == ["in_app"]  # merged, not replaced
        assert client.get("/v1/profile").json() == body
    assert published(api, user) == [first.json(), body]


def test_patch_needs_if_match_and_refuses_a_stale_revision(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        missing = patch(client, {"max_per_hour": 3}, None)
        assert missing.status_code == 428
        assert missing.headers["content-type"] == "application/problem+json"
        assert patch(client, {"max_per_hour": 3}, '"0"').status_code == 200
        stale = patch(client, {"max_per_hour": 5}, '"0"')
        assert stale.status_code == 412
        assert stale.json()["current_version"] == 1
        assert client.get("/v1/profile").json()["max_per_hour"] == 3
        assert patch(client, {"max_per_hour": 5}, "*").status_code == 200
    assert [m.get("max_per_hour") for m in published(api, user)] == [3, 5]


def test_patch_refuses_an_invalid_profile_naming_the_field(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        voice = patch(client, {"channels": {"LOW": ["voice"]}}, '"0"')
        zone = patch(client, {"timezone": "Mars/Base"}, '"0"')
        other = patch(client, {"user_id": "someone-else"}, '"0"')
        unknown = patch(client, {"colour": "blue"}, '"0"')
        not_object = patch(client, ["max_per_hour"], '"0"')
        wrong_type = client.patch(
            "/v1/profile", json={"max_per_hour": 3}, headers={"If-Match": '"0"'}
        )
        after = client.get("/v1/profile")
    for response, field in [(voice, "channels"), (zone, "timezone"), (other, "user_id")]:
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith(field), response.json()
    assert unknown.status_code == 422 and "colour" in unknown.json()["detail"]
    assert not_object.status_code == 422
    assert wrong_type.status_code == 415
    assert after.headers["etag"] == '"0"'
    assert published(api, user) == []


def test_push_tokens_register_idempotently_unregister_and_cap_at_20(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        first = client.post("/v1/profile/push-tokens", json={"token": "dev:one/1"})
        again = client.post("/v1/profile/push-tokens", json={"token": "dev:one/1"})
        assert first.status_code == 200, first.text
        assert again.headers["etag"] == first.headers["etag"] == '"1"'
        for index in range(19):
            client.post("/v1/profile/push-tokens", json={"token": f"tok-{index}"})
        full = client.post("/v1/profile/push-tokens", json={"token": "one-too-many"})
        assert full.status_code == 409
        assert "20" in full.json()["detail"]
        removed = client.delete("/v1/profile/push-tokens/dev:one/1")
        assert removed.status_code == 200, removed.text
        assert removed.json()["destinations"]["push_tokens"] == [f"tok-{i}" for i in range(19)]
        assert client.delete("/v1/profile/push-tokens/dev:one/1").status_code == 404
        invalid = client.post("/v1/profile/push-tokens", json={"token": ""})
        assert invalid.status_code == 422
    assert published(api, user)[-1] == removed.json()


def test_racing_token_registrations_lose_none(api: ApiServer) -> None:
    user = _user()
    tokens = [f"race-{index}" for index in range(16)]

    def register(token: str) -> int:
        with api.as_user(user) as client:
            return client.post("/v1/profile/push-tokens", json={"token": token}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(register, tokens))
    assert statuses == [200] * len(tokens)
    with api.as_user(user) as client:
        final = client.get("/v1/profile")
    assert sorted(final.json()["destinations"]["push_tokens"]) == sorted(tokens)
    assert final.headers["etag"] == f'"{len(tokens)}"'
    messages = published(api, user)
    assert len(messages) == len(tokens)
    assert messages[-1] == final.json()


def test_analysts_read_any_profile_masked_and_never_write(api: ApiServer) -> None:
    user = _user()
    with api.as_user(user) as client:
        body = {
            "destinations": {
                "email": "alice@example.com",
                "phone": "+15551234567",
                "push_tokens": ["abcdefgh1234"],
                "webhook": {"url": "https://hooks.example.com/alice", "secret_ref": "wh-1"},
            }
        }
        assert patch(client, body, '"0"').status_code == 200
    with api.as_user("ann", ["analyst"]) as analyst:
        seen = analyst.get("/v1/profile", params={"user_id": user})
        refused = patch(analyst, {"max_per_hour": 1}, "*", user_id=user)
        token = analyst.post(
            "/v1/profile/push-tokens", json={"token": "x"}, params={"user_id": user}
        )
    assert seen.status_code == 200
    assert seen.json()["destinations"] == {
        "email": "a***@example.com",
        "phone": "+1******4567",
        "push_tokens": ["***1234"],
        "webhook": {"url": "https://hooks.example.com/…", "secret_ref": "wh-1"},
    }
    assert "alice" not in seen.text and "abcdefgh" not in seen.text
    assert refused.status_code == 403 and token.status_code == 403


@pytest.mark.parametrize("user_id", ["", "a\x00b", "x" * 129])
def test_an_analyst_naming_an_impossible_user_gets_a_422(api: ApiServer, user_id: str) -> None:
    with api.as_user("ann", ["analyst"]) as analyst:
        response = analyst.get("/v1/profile", params={"user_id": user_id})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query.user_id: ")


def test_another_users_profile_is_forbidden_to_a_user(api: ApiServer) -> None:
    owner, other = _user(), _user()
    with api.as_user(owner) as client:
        patch(client, {"destinations": {"email": "owner@example.com"}}, '"0"')
    with api.as_user(other) as client:
        read = client.get("/v1/profile", params={"user_id": owner})
        write = patch(client, {"max_per_hour": 1}, "*", user_id=owner)
        token = client.post(
            "/v1/profile/push-tokens", json={"token": "x"}, params={"user_id": owner}
        )
    for response in (read, write, token):
        assert response.status_code == 403
        assert "owner@example.com" not in response.text


def api_key(api: ApiServer, user_id: str, scopes: list[str]) -> str:
    """A key of ``user_id`` holding only ``scopes``, stored as the API stores keys."""
    key, prefix = new_api_key()
    with psycopg.connect(api.settings.database_url or "", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_keys (user_external_id, name, prefix, key_hash, scopes) "
            "VALUES (%s, 'test', %s, %s, %s)",
            (user_id, prefix, hash_api_key(key), scopes),
        )
    return key


def test_profile_routes_need_credentials_and_scopes(api: ApiServer) -> None:
    with api.client() as anonymous:
        assert anonymous.get("/v1/profile").status_code == 401
        assert patch(anonymous, {}, "*").status_code == 401
        assert anonymous.post("/v1/profile/push-tokens", json={"token": "x"}).status_code == 401
        assert anonymous.delete("/v1/profile/push-tokens/x").status_code == 401
    user = _user()
    with api.client(api_key(api, user, ["profile:read"])) as reader:
        assert reader.get("/v1/profile").status_code == 200
        assert patch(reader, {"max_per_hour": 1}, "*").status_code == 403
        assert reader.post("/v1/profile/push-tokens", json={"token": "x"}).status_code == 403
        assert reader.delete("/v1/profile/push-tokens/x").status_code == 403
    with api.client(api_key(api, user, ["alerts:read"])) as other_scope:
        assert other_scope.get("/v1/profile").status_code == 403


def test_change_profile_checks_the_revision_and_rolls_back_a_failed_change(
    api: ApiServer,
) -> None:
    user = _user()
    services = Services.open(api.settings)
    try:
        assert read_profile(services, user) == (Profile(user_id=user), 0)

        def fail(profile: Profile) -> Profile:
            raise Problem(409, "refused")

        with pytest.raises(Problem):
            change_profile(services, user, fail, actor="test")
        assert read_profile(services, user) == (Profile(user_id=user), 0)

        def invalid(profile: Profile) -> Profile:
            return profile.model_copy(update={"max_per_hour": 0})

        with pytest.raises(Problem) as refused:
            change_profile(services, user, invalid, actor="test")
        assert refused.value.status == 422 and refused.value.detail.startswith("max_per_hour")

        def set_budget(profile: Profile) -> Profile:
            return profile.model_copy(update={"max_per_hour": 7})

        changed, revision = change_profile(services, user, set_budget, actor="test")
        assert (changed.max_per_hour, revision) == (7, 1)
        with pytest.raises(Problem) as stale:
            change_profile(services, user, set_budget, expected_revision=0, actor="test")
        assert stale.value.status == 412
        assert change_profile(services, user, set_budget, expected_revision=1, actor="t") == (
            changed,
            1,
        )
        assert read_profile(services, user) == (changed, 1)
        assert published(api, user) == [json.loads(changed.to_json())]
    finally:
        services.close()
