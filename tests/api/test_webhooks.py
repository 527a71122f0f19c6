"""Webhook endpoints: made, listed, deleted, their secrets rotated and pinged, over the real API;
and the job delivering to an endpoint made here, signed with its secret."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet, MultiFernet

from connectors.embedded import StackUrls
from pipeline.config import Delivery as DeliveryConfig
from pipeline.messages import (
    Channel,
    Destinations,
    Notification,
    Priority,
    Profile,
    WebhookDestination,
)
from sinks.channels.base import Delivery, PermanentError
from sinks.channels.configure import build_senders
from sinks.channels.webhook import (
    SECRET_KEY_ENV,
    EndpointSecrets,
    WebhookSender,
    secret_box,
)
from sinks.notify import destinations_for
from tests.api.conftest import ApiServer, api_settings, running_api
from tests.fakes.identity import IdentityProvider
from tests.fakes.webhook_receiver import Reply, WebhookReceiver

GRACE_SECONDS = 3600
ENDPOINT = "/v1/webhooks"


@pytest.fixture(scope="module")
def secret_key() -> Iterator[str]:
    """SMART_ALERTS_SECRET_KEY for this module (the server runs in this process)."""
    key = Fernet.generate_key().decode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_KEY_ENV, key)
        yield key


@pytest.fixture(scope="module")
def api(
    stack: StackUrls, database_url: str, identity: IdentityProvider, secret_key: str
) -> Iterator[ApiServer]:
    """The module's API, allowed to ping receivers on 127.0.0.1 only."""
    settings = api_settings(
        stack, database_url, identity, webhook_secret_grace_seconds=GRACE_SECONDS
    )
    delivery = settings.delivery.model_copy(
        update={"webhook_allow_private_networks": ["127.0.0.1/32"]}
    )
    with running_api(settings.model_copy(update={"delivery": delivery}), identity) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver([]) as server:
        yield server


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def create(client: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post(ENDPOINT, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def webhooks_of_profile(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/v1/profile")
    assert response.status_code == 200, response.text
    return response.json().get("destinations", {}).get("webhooks", [])  # type: ignore[no-any-return]


def api_key(client: httpx.Client, *scopes: str) -> str:
    response = client.post("/v1/api-keys", json={"name": "integration", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return response.json()["key"]  # type: ignore[no-any-return]


def stored(api: ApiServer, endpoint_id: str) -> dict[str, Any]:
    assert api.settings.database_url is not None
    with psycopg.connect(api.settings.database_url, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
        return row.fetchone() or {}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


# ---------------------------------------------------------------- create, read, delete


def test_create_shows_the_secret_once_and_adds_the_endpoint_to_the_profile(
    api: ApiServer, secret_key: str
) -> None:
    with api.as_user(user()) as client:
        made = create(client, "https://hooks.example.com/a", description="trading desk")
        assert made["secret"].startswith("whsec_")
        assert made["url"] == "https://hooks.example.com/a"
        assert made["description"] == "trading desk"
        assert made["secret_ref"] == f"endpoint:{made['id']}"
        assert made["rotated_at"] is None and made["previous_secret_expires_at"] is None

        listed = client.get(ENDPOINT).json()
        one = client.get(f"{ENDPOINT}/{made['id']}").json()
        assert [item["id"] for item in listed["items"]] == [made["id"]]
        expected = {k: v for k, v in made.items() if k != "secret"}
        assert listed["items"][0] == expected == one
        assert made["secret"] not in json.dumps(listed) + json.dumps(one)

        assert webhooks_of_profile(client) == [
            {"url": "https://hooks.example.com/a", "secret_ref": made["secret_ref"]}
        ]
    row = stored(api, made["id"])
    assert made["secret"] not in json.dumps(row, default=str)  # encrypted at rest
    decrypted = Fernet(secret_key.encode()).decrypt(row["secret_encrypted"].encode())
    assert decrypted.decode() == made["secret"]


def test_create_refuses_invalid_input(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        for body, pointer in [
            ({"url": "ftp://hooks.example.com/a"}, "url"),
            ({"url": "hooks.example.com"}, "url"),
            ({"url": "https://" + "a" * 2048}, "url"),
            ({}, "url"),
            ({"url": "https://hooks.example.com/a", "description": "x" * 501}, "description"),
            ({"url": "https://hooks.example.com/a", "secret": "whsec_mine"}, "secret"),
        ]:
            problem = assert_problem(client.post(ENDPOINT, json=body), 422)
            assert problem["detail"].startswith(pointer), problem
        assert client.get(ENDPOINT).json()["items"] == []
        assert_problem(client.get(f"{ENDPOINT}/not-a-uuid"), 422)
        assert_problem(client.get(ENDPOINT, params={"cursor": "garbage"}), 422)


def test_a_url_twice_is_a_conflict(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        create(client, "https://hooks.example.com/same")
        problem = assert_problem(
            client.post(ENDPOINT, json={"url": "https://hooks.example.com/same"}), 409
        )
        assert "already" in problem["detail"]
        assert len(client.get(ENDPOINT).json()["items"]) == 1
        assert len(webhooks_of_profile(client)) == 1


def test_the_profile_holds_at_most_ten_webhooks(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        for n in range(10):
            create(client, f"https://hooks.example.com/{n}")
        problem = assert_problem(
            client.post(ENDPOINT, json={"url": "https://hooks.example.com/x"}), 409
        )
        assert "10 webhooks" in problem["detail"]
        # the refused endpoint was not left behind
        first = client.get(ENDPOINT, params={"limit": 6}).json()
        second = client.get(ENDPOINT, params={"limit": 6, "cursor": first["next_cursor"]}).json()
        assert second["next_cursor"] is None
        urls = [item["url"] for item in first["items"] + second["items"]]
        assert urls == [f"https://hooks.example.com/{n}" for n in range(10)]
        assert len(webhooks_of_profile(client)) == 10


def test_delete_takes_the_endpoint_out_of_the_profile(api: ApiServer) -> None:
    with api.as_user(user()) as client:
        kept = create(client, "https://hooks.example.com/kept")
        gone = create(client, "https://hooks.example.com/gone")
        assert client.delete(f"{ENDPOINT}/{gone['id']}").status_code == 204
        assert [item["id"] for item in client.get(ENDPOINT).json()["items"]] == [kept["id"]]
        assert webhooks_of_profile(client) == [
            {"url": kept["url"], "secret_ref": kept["secret_ref"]}
        ]
        assert_problem(client.delete(f"{ENDPOINT}/{gone['id']}"), 404)
        assert_problem(client.get(f"{ENDPOINT}/{gone['id']}"), 404)
        assert_problem(client.delete(f"{ENDPOINT}/not-a-uuid"), 422)
    assert stored(api, gone["id"]) == {}


# ---------------------------------------------------------------- who may


def test_every_route_needs_credentials_and_the_webhooks_scope(api: ApiServer) -> None:
    owner = user()
    with api.as_user(owner) as client:
        made = create(client, "https://hooks.example.com/scoped")
        rules_reader = api_key(client, "rules:read")
        webhook_key = api_key(client, "webhooks")
    one = f"{ENDPOINT}/{made['id']}"
    routes = [
        ("POST", ENDPOINT, {"url": "https://hooks.example.com/other"}),
        ("GET", ENDPOINT, None),
        ("GET", one, None),
        ("DELETE", one, None),
        ("POST", f"{one}/rotate", None),
        ("POST", f"{one}/test", None),
    ]
    with (
        api.client() as anonymous,
        api.client("not-a-token") as garbage,
        api.as_user(owner, ["analyst"]) as analyst,
        api.client(rules_reader) as reader,
    ):
        for method, path, body in routes:
            assert_problem(anonymous.request(method, path, json=body), 401)
            assert_problem(garbage.request(method, path, json=body), 401)
            for client in (analyst, reader):
                problem = assert_problem(client.request(method, path, json=body), 403)
                assert "'webhooks' scope" in problem["detail"]
    # a key with the scope acts as its maker
    with api.client(webhook_key) as keyed:
        assert [item["id"] for item in keyed.get(ENDPOINT).json()["items"]] == [made["id"]]
        other = create(keyed, "https://hooks.example.com/by-key")
        assert keyed.delete(f"{ENDPOINT}/{other['id']}").status_code == 204
    with api.as_user(owner) as client:
        assert [item["id"] for item in client.get(ENDPOINT).json()["items"]] == [made["id"]]


def test_another_users_endpoint_is_not_found(api: ApiServer, receiver: WebhookReceiver) -> None:
    with api.as_user(user()) as alice:
        made = create(alice, receiver.url + "/alice-private-hook")
    one = f"{ENDPOINT}/{made['id']}"
    with api.as_user(user()) as bob, api.as_user(user(), ["admin"]) as admin:
        for client in (bob, admin):
            for method, path in [
                ("GET", one),
                ("DELETE", one),
                ("POST", f"{one}/rotate"),
                ("POST", f"{one}/test"),
            ]:
                response = client.request(method, path)
                assert_problem(response, 404)
                assert "alice-private-hook" not in response.text
            assert client.get(ENDPOINT).json()["items"] == []
    assert receiver.received == []
    assert stored(api, made["id"])["secret_encrypted"]


def test_without_the_secret_key_the_routes_say_to_set_it(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with api.as_user(user()) as client:
        made = create(client, "https://hooks.example.com/keyless")
        one = f"{ENDPOINT}/{made['id']}"
        monkeypatch.delenv(SECRET_KEY_ENV)
        for method, path, body in [
            ("POST", ENDPOINT, {"url": "https://hooks.example.com/other"}),
            ("GET", ENDPOINT, None),
            ("GET", one, None),
            ("DELETE", one, None),
            ("POST", f"{one}/rotate", None),
            ("POST", f"{one}/test", None),
        ]:
            problem = assert_problem(client.request(method, path, json=body), 503)
            assert f"{SECRET_KEY_ENV} is not set" in problem["detail"]
        with api.client() as anonymous:
            assert_problem(anonymous.get(ENDPOINT), 401)  # credentials are checked first
        monkeypatch.setenv(SECRET_KEY_ENV, "not-a-fernet-key")
        problem = assert_problem(client.get(ENDPOINT), 503)
        assert "not a Fernet key" in problem["detail"]
        assert "not-a-fernet-key" not in problem["detail"]
        # another key: the stored secret cannot be read, and the answer says so
        monkeypatch.setenv(SECRET_KEY_ENV, Fernet.generate_key().decode())
        problem = assert_problem(client.post(f"{one}/test"), 503)
        assert "does not decrypt" in problem["detail"]
        assert made["secret"] not in problem["detail"]
    # nothing changed meanwhile
    assert stored(api, made["id"])["rotated_at"] is None


# ---------------------------------------------------------------- ping and rotation


def test_ping_is_signed_and_reports_the_receivers_status(
    api: ApiServer, receiver: WebhookReceiver
) -> None:
    with api.as_user(user()) as client:
        made = create(client, receiver.url + "/hook")
        receiver.secrets = [made["secret"]]
        result = client.post(f"{ENDPOINT}/{made['id']}/test").json()
        assert result["delivered"] is True and result["status"] == 200
        assert result["error"] is None
        (got,) = receiver.received
        assert got.path == "/hook" and got.verified_by == (0,)
        assert got.headers["webhook-id"] == result["message_id"]
        event = json.loads(got.body)
        assert event["type"] == "ping" and event["endpoint_id"] == made["id"]

        receiver.reply_with(Reply(status=503, body=b"down for maintenance"))
        result = client.post(f"{ENDPOINT}/{made['id']}/test").json()
        assert result == {
            "delivered": False,
            "status": 503,
            "message_id": result["message_id"],
            "error": "the receiver answered HTTP 503",
        }
        assert receiver.received[-1].verified_by == (0,)


def test_ping_refuses_private_addresses_not_allowed(api: ApiServer) -> None:
    # 127.0.0.2 is loopback but outside the allowed 127.0.0.1/32
    with api.as_user(user()) as client:
        made = create(client, "http://127.0.0.2:9/hook")
        result = client.post(f"{ENDPOINT}/{made['id']}/test").json()
    assert result["delivered"] is False and result["status"] is None
    assert "non-public address 127.0.0.2" in result["error"]


def test_rotation_signs_with_both_secrets_during_the_grace_only(
    api: ApiServer, receiver: WebhookReceiver
) -> None:
    with api.as_user(user()) as client:
        made = create(client, receiver.url + "/hook")
        old = made["secret"]
        rotated = client.post(f"{ENDPOINT}/{made['id']}/rotate").json()
        new = rotated["secret"]
        assert new.startswith("whsec_") and new != old
        rotated_at = datetime.fromisoformat(rotated["rotated_at"])
        until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert until - rotated_at == timedelta(seconds=GRACE_SECONDS)
        later = client.get(f"{ENDPOINT}/{made['id']}").json()
        assert "secret" not in later and new not in json.dumps(later)

        receiver.secrets = [old, new]
        assert client.post(f"{ENDPOINT}/{made['id']}/test").json()["delivered"]
        during = receiver.received[-1]
        assert during.verified_by == (0, 1)  # the old secret verifies, and the new one
        assert receiver.each_signature_verifies(during)

        # the grace period ends (moved into the past rather than waited for)
        assert api.settings.database_url is not None
        with psycopg.connect(api.settings.database_url) as conn:
            conn.execute(
                "UPDATE webhook_endpoints SET previous_expires_at = now() - interval '1 second' "
                "WHERE id = %s",
                (made["id"],),
            )
        assert client.post(f"{ENDPOINT}/{made['id']}/test").json()["delivered"]
        after = receiver.received[-1]
        assert after.verified_by == (1,)  # only the new one
        assert len(after.headers["webhook-signature"].split()) == 1

        # a second rotation: the first secret is gone for good, the second signs in grace
        third = client.post(f"{ENDPOINT}/{made['id']}/rotate").json()["secret"]
        receiver.secrets = [old, new, third]
        client.post(f"{ENDPOINT}/{made['id']}/test")
        assert receiver.received[-1].verified_by == (1, 2)
        assert webhooks_of_profile(client) == [
            {"url": made["url"], "secret_ref": made["secret_ref"]}
        ]


# ---------------------------------------------------------------- the job's side


def notification(user_id: str) -> Notification:
    return Notification(
        notification_id=f"n-{uuid.uuid4().hex[:8]}",
        user_id=user_id,
        alert_ids=["a-1"],
        title="SPY above 500",
        message="SPY crossed 500.00",
        highest_priority=Priority.HIGH,
        channels=[Channel.WEBHOOK],
        window_start=datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        window_end=datetime(2024, 5, 1, 14, 31, tzinfo=UTC),
    )


def test_the_job_signs_a_notification_with_the_endpoints_secret(
    api: ApiServer, receiver: WebhookReceiver
) -> None:
    owner = user()
    with api.as_user(owner) as client:
        made = create(client, receiver.url + "/job")
        # the document the API published on users.profiles
        profile = Profile.model_validate(client.get("/v1/profile").json())
    receiver.secrets = [made["secret"]]
    assert api.settings.database_url is not None
    targets = destinations_for(Channel.WEBHOOK, profile.destinations)
    assert targets == [(made["url"], made["secret_ref"])]
    config = DeliveryConfig(webhook_allow_private_networks=["127.0.0.1/32"])
    sender = build_senders(config, database_url=api.settings.database_url)[Channel.WEBHOOK]
    assert isinstance(sender, WebhookSender)
    try:
        for url, ref in targets:
            note = notification(owner)
            sender.send(Delivery(note, Channel.WEBHOOK, url, 1, "dl-job-1", ref))
    finally:
        sender.close()
    (got,) = receiver.received
    assert got.path == "/job" and got.verified_by == (0,)
    assert json.loads(got.body)["user_id"] == owner


def test_an_endpoint_secret_signs_only_for_its_owner_and_its_url(
    api: ApiServer, receiver: WebhookReceiver, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = user()
    with api.as_user(alice) as client:
        made = create(client, receiver.url + "/alice")
    ref = made["secret_ref"]
    assert api.settings.database_url is not None
    database = api.settings.database_url
    config = DeliveryConfig(webhook_allow_private_networks=["127.0.0.1/32"])
    sender = build_senders(config, database_url=database)[Channel.WEBHOOK]
    try:
        # a profile of mallory's naming alice's endpoint, with its URL or another
        for owner, url in [(user(), made["url"]), (alice, receiver.url + "/elsewhere")]:
            with pytest.raises(PermanentError, match="no such endpoint of user"):
                sender.send(Delivery(notification(owner), Channel.WEBHOOK, url, 1, "dl-x", ref))
        for unknown in (f"endpoint:{uuid.uuid4()}", "endpoint:not-a-uuid"):
            with pytest.raises(PermanentError, match="no such endpoint"):
                sender.send(
                    Delivery(notification(alice), Channel.WEBHOOK, made["url"], 1, "dl-y", unknown)
                )
        assert receiver.received == []
        # other refs are environment variables, as before
        monkeypatch.setenv("LEGACY_HOOK_SECRET", made["secret"])
        receiver.secrets = [made["secret"]]
        sender.send(
            Delivery(
                notification(alice), Channel.WEBHOOK, made["url"], 1, "dl-z", "LEGACY_HOOK_SECRET"
            )
        )
        assert receiver.received[-1].verified_by == (0,)
    finally:
        sender.close()
    lookup = EndpointSecrets(database, box(secret_key))
    assert lookup(ref, alice, made["url"]) == made["secret"]
    with pytest.raises(PermanentError, match=f"{SECRET_KEY_ENV} is not set"):
        EndpointSecrets(database, None)(ref, alice, made["url"])
    with pytest.raises(PermanentError, match="does not decrypt") as refused:
        EndpointSecrets(database, box(Fernet.generate_key().decode()))(ref, alice, made["url"])
    assert made["secret"] not in str(refused.value)


def box(key: str) -> MultiFernet | None:
    return secret_box({SECRET_KEY_ENV: key})


def test_destinations_for_sends_to_the_webhook_and_each_webhooks_entry_once() -> None:
    destinations = Destinations(
        webhook=WebhookDestination(url="https://a.example.com/", secret_ref="A_SECRET"),
        webhooks=[
            WebhookDestination(url="https://b.example.com/", secret_ref="endpoint:1"),
            WebhookDestination(url="https://a.example.com/", secret_ref="endpoint:2"),
        ],
    )
    assert destinations_for(Channel.WEBHOOK, destinations) == [
        ("https://a.example.com/", "A_SECRET"),
        ("https://b.example.com/", "endpoint:1"),
    ]
    assert destinations_for(Channel.WEBHOOK, Destinations()) == []
