"""The authorization matrix: every route of the app, read from the app itself, called as
(a) nobody: 401, (b) credentials without the needed scope (an API key with no scopes; an
analyst for writes): 403, (c) user B on user A's resources: 403 or 404 for A's resources, and
nothing of A's in any answer B gets.

A route the table ROUTES does not know fails the test: a new route must say how it is called
and what it needs before it is covered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from connectors.embedded import StackUrls
from pipeline.messages import Channel, Notification, Priority
from sinks.channels.webhook import SECRET_KEY_ENV
from sinks.postgres import HistoryWriter
from sinks.redis_store import InAppFeed
from tests.api.conftest import ApiServer, api_settings, running_api
from tests.api.test_alerts import make_alert, make_rule
from tests.api.test_profile import api_key
from tests.fakes.identity import IdentityProvider

PUBLIC = "public"  # no credentials needed
ANYONE = "anyone"  # any valid credentials, no scope

Ids = dict[str, str]


@dataclass(frozen=True)
class Spec:
    """How to call a route: the scope it needs, its path parameters and body (made from A's
    resource ids), and whether those name a resource of A's (then B must get 403/404)."""

    scope: str
    params: Callable[[Ids], dict[str, str]] = field(default=lambda ids: {})
    body: Callable[[Ids], Any] | None = None
    owned: bool = False
    streams: bool = False  # answers with an endless stream when allowed

    def write(self, method: str) -> bool:
        return method not in ("GET", "HEAD", "WS")


def rule_body(ids: Ids) -> dict[str, Any]:
    return {
        "name": "b's rule",
        "symbol": "AAPL",
        "conditions": {"type": "price_above", "threshold": 200},
    }


RULE = {"rule_id": lambda ids: ids["rule"]}
ROUTES: dict[tuple[str, str], Spec] = {
    ("GET", "/openapi.json"): Spec(PUBLIC),
    ("GET", "/docs"): Spec(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Spec(PUBLIC),
    ("GET", "/healthz"): Spec(PUBLIC),
    ("GET", "/readyz"): Spec(PUBLIC),
    ("GET", "/inbox"): Spec(PUBLIC),
    ("GET", "/inbox/{asset}"): Spec(PUBLIC, lambda ids: {"asset": "inbox.js"}),
    ("GET", "/v1/me"): Spec(ANYONE),
    # rules
    ("POST", "/v1/rules"): Spec("rules:write", body=rule_body),
    ("POST", "/v1/rules/from-text"): Spec(
        "rules:write", body=lambda ids: {"text": "AAPL price > 250"}
    ),
    ("POST", "/v1/rules/from-template"): Spec(
        "rules:write",
        body=lambda ids: {"template": ids["template"], "symbol": "MSFT", "params": {}},
        owned=True,
    ),
    ("GET", "/v1/rules"): Spec("rules:read"),
    ("GET", "/v1/rules/{rule_id}"): Spec(
        "rules:read", lambda ids: {"rule_id": ids["rule"]}, owned=True
    ),
    ("GET", "/v1/rules/{rule_id}/versions"): Spec(
        "rules:read", lambda ids: {"rule_id": ids["rule"]}, owned=True
    ),
    ("PUT", "/v1/rules/{rule_id}"): Spec(
        "rules:write", lambda ids: {"rule_id": ids["rule"]}, rule_body, owned=True
    ),
    ("POST", "/v1/rules/{rule_id}/enable"): Spec(
        "rules:write", lambda ids: {"rule_id": ids["rule"]}, owned=True
    ),
    ("POST", "/v1/rules/{rule_id}/disable"): Spec(
        "rules:write", lambda ids: {"rule_id": ids["rule"]}, owned=True
    ),
    ("DELETE", "/v1/rules/{rule_id}"): Spec(
        "rules:write", lambda ids: {"rule_id": ids["rule"]}, owned=True
    ),
    # templates
    ("GET", "/v1/templates/shared"): Spec("rules:read"),
    ("POST", "/v1/templates/shared"): Spec(
        "rules:write", body=lambda ids: {"rule_id": ids["rule"], "name": "b's copy"}, owned=True
    ),
    ("GET", "/v1/templates/shared/{template_id}"): Spec(
        "rules:read", lambda ids: {"template_id": ids["template"]}, owned=True
    ),
    ("DELETE", "/v1/templates/shared/{template_id}"): Spec(
        "rules:write", lambda ids: {"template_id": ids["template"]}, owned=True
    ),
    ("GET", "/v1/templates"): Spec("rules:read"),
    ("GET", "/v1/templates/{name}"): Spec(
        "rules:read", lambda ids: {"name": "breakout_above_resistance"}
    ),
    # alert history
    ("GET", "/v1/alerts"): Spec("alerts:read"),
    ("GET", "/v1/alerts/{alert_id}"): Spec(
        "alerts:read", lambda ids: {"alert_id": ids["alert"]}, owned=True
    ),
    ("POST", "/v1/alerts/{alert_id}/acknowledge"): Spec(
        "alerts:write", lambda ids: {"alert_id": ids["alert"]}, owned=True
    ),
    ("GET", "/v1/notifications"): Spec("alerts:read"),
    ("POST", "/v1/feedback"): Spec(
        "alerts:write",
        body=lambda ids: {"action": "opened", "alert_id": ids["alert"]},
        owned=True,
    ),
    # inbox
    ("GET", "/v1/inbox"): Spec("inbox"),
    ("GET", "/v1/inbox/unread-count"): Spec("inbox"),
    ("POST", "/v1/inbox/mark"): Spec(
        "inbox", body=lambda ids: {"state": "read", "notification_ids": [ids["entry"]]}
    ),
    ("POST", "/v1/inbox/mark-all"): Spec("inbox", body=lambda ids: {"state": "read"}),
    ("POST", "/v1/inbox/{notification_id}/mark"): Spec(
        "inbox",
        lambda ids: {"notification_id": ids["entry"]},
        lambda ids: {"state": "read"},
        owned=True,
    ),
    ("WS", "/v1/inbox/ws"): Spec("inbox", streams=True),
    ("GET", "/v1/inbox/events"): Spec("inbox", streams=True),
    # profile
    ("GET", "/v1/profile"): Spec("profile:read"),
    ("PATCH", "/v1/profile"): Spec("profile:write", body=lambda ids: {}),
    ("POST", "/v1/profile/push-tokens"): Spec(
        "profile:write", body=lambda ids: {"token": f"b-token-{uuid.uuid4().hex[:6]}"}
    ),
    ("DELETE", "/v1/profile/push-tokens/{token}"): Spec(
        "profile:write", lambda ids: {"token": ids["push_token"]}
    ),
    # webhooks
    ("POST", "/v1/webhooks"): Spec(
        "webhooks", body=lambda ids: {"url": f"https://hooks.example.com/b-{uuid.uuid4().hex}"}
    ),
    ("GET", "/v1/webhooks"): Spec("webhooks"),
    ("GET", "/v1/webhooks/{endpoint_id}"): Spec(
        "webhooks", lambda ids: {"endpoint_id": ids["webhook"]}, owned=True
    ),
    ("DELETE", "/v1/webhooks/{endpoint_id}"): Spec(
        "webhooks", lambda ids: {"endpoint_id": ids["webhook"]}, owned=True
    ),
    ("POST", "/v1/webhooks/{endpoint_id}/rotate"): Spec(
        "webhooks", lambda ids: {"endpoint_id": ids["webhook"]}, owned=True
    ),
    ("POST", "/v1/webhooks/{endpoint_id}/test"): Spec(
        "webhooks", lambda ids: {"endpoint_id": ids["webhook"]}, owned=True
    ),
    # API keys
    ("POST", "/v1/api-keys"): Spec("keys", body=lambda ids: {"name": "b's", "scopes": ["inbox"]}),
    ("GET", "/v1/api-keys"): Spec("keys"),
    ("DELETE", "/v1/api-keys/{key_id}"): Spec(
        "keys", lambda ids: {"key_id": ids["api_key"]}, owned=True
    ),
}


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, HEAD aside; WebSockets as "WS"."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path.replace(":path}", "}")
        if isinstance(route, APIWebSocketRoute):
            found.append(("WS", path))
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append((method, path))
    return found


@dataclass
class World:
    api: ApiServer
    a: str
    b: str
    ids: Ids


@pytest.fixture(scope="module")
def world(stack: StackUrls, database_url: str, identity: IdentityProvider) -> Iterator[World]:
    """A server (its webhook secrets' key set) and user A's resources, each naming A."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_KEY_ENV, Fernet.generate_key().decode())
        with running_api(api_settings(stack, database_url, identity), identity) as api:
            suffix = uuid.uuid4().hex[:8]
            a, b = f"owner-{suffix}", f"other-{suffix}"
            yield World(api, a, b, resources_of(api, a))


def resources_of(api: ApiServer, a: str) -> Ids:
    ids: Ids = {}
    with api.as_user(a) as client:

        def made(response: httpx.Response) -> dict[str, Any]:
            assert response.status_code in (200, 201), response.text
            return response.json()  # type: ignore[no-any-return]

        rule = made(
            client.post(
                "/v1/rules",
                json={
                    "name": f"rule of {a}",
                    "symbol": "AAPL",
                    "conditions": {"type": "price_above", "threshold": 200},
                },
            )
        )
        ids["rule"] = rule["id"]
        ids["template"] = made(
            client.post(
                "/v1/templates/shared", json={"rule_id": rule["id"], "name": f"template of {a}"}
            )
        )["id"]
        ids["webhook"] = made(
            client.post("/v1/webhooks", json={"url": f"https://hooks.example.com/{a}"})
        )["id"]
        ids["api_key"] = made(
            client.post("/v1/api-keys", json={"name": f"key of {a}", "scopes": ["inbox"]})
        )["id"]
        ids["push_token"] = f"push-{uuid.uuid4().hex}"
        made(client.post("/v1/profile/push-tokens", json={"token": ids["push_token"]}))
    alert = make_alert(make_rule(a, f"history rule of {a}"), 0, "NVDA")
    with HistoryWriter(api.settings.database_url or "") as writer:
        writer.write_alerts([alert])
    ids["alert"] = alert.alert_id
    feed = InAppFeed(api.settings.redis_url or "")
    try:
        entry = feed.publish(
            Notification(
                notification_id=f"n-{a}",
                user_id=a,
                alert_ids=[alert.alert_id],
                title=f"for {a}",
                message=f"message for {a}",
                highest_priority=Priority.HIGH,
                channels=[Channel.IN_APP],
                window_start=alert.triggered_at,
                window_end=alert.triggered_at,
            )
        )
    finally:
        feed.close()
    assert entry
    ids["entry"] = entry
    return ids


def call(client: httpx.Client, method: str, path: str, spec: Spec, ids: Ids) -> httpx.Response:
    url = path.format(**spec.params(ids))
    body = spec.body(ids) if spec.body else None
    return client.request(method, url, json=body)


def ws_close_code(api: ApiServer, token: str | None) -> int | None:
    url = api.url.replace("http://", "ws://") + "/v1/inbox/ws"
    if token:
        url += f"?access_token={token}"
    with connect(url, open_timeout=10) as socket:
        if not token:
            socket.send('{"type": "hello"}')  # anything but an auth message
        try:
            socket.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    return None


def test_every_route_is_in_the_matrix(world: World) -> None:
    app = world.api.server.config.app
    served = app_routes(app)
    unknown = [route for route in served if route not in ROUTES]
    assert not unknown, (
        f"routes the matrix does not know how to call (add them to ROUTES): {unknown}"
    )
    gone = [route for route in ROUTES if route not in served]
    assert not gone, f"ROUTES lists routes the app does not serve: {gone}"


PROTECTED = [route for route, spec in ROUTES.items() if spec.scope != PUBLIC]


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[" ".join(r) for r in PROTECTED])
def test_nobody_gets_401(world: World, method: str, path: str) -> None:
    spec = ROUTES[method, path]
    if method == "WS":
        assert ws_close_code(world.api, None) == 4401
        return
    with world.api.client() as client:
        response = call(client, method, path, spec, world.ids)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert world.a not in response.text


SCOPED = [route for route, spec in ROUTES.items() if spec.scope not in (PUBLIC, ANYONE)]


@pytest.mark.parametrize(("method", "path"), SCOPED, ids=[" ".join(r) for r in SCOPED])
def test_credentials_without_the_scope_get_403(world: World, method: str, path: str) -> None:
    spec = ROUTES[method, path]
    key = api_key(world.api, world.b, [])
    if method == "WS":
        assert ws_close_code(world.api, key) == 4403
        return
    callers = [world.api.client(key)]
    if spec.write(method):
        callers.append(world.api.as_user(world.b, ["analyst"]))
    for client in callers:
        with client:
            response = call(client, method, path, spec, world.ids)
        assert response.status_code == 403, (client.headers, response.text)
        assert spec.scope in response.json()["detail"]
        assert world.a not in response.text


CROSS = [route for route, spec in ROUTES.items() if spec.scope != PUBLIC and not spec.streams]


@pytest.mark.parametrize(("method", "path"), CROSS, ids=[" ".join(r) for r in CROSS])
def test_another_user_gets_nothing_of_the_owners(world: World, method: str, path: str) -> None:
    spec = ROUTES[method, path]
    with world.api.as_user(world.b) as client:
        response = call(client, method, path, spec, world.ids)
    if spec.owned:
        assert response.status_code in (403, 404), response.text
    assert response.status_code < 500, response.text
    assert world.a not in response.text


def test_the_owners_resources_survived_the_others_calls(world: World) -> None:
    """Runs last: B's writes on A's resources changed nothing."""
    ids = world.ids
    with world.api.as_user(world.a) as client:
        rule = client.get(f"/v1/rules/{ids['rule']}")
        assert rule.status_code == 200
        assert (rule.json()["active"], rule.json()["version"]) == (True, 1)
        assert client.get(f"/v1/templates/shared/{ids['template']}").status_code == 200
        assert client.get(f"/v1/webhooks/{ids['webhook']}").status_code == 200
        keys = client.get("/v1/api-keys").json()["items"]
        assert ids["api_key"] in [key["id"] for key in keys]
        assert ids["push_token"] in client.get("/v1/profile").text
        alert = client.get(f"/v1/alerts/{ids['alert']}").json()
        assert alert["acknowledged_at"] is None, alert
        unread = client.get("/v1/inbox/unread-count").json()
        assert unread["unread"] == 1, unread
