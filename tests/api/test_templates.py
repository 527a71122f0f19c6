"""Templates: the built-in ones, and rules users publish as templates (private or public),
instantiated into rules of another user with the use count kept exactly."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx

from tests.api.conftest import ApiServer
from tests.api.test_profile import api_key
from tests.api.test_rules import body, made, messages, problem

SHARED = "/v1/templates/shared"


def _user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def publish(client: httpx.Client, rule_id: str, **fields: Any) -> dict[str, Any]:
    response = client.post(SHARED, json={"rule_id": rule_id, "name": "my setup", **fields})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def instantiate(client: httpx.Client, template: str, symbol: str) -> httpx.Response:
    return client.post("/v1/rules/from-template", json={"template": template, "symbol": symbol})


def test_builtin_templates_are_listed_and_shown(api: ApiServer) -> None:
    with api.as_user(_user()) as client:
        listed = client.get("/v1/templates")
        assert listed.status_code == 200
        names = [t["name"] for t in listed.json()["items"]]
        assert "golden_cross" in names and names == sorted(names)
        shown = client.get("/v1/templates/breakout_above_resistance").json()
        level = next(p for p in shown["parameters"] if p["name"] == "level")
        assert level["required"] is True and level["example"]
        assert "${level}" in str(shown["rule"]["conditions"])
        assert problem(client.get("/v1/templates/nope"), 404)["detail"] == "no template 'nope'"
    with api.client() as anonymous:
        problem(anonymous.get("/v1/templates"), 401)
        problem(anonymous.get("/v1/templates/golden_cross"), 401)
    with api.client(api_key(api, _user(), ["alerts:read"])) as other_scope:
        problem(other_scope.get("/v1/templates"), 403)
        problem(other_scope.get("/v1/templates/golden_cross"), 403)
    with api.as_user("ann", ["analyst"]) as analyst:
        assert analyst.get("/v1/templates/golden_cross").status_code == 200


def test_a_public_template_makes_rules_of_other_users_and_counts_them(api: ApiServer) -> None:
    alice, bob = _user(), _user()
    with api.as_user(alice) as owner:
        source = made(owner, body("${symbol} over 200", priority="HIGH", cooldown_seconds=60))
        template = publish(owner, source["id"], visibility="public", description="mine")
    assert template["id"].startswith("st-")
    assert (template["mine"], template["user_id"], template["use_count"]) == (True, alice, 0)
    assert template["rule"] == {
        key: value
        for key, value in source.items()
        if key not in ("v", "id", "version", "user_id", "symbol")
    }
    with api.as_user(bob) as client:
        seen = client.get(f"{SHARED}/{template['id']}").json()
        assert (seen["mine"], seen["user_id"]) == (False, None)  # the publisher is not shown
        response = instantiate(client, template["id"], "MSFT")
        assert response.status_code == 201, response.text
        rule = response.json()
        assert (rule["user_id"], rule["symbol"], rule["version"]) == (bob, "MSFT", 1)
        assert rule["name"] == "MSFT over 200" and rule["priority"] == "HIGH"
        assert rule["conditions"] == source["conditions"]
        assert client.get(f"/v1/rules/{rule['id']}").json() == rule
        watchlist = instantiate(client, template["id"], "NVDA,AMD").json()
        assert watchlist["symbols"] == ["NVDA", "AMD"] and "symbol" not in watchlist
        problem(instantiate(client, template["id"], "MSFT"), 409)  # the same rule again
        extra = {"template": template["id"], "symbol": "X", "params": {"level": 1}}
        problem(client.post("/v1/rules/from-template", json=extra), 422)
        assert client.get(f"{SHARED}/{template['id']}").json()["use_count"] == 2
        listed = client.get(SHARED, params={"visibility": "public"}).json()["items"]
        assert template["id"] in [t["id"] for t in listed]
    assert messages(api, rule["id"]) == [rule]


def test_use_counts_are_exact_under_concurrent_instantiation(api: ApiServer) -> None:
    with api.as_user(_user()) as owner:
        template = publish(owner, made(owner, body())["id"], visibility="public")
    statuses: list[int] = []

    def use(symbol: str) -> None:
        with api.as_user(_user()) as client:
            statuses.append(instantiate(client, template["id"], symbol).status_code)

    threads = [threading.Thread(target=use, args=(f"S{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [201] * 8
    with api.as_user(_user()) as client:
        assert client.get(f"{SHARED}/{template['id']}").json()["use_count"] == 8


def test_a_private_template_is_its_owners_only(api: ApiServer) -> None:
    alice, bob = _user(), _user()
    with api.as_user(alice) as owner:
        template = publish(owner, made(owner, body("secret setup"))["id"])
        assert template["visibility"] == "private"
        mine = owner.get(SHARED, params={"mine": "true"}).json()["items"]
        assert [t["id"] for t in mine] == [template["id"]]
        rule = instantiate(owner, template["id"], "TSLA")
        assert rule.status_code == 201 and rule.json()["user_id"] == alice
    with api.as_user(bob) as other:
        for response in (
            other.get(f"{SHARED}/{template['id']}"),
            instantiate(other, template["id"], "MSFT"),
            other.delete(f"{SHARED}/{template['id']}"),
        ):
            assert problem(response, 404)["detail"] == f"no template {template['id']!r}"
            assert "secret setup" not in response.text
        listed = other.get(SHARED).json()["items"]
        assert template["id"] not in [t["id"] for t in listed]
    with api.as_user("ann", ["analyst"]) as analyst:
        seen = analyst.get(f"{SHARED}/{template['id']}").json()
        assert seen["user_id"] == alice and seen["use_count"] == 1
        problem(instantiate(analyst, template["id"], "MSFT"), 403)


def test_publishing_needs_an_own_rule_and_only_builtin_placeholders(api: ApiServer) -> None:
    alice = _user()
    with api.as_user(alice) as owner:
        rule = made(owner, body("uses ${level}"))
        refused = problem(owner.post(SHARED, json={"rule_id": rule["id"], "name": "t"}), 422)
        assert "${level}" in refused["detail"]
        plain = made(owner, body())
        bad = {"rule_id": plain["id"], "name": "t", "visibility": "everyone"}
        assert problem(owner.post(SHARED, json=bad), 422)["detail"].startswith("visibility")
        problem(owner.post(SHARED, json={"rule_id": plain["id"], "name": ""}), 422)
        problem(owner.post(SHARED, json={"rule_id": "r-none", "name": "t"}), 404)
        problem(owner.get(SHARED, params={"cursor": "bad"}), 422)
    with api.as_user(_user()) as other:
        theirs = problem(other.post(SHARED, json={"rule_id": plain["id"], "name": "t"}), 404)
        assert theirs["detail"] == f"no rule {plain['id']!r}"
    with api.as_user("ann", ["analyst"]) as analyst:
        problem(analyst.post(SHARED, json={"rule_id": plain["id"], "name": "t"}), 403)
    with api.client() as anonymous:
        problem(anonymous.post(SHARED, json={"rule_id": plain["id"], "name": "t"}), 401)
        problem(anonymous.get(SHARED), 401)
        problem(anonymous.get(f"{SHARED}/st-x"), 401)
        problem(anonymous.delete(f"{SHARED}/st-x"), 401)
    with api.client(api_key(api, alice, ["rules:read"])) as reader:
        problem(reader.post(SHARED, json={"rule_id": plain["id"], "name": "t"}), 403)
        problem(reader.delete(f"{SHARED}/st-x"), 403)
        assert reader.get(SHARED).status_code == 200


def test_shared_lists_page_newest_first_and_a_template_can_be_withdrawn(api: ApiServer) -> None:
    with api.as_user(_user()) as owner:
        rule_id = made(owner, body())["id"]
        first = publish(owner, rule_id, name="first")
        second = publish(owner, rule_id, name="second", visibility="public")
        page1 = owner.get(SHARED, params={"mine": "true", "limit": 1}).json()
        page2 = owner.get(
            SHARED, params={"mine": "true", "limit": 1, "cursor": page1["next_cursor"]}
        ).json()
        assert [t["id"] for t in page1["items"] + page2["items"]] == [second["id"], first["id"]]
        assert page2["next_cursor"] is None
        private = owner.get(SHARED, params={"mine": "true", "visibility": "private"}).json()
        assert [t["id"] for t in private["items"]] == [first["id"]]
        assert owner.delete(f"{SHARED}/{second['id']}").status_code == 204
        problem(owner.get(f"{SHARED}/{second['id']}"), 404)
        problem(instantiate(owner, second["id"], "AAPL"), 404)
        # the rule it was published from stays
        assert owner.get(f"/v1/rules/{rule_id}").status_code == 200
