"""The rules resource: create (JSON, text, template), list, read, change with If-Match,
enable/disable, delete (a tombstone), versions; every write is on alerts.rules as answered,
reads follow writes, racing changes with one If-Match have exactly one winner."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api import rule_store
from api.auth import ROLE_SCOPES, Principal
from api.problems import Problem
from api.routes.rules import create
from api.services import Services
from pipeline.cli import commands
from pipeline.messages import Rule
from pipeline.rules.text import parse_rule
from sinks.kafka import CheckedProducer
from sinks.postgres import PLACEHOLDER_RULE, HistoryWriter
from tests.api.conftest import ApiServer
from tests.api.test_profile import api_key
from tests.conftest import wait_for

PRICE_ABOVE = {"type": "price_above", "threshold": 200}


def _user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def body(name: str = "AAPL over 200", **fields: Any) -> dict[str, Any]:
    return {"name": name, "symbol": "AAPL", "conditions": PRICE_ABOVE, **fields}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    return document


def records(api: ApiServer, rule_id: str) -> list[bytes | None]:
    """The values on the rules topic keyed by ``rule_id``, in order (None: a tombstone)."""
    found = commands.read_topic(api.settings.require_servers()[0], api.settings.topics.rules)
    return [record.value for record in found if record.key == rule_id.encode()]


def messages(api: ApiServer, rule_id: str) -> list[dict[str, Any] | None]:
    return [json.loads(value) if value else None for value in records(api, rule_id)]


def made(client: httpx.Client, document: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/rules", json=document)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def rule_row(api: ApiServer, rule_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(api.settings.database_url or "") as conn:
        return conn.execute(
            "SELECT version, name, is_active, deleted_at FROM alert_rules WHERE external_id = %s",
            (rule_id,),
        ).fetchone()


# ---------------------------------------------------------------- create


def test_a_rule_made_from_json_is_on_the_topic_as_answered(api: ApiServer) -> None:
    alice = _user()
    with api.as_user(alice) as client:
        response = client.post("/v1/rules", json=body(priority="HIGH", sessions="regular"))
        assert response.status_code == 201
        answer = response.json()
        assert answer["id"].startswith("r-") and answer["user_id"] == alice
        assert answer["version"] == 1 and answer["sessions"] == "regular"
        assert response.headers["etag"] == '"1"'
        assert response.headers["location"] == f"/v1/rules/{answer['id']}"
        # read after write: the same request committed what it answered
        read = client.get(f"/v1/rules/{answer['id']}")
    assert read.status_code == 200 and read.json() == answer
    assert read.headers["etag"] == '"1"'
    assert messages(api, answer["id"]) == [answer]
    assert Rule.model_validate(answer).priority == "HIGH"
    assert rule_row(api, answer["id"]) == (1, "AAPL over 200", True, None)


def test_a_given_id_is_kept_and_a_second_create_is_a_conflict(api: ApiServer) -> None:
    alice, bob = _user(), _user()
    rule_id = f"r-mine-{uuid.uuid4().hex[:6]}"
    with api.as_user(alice) as client:
        answer = made(client, body(id=rule_id, version=7))
        assert (answer["id"], answer["version"]) == (rule_id, 1)  # the API numbers versions
        again = problem(client.post("/v1/rules", json=body(id=rule_id)), 409)
        assert f"PUT /v1/rules/{rule_id}" in again["detail"]
    with api.as_user(bob) as other:
        taken = problem(other.post("/v1/rules", json=body("bob's", id=rule_id)), 409)
    assert "taken" in taken["detail"] and "AAPL over 200" not in json.dumps(taken)
    assert messages(api, rule_id) == [answer]


def test_an_id_another_writer_put_on_the_topic_is_not_overwritten(api: ApiServer) -> None:
    rule_id = f"r-job-{uuid.uuid4().hex[:6]}"
    foreign = Rule(id=rule_id, version=5, user_id="someone", name="n", conditions=PRICE_ABOVE)
    with HistoryWriter(api.settings.database_url or "") as writer:
        writer.write_rules([foreign])
    with api.as_user(_user()) as client:
        problem(client.post("/v1/rules", json=body(id=rule_id)), 409)
    assert rule_row(api, rule_id) == (5, "n", True, None)


def test_invalid_rules_are_422_naming_the_field(api: ApiServer) -> None:
    with api.as_user(_user()) as client:
        missing = problem(client.post("/v1/rules", json={"name": "x", "symbol": "A"}), 422)
        assert missing["detail"].startswith("conditions")
        both = problem(client.post("/v1/rules", json=body(symbols=["MSFT"])), 422)
        assert "either 'symbol' or 'symbols'" in both["detail"]
        unknown = problem(client.post("/v1/rules", json=body(colour="red")), 422)
        assert unknown["detail"].startswith("colour")
        bad_tree = body(conditions={"type": "price_above", "threshold": -1})
        assert problem(client.post("/v1/rules", json=bad_tree), 422)["detail"].startswith(
            "conditions"
        )


def test_only_admins_create_rules_for_another_user(api: ApiServer) -> None:
    alice = _user()
    with api.as_user(_user()) as client:
        problem(client.post("/v1/rules", json=body(user_id=alice)), 403)
    with api.as_user("root", ["admin"]) as admin:
        answer = made(admin, body(user_id=alice))
    assert answer["user_id"] == alice
    with api.as_user(alice) as owner:
        assert owner.get(f"/v1/rules/{answer['id']}").json() == answer
        versions = owner.get(f"/v1/rules/{answer['id']}/versions").json()["items"]
    assert versions[0]["written_by"] == "root"


def test_rule_text_becomes_a_rule_and_a_syntax_error_names_the_column(api: ApiServer) -> None:
    alice = _user()
    text = 'AAPL price crosses above 200 cooldown 30m priority high name "breakout"'
    with api.as_user(alice) as client:
        response = client.post("/v1/rules/from-text", json={"text": text})
        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["name"] == "breakout" and answer["cooldown_seconds"] == 1800
        assert answer["user_id"] == alice and answer["priority"] == "HIGH"
        assert answer["conditions"]["type"] == "price_crosses_above"
        assert problem(client.post("/v1/rules/from-text", json={"text": text}), 409)
        wrong = problem(client.post("/v1/rules/from-text", json={"text": "AAPL price >> 200"}), 422)
        assert "column" in wrong["detail"] and "\n" not in wrong["detail"]
        assert wrong["column"] >= 1 and "^" in wrong["excerpt"]
        other = problem(
            client.post("/v1/rules/from-text", json={"text": "AAPL price > 1 user someone"}), 422
        )
        assert "someone" in other["detail"] and alice in other["detail"]
        problem(client.post("/v1/rules/from-text", json={"text": ""}), 422)
    assert messages(api, answer["id"]) == [answer]


def test_a_sentence_becomes_a_rule_and_the_answer_says_how_it_was_read(api: ApiServer) -> None:
    alice = _user()
    with api.as_user(alice) as client:
        response = client.post(
            "/v1/rules/from-text", json={"text": "alert me when AAPL drops below 180, thanks"}
        )
        assert response.status_code == 201, response.text
        answer = response.json()
        understood_as = response.headers["X-Rule-Understood-As"]
        assert understood_as.startswith(f"AAPL price < 180 id {answer['id']} user {alice} ")
        # the canonical text is the rule answered, as rule text
        assert parse_rule(understood_as) == Rule.model_validate(answer)
        assert response.headers["X-Rule-Unused-Words"] == "thanks"
        assert answer["conditions"] == {"type": "price_below", "threshold": 180}
        # words outside Latin-1 are escaped, not garbled
        escaped = client.post(
            "/v1/rules/from-text", json={"text": "NVDA above 150 until Friday, don’t forget"}
        )
        assert escaped.status_code == 201, escaped.text
        assert escaped.headers["X-Rule-Unused-Words"] == "don\\u2019t forget"
        assert " expires 20" in escaped.headers["X-Rule-Understood-As"]
        assert "expires_at" in escaped.json()
        # rule text is read as rule text: nothing to say about it
        formal = client.post("/v1/rules/from-text", json={"text": "AAPL price > 1"})
        assert formal.status_code == 201, formal.text
        assert "X-Rule-Understood-As" not in formal.headers
        refused = problem(
            client.post(
                "/v1/rules/from-text", json={"text": "alert me when AAPL does something nice"}
            ),
            422,
        )
        assert refused["type"].endswith("/invalid-rule-text")
        assert "no condition" in refused["detail"] and "\n" not in refused["detail"]
        assert "as rule text: unknown condition 'me'" in refused["detail"]
        assert refused["understood"] == "AAPL"
        assert refused["unused_words"] == ["does", "something", "nice"]
        # a sentence rule text cannot say exactly is refused with the reason, not guessed
        weekly = problem(
            client.post("/v1/rules/from-text", json={"text": "SPY put sweeps expiring next week"}),
            422,
        )
        assert "'expiring next week' names a date" in weekly["detail"]
        assert weekly["understood"] == "SPY put sweep"
    assert messages(api, answer["id"]) == [answer]


def test_a_builtin_template_becomes_a_rule_of_the_caller(api: ApiServer) -> None:
    alice = _user()
    request = {"template": "breakout_above_resistance", "symbol": "MSFT", "params": {"level": 420}}
    with api.as_user(alice) as client:
        response = client.post("/v1/rules/from-template", json=request)
        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["id"].startswith("tpl-breakout_above_resistance-MSFT-")
        assert (answer["symbol"], answer["user_id"], answer["version"]) == ("MSFT", alice, 1)
        assert "420" in json.dumps(answer["conditions"])
        wrong = {**request, "params": {"nope": 1}}
        bad = problem(client.post("/v1/rules/from-template", json=wrong), 422)
        assert "unknown parameter 'nope'" in bad["detail"]
        missing = problem(
            client.post("/v1/rules/from-template", json={**request, "template": "x"}), 404
        )
        assert missing["detail"] == "no template 'x'"
    assert messages(api, answer["id"]) == [answer]


# ---------------------------------------------------------------- list, read


def test_lists_are_the_callers_newest_first_filtered_and_paged(api: ApiServer) -> None:
    alice, bob = _user(), _user()
    with api.as_user(bob) as other:
        made(other, body("bob's"))
    with api.as_user(alice) as client:
        first = made(client, body("Apple breakout"))
        second = made(client, body("msft dip", symbol=None, symbols=["MSFT", "NVDA"]))
        third = made(client, body("APPLE quiet", priority="LOW", active=False))
        everything = client.get("/v1/rules").json()
        assert [r["id"] for r in everything["items"]] == [third["id"], second["id"], first["id"]]
        assert everything["next_cursor"] is None
        page1 = client.get("/v1/rules", params={"limit": 2}).json()
        page2 = client.get("/v1/rules", params={"limit": 2, "cursor": page1["next_cursor"]})
        assert [r["id"] for r in page1["items"] + page2.json()["items"]] == [
            third["id"],
            second["id"],
            first["id"],
        ]
        assert page2.json()["next_cursor"] is None

        def ids(**params: Any) -> list[str]:
            response = client.get("/v1/rules", params=params)
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()["items"]]

        assert ids(symbol="NVDA") == [second["id"]]
        assert ids(symbol="AAPL") == [third["id"], first["id"]]
        assert ids(active="false") == [third["id"]]
        assert ids(priority="LOW") == [third["id"]]
        assert ids(name="apple") == [third["id"], first["id"]]
        assert ids(name="apple", active="true") == [first["id"]]
        problem(client.get("/v1/rules", params={"priority": "URGENT"}), 422)
        problem(client.get("/v1/rules", params={"cursor": "garbage"}), 422)
        problem(client.get("/v1/rules", params={"limit": 0}), 422)
        problem(client.get("/v1/rules", params={"user_id": bob}), 403)
    with api.as_user("ann", ["analyst"]) as analyst:
        listed = analyst.get("/v1/rules", params={"user_id": alice}).json()["items"]
        assert [r["id"] for r in listed] == [third["id"], second["id"], first["id"]]
        everyone = analyst.get("/v1/rules", params={"name": "bob's"}).json()["items"]
        assert [r["user_id"] for r in everyone] == [bob]


def test_another_users_rule_is_404_and_shows_nothing(api: ApiServer) -> None:
    with api.as_user(_user()) as owner:
        answer = made(owner, body("secret strategy"))
    path = f"/v1/rules/{answer['id']}"
    with api.as_user(_user()) as other:
        responses = [
            other.get(path),
            other.get(f"{path}/versions"),
            other.put(path, json=body("mine now"), headers={"If-Match": '"1"'}),
            other.post(f"{path}/disable", headers={"If-Match": '"1"'}),
            other.delete(path, headers={"If-Match": '"1"'}),
        ]
    for response in responses:
        assert problem(response, 404)["detail"] == f"no rule {answer['id']!r}"
        assert "secret strategy" not in response.text
    with api.as_user("ann", ["analyst"]) as analyst:
        assert analyst.get(path).json() == answer  # analysts read every rule
        problem(analyst.put(path, json=body(), headers={"If-Match": '"1"'}), 403)
        problem(analyst.post("/v1/rules", json=body()), 403)
        problem(analyst.delete(path, headers={"If-Match": '"1"'}), 403)
    with api.as_user("root", ["admin"]) as admin:
        changed = admin.put(path, json=body("admin's fix"), headers={"If-Match": '"1"'})
    assert changed.status_code == 200 and changed.json()["user_id"] == answer["user_id"]
    assert messages(api, answer["id"]) == [answer, changed.json()]


def test_rule_routes_need_credentials_and_scopes(api: ApiServer) -> None:
    alice = _user()
    with api.as_user(alice) as client:
        answer = made(client, body())
    path = f"/v1/rules/{answer['id']}"
    writes = [
        ("POST", "/v1/rules", body()),
        ("POST", "/v1/rules/from-text", {"text": "AAPL price > 1"}),
        ("POST", "/v1/rules/from-template", {"template": "golden_cross", "symbol": "A"}),
        ("PUT", path, body()),
        ("POST", f"{path}/enable", None),
        ("POST", f"{path}/disable", None),
        ("DELETE", path, None),
    ]
    reads = [("GET", "/v1/rules", None), ("GET", path, None), ("GET", f"{path}/versions", None)]
    with api.client() as anonymous:
        for method, url, payload in writes + reads:
            problem(anonymous.request(method, url, json=payload), 401)
    with api.client(api_key(api, alice, ["rules:read"])) as reader:
        for method, url, payload in reads:
            assert reader.request(method, url, json=payload).status_code == 200
        for method, url, payload in writes:
            refused = problem(
                reader.request(method, url, json=payload, headers={"If-Match": '"1"'}), 403
            )
            assert "rules:write" in refused["detail"]
    with api.client(api_key(api, alice, ["alerts:read"])) as other_scope:
        for method, url, payload in reads:
            problem(other_scope.request(method, url, json=payload), 403)
    assert messages(api, answer["id"]) == [answer]


# ---------------------------------------------------------------- change


def test_a_change_needs_if_match_and_makes_a_version(api: ApiServer) -> None:
    with api.as_user(_user()) as client:
        answer = made(client, body())
        path = f"/v1/rules/{answer['id']}"
        required = problem(client.put(path, json=body("v2")), 428)
        assert '"1"' in required["detail"]
        stale = problem(client.put(path, json=body("v2"), headers={"If-Match": '"0"'}), 412)
        assert stale["current_version"] == 1
        problem(client.put(path, json=body(""), headers={"If-Match": '"1"'}), 422)
        problem(client.put(path, json=body(id="r-other"), headers={"If-Match": '"1"'}), 422)
        problem(client.put(path, json=body(user_id="x"), headers={"If-Match": '"1"'}), 422)
        response = client.put(
            path, json=body("v2", cooldown_seconds=60), headers={"If-Match": '"1"'}
        )
        assert response.status_code == 200 and response.headers["etag"] == '"2"'
        changed = response.json()
        assert (changed["version"], changed["name"], changed["id"]) == (2, "v2", answer["id"])
        assert client.get(path).json() == changed
        problem(client.put(path, json=body("v3"), headers={"If-Match": '"1"'}), 412)
        versions = client.get(f"{path}/versions").json()
    assert [(v["version"], v["change"]) for v in versions["items"]] == [
        (2, "update"),
        (1, "create"),
    ]
    assert [v["rule"] for v in versions["items"]] == [changed, answer]
    assert all(v["written_by"] == answer["user_id"] and v["written_at"] for v in versions["items"])
    assert messages(api, answer["id"]) == [answer, changed]
    assert rule_row(api, answer["id"]) == (2, "v2", True, None)


def test_racing_changes_with_one_if_match_have_one_winner(api: ApiServer) -> None:
    """Both changes reach the rule's lock while the test holds it, so both read version 1
    before either writes: the lock is what makes one of them 412."""
    with api.as_user(_user()) as client:
        answer = made(client, body())
    path = f"/v1/rules/{answer['id']}"
    statuses: list[int] = []

    def change(name: str) -> None:
        with api.client(api.identity.token(answer["user_id"])) as racer:
            statuses.append(
                racer.put(path, json=body(name), headers={"If-Match": '"1"'}).status_code
            )

    threads = [threading.Thread(target=change, args=(name,)) for name in ("left", "right")]
    with psycopg.connect(api.settings.database_url or "") as holder:
        holder.execute(rule_store.LOCK_VERSIONS, (rule_store.rule_key(answer["id"]),))
        for thread in threads:
            thread.start()
        wait_for(lambda: waiting_on_locks(api) >= 2, 30, "both changes waiting for the lock")
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200, 412]
    with api.as_user(answer["user_id"]) as client:
        final = client.get(path).json()
        versions = client.get(f"{path}/versions").json()["items"]
    assert final["version"] == 2 and final["name"] in ("left", "right")
    assert [v["version"] for v in versions] == [2, 1]
    assert messages(api, answer["id"]) == [answer, final]


def waiting_on_locks(api: ApiServer) -> int:
    with psycopg.connect(api.settings.database_url or "", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_enable_and_disable_are_versioned_writes(api: ApiServer) -> None:
    with api.as_user(_user()) as client:
        answer = made(client, body())
        path = f"/v1/rules/{answer['id']}"
        problem(client.post(f"{path}/disable"), 428)
        off = client.post(f"{path}/disable", headers={"If-Match": '"1"'})
        assert off.status_code == 200 and off.json()["active"] is False
        assert off.headers["etag"] == '"2"'
        again = client.post(f"{path}/disable", headers={"If-Match": '"2"'})
        assert again.json() == off.json()  # already off: no new version
        on = client.post(f"{path}/enable", headers={"If-Match": '"2"'})
        assert on.json()["active"] is True and on.json()["version"] == 3
        problem(client.post(f"{path}/enable", headers={"If-Match": '"2"'}), 412)
        problem(client.post("/v1/rules/r-nothing/enable", headers={"If-Match": '"1"'}), 404)
        changes = [v["change"] for v in client.get(f"{path}/versions").json()["items"]]
    assert changes == ["enable", "disable", "create"]
    assert messages(api, answer["id"]) == [answer, off.json(), on.json()]


def test_delete_is_a_tombstone_on_the_topic_and_in_postgres(api: ApiServer) -> None:
    with api.as_user(_user()) as client:
        answer = made(client, body())
        path = f"/v1/rules/{answer['id']}"
        problem(client.delete(path), 428)
        problem(client.delete(path, headers={"If-Match": '"2"'}), 412)
        assert client.delete(path, headers={"If-Match": '"1"'}).status_code == 204
        problem(client.get(path), 404)
        problem(client.get(f"{path}/versions"), 404)
        problem(client.delete(path, headers={"If-Match": '"1"'}), 404)
        assert answer["id"] not in [r["id"] for r in client.get("/v1/rules").json()["items"]]
        assert messages(api, answer["id"]) == [answer, None]  # the tombstone: no value
        row = rule_row(api, answer["id"])
        assert row is not None and row[2] is False and row[3] is not None
        # the owner may make the id again: its next version
        back = made(client, body(id=answer["id"]))
    assert back["version"] == 2
    assert messages(api, answer["id"]) == [answer, None, back]
    assert rule_row(api, answer["id"]) == (2, "AAPL over 200", True, None)


# ---------------------------------------------------------------- consistency


def test_reads_stay_with_the_api_when_the_job_rewrites_an_older_version(api: ApiServer) -> None:
    """The job's writer takes whatever version reaches it last; the API answers from its own
    versions, so a lagging job never makes a read go back."""
    with api.as_user(_user()) as client:
        answer = made(client, body())
        path = f"/v1/rules/{answer['id']}"
        changed = client.put(path, json=body("v2"), headers={"If-Match": '"1"'}).json()
        with HistoryWriter(api.settings.database_url or "") as job:
            job.write_rules([Rule.model_validate(answer)])  # the job, behind, at version 1
            assert rule_row(api, answer["id"]) == (1, "AAPL over 200", True, None)
            assert client.get(path).json() == changed
            job.write_rules([Rule.model_validate(changed)])  # caught up: the same content
        assert rule_row(api, answer["id"]) == (2, "v2", True, None)
        assert client.get(path).json() == changed


def test_a_broker_that_refuses_leaves_nothing_committed(api: ApiServer) -> None:
    """The rule is written to PostgreSQL, then produced; unacknowledged, the transaction rolls
    back (503) and nothing of the rule remains."""
    settings = api.settings.model_copy(
        update={
            "topics": api.settings.topics.model_copy(
                update={"rules": f"missing-{uuid.uuid4().hex}"}
            )
        }
    )
    services = Services.open(settings)
    refusing = CheckedProducer(
        settings.require_servers()[0], flush_timeout_s=1.0, extra_config={"linger.ms": 0}
    )
    services.producer.close()
    services = dataclasses.replace(services, producer=refusing)
    owner = _user()
    principal = Principal(owner, "user", ROLE_SCOPES["user"], "jwt")
    rule = Rule(id=f"r-{uuid.uuid4().hex}", user_id=owner, name="n", conditions=PRICE_ABOVE)
    try:
        with pytest.raises(Problem) as refused:
            create(services, principal, rule)
        assert refused.value.status == 503
        with services.transaction() as conn:
            assert rule_store.read_rule(conn, rule.id) is None
    finally:
        services.close()
    assert rule_row(api, rule.id) is None


# ---------------------------------------------------------------- rules from other producers


def applied_with_the_cli(api: ApiServer, directory: Path, rules: list[Rule]) -> None:
    """Rules put on alerts.rules by ``smart-alerts replay`` (a producer that writes the topic
    only; ``rules apply`` writes through the rule store), then stored by the job's writer from
    what is on the topic (the job itself does not run in these tests)."""
    path = directory / f"rules-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(rule.to_json().decode() + "\n" for rule in rules))
    assert commands.replay(api.settings, path, "rules", echo=lambda line: None) == len(rules)
    on_topic = [
        Rule.model_validate_json(value)
        for rule in rules
        for value in records(api, rule.id)[-1:]
        if value is not None
    ]
    assert on_topic == rules
    with HistoryWriter(api.settings.database_url or "") as job:
        job.write_rules(on_topic)


def as_answered(message: dict[str, Any] | None) -> dict[str, Any]:
    """A message as the API answers it: the CLI produces null members, the API leaves them out."""
    assert message is not None
    return {name: value for name, value in message.items() if value is not None}


def cli_rule(owner: str, name: str = "cli rule", **fields: Any) -> Rule:
    return Rule.model_validate(
        {
            "id": f"r-cli-{uuid.uuid4().hex[:8]}",
            "user_id": owner,
            "name": name,
            "symbol": "AAPL",
            "conditions": PRICE_ABOVE,
            **fields,
        }
    )


def test_a_rule_the_cli_put_on_the_topic_is_read_by_its_owner_only(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    rule = cli_rule(
        alice,
        "cli strategy",
        version=3,
        symbol=None,
        symbols=["MSFT", "NVDA"],
        priority="HIGH",
        mode="once",
        cooldown_seconds=90,
        expires_at="2030-01-02T03:04:05.678Z",
        channels=["email", "in_app"],
        active=False,
        sessions="regular",
    )
    applied_with_the_cli(api, tmp_path, [rule])
    on_topic = messages(api, rule.id)
    published = as_answered(on_topic[-1])
    path = f"/v1/rules/{rule.id}"
    with api.as_user(alice) as client:
        read = client.get(path)
        assert read.status_code == 200, read.text
        assert read.json() == published  # the message as the CLI produced it
        assert Rule.model_validate(read.json()) == rule
        assert read.headers["etag"] == '"3"'
        listed = client.get("/v1/rules").json()["items"]
        assert listed == [published]
        assert [
            r["id"] for r in client.get("/v1/rules", params={"symbol": "NVDA"}).json()["items"]
        ] == [rule.id]
        assert client.get("/v1/rules", params={"active": "true"}).json()["items"] == []
        versions = client.get(f"{path}/versions").json()["items"]
        assert [(v["version"], v["change"], v["written_by"]) for v in versions] == [
            (3, "imported", None)
        ]
        assert versions[0]["rule"] == published and versions[0]["written_at"]
        # its id stays taken, and the detail says how to change it
        again = problem(client.post("/v1/rules", json=body(id=rule.id)), 409)
        assert f"PUT /v1/rules/{rule.id}" in again["detail"] and '"3"' in again["detail"]
    with api.as_user(_user()) as other:
        for response in (other.get(path), other.get(f"{path}/versions")):
            assert problem(response, 404)["detail"] == f"no rule {rule.id!r}"
            assert "cli strategy" not in response.text
        assert other.get("/v1/rules").json()["items"] == []
        taken = problem(other.post("/v1/rules", json=body(id=rule.id)), 409)
        assert "taken" in taken["detail"] and "cli strategy" not in json.dumps(taken)
        problem(other.put(path, json=body(), headers={"If-Match": '"3"'}), 404)
    with api.as_user("ann", ["analyst"]) as analyst:
        assert analyst.get(path).json() == published
        listed = analyst.get("/v1/rules", params={"user_id": alice}).json()["items"]
        assert listed == [published]
    assert messages(api, rule.id) == on_topic  # nothing was written


def test_placeholders_and_deleted_rules_of_the_job_are_not_rules(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    placeholder = f"r-ph-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(api.settings.database_url or "") as conn:
        conn.execute(
            PLACEHOLDER_RULE,
            (rule_store.rule_key(placeholder), placeholder, uuid.uuid4(), alice, 1),
        )
    gone = cli_rule(alice, "gone")
    applied_with_the_cli(api, tmp_path, [gone])
    with HistoryWriter(api.settings.database_url or "") as job:
        job.delete_rules([gone.id])
    with api.as_user(alice) as client:
        problem(client.get(f"/v1/rules/{placeholder}"), 404)
        problem(client.get(f"/v1/rules/{gone.id}"), 404)
        assert client.get("/v1/rules").json()["items"] == []
        # neither blocks the id: the owner makes it a rule of the API, version 1
        assert made(client, body(id=placeholder))["version"] == 1


def test_a_change_imports_the_rule_and_continues_its_version(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    rule = cli_rule(alice, version=5)
    applied_with_the_cli(api, tmp_path, [rule])
    produced = messages(api, rule.id)[-1]
    imported = as_answered(produced)
    path = f"/v1/rules/{rule.id}"
    with api.as_user(alice) as client:
        problem(client.put(path, json=body("v6")), 428)
        stale = problem(client.put(path, json=body("v6"), headers={"If-Match": '"1"'}), 412)
        assert stale["current_version"] == 5
        response = client.put(path, json=body("v6"), headers={"If-Match": '"5"'})
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"6"'
        changed = response.json()
        assert (changed["id"], changed["version"], changed["name"]) == (rule.id, 6, "v6")
        assert client.get(path).json() == changed
        # the job, behind, writes version 5 again: reads stay with the API's version 6
        with HistoryWriter(api.settings.database_url or "") as job:
            job.write_rules([rule])
        assert client.get(path).json() == changed
        assert [r["id"] for r in client.get("/v1/rules").json()["items"]] == [rule.id]
        off = client.post(f"{path}/disable", headers={"If-Match": '"6"'})
        assert off.status_code == 200 and off.json()["version"] == 7
        versions = client.get(f"{path}/versions").json()["items"]
        assert [(v["version"], v["change"], v["written_by"]) for v in versions] == [
            (7, "disable", alice),
            (6, "update", alice),
            (5, "imported", None),
        ]
        assert [v["rule"] for v in versions] == [off.json(), changed, imported]
        page = client.get(f"{path}/versions", params={"limit": 2}).json()
        rest = client.get(f"{path}/versions", params={"cursor": page["next_cursor"]}).json()
        assert [v["version"] for v in page["items"] + rest["items"]] == [7, 6, 5]
    assert messages(api, rule.id) == [produced, changed, off.json()]
    with psycopg.connect(api.settings.database_url or "") as conn:
        row = conn.execute(
            "SELECT version, document FROM alert_rule_versions WHERE rule_id = %s AND is_current",
            (rule_store.rule_key(rule.id),),
        ).fetchone()
    assert row == (7, off.json())


def test_disabling_an_imported_rule_keeps_all_its_producer_set(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    rule = cli_rule(alice, version=2, sessions="extended", priority="CRITICAL")
    applied_with_the_cli(api, tmp_path, [rule])
    with api.as_user(alice) as client:
        off = client.post(f"/v1/rules/{rule.id}/disable", headers={"If-Match": '"2"'})
    assert off.status_code == 200, off.text
    assert Rule.model_validate(off.json()) == rule.model_copy(
        update={"version": 3, "active": False}
    )
    assert messages(api, rule.id)[-1] == off.json()


def test_deleting_an_imported_rule_is_a_tombstone_after_its_version(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    rule = cli_rule(alice, version=2)
    applied_with_the_cli(api, tmp_path, [rule])
    produced = messages(api, rule.id)[-1]
    imported = as_answered(produced)
    path = f"/v1/rules/{rule.id}"
    with api.as_user(alice) as client:
        assert client.get(path).json() == imported
        problem(client.delete(path, headers={"If-Match": '"1"'}), 412)
        assert client.delete(path, headers={"If-Match": '"2"'}).status_code == 204
        problem(client.get(path), 404)
        assert client.get("/v1/rules").json()["items"] == []
        back = made(client, body(id=rule.id))  # the owner's deleted rule: its next version
    assert back["version"] == 3
    assert messages(api, rule.id) == [produced, None, back]
    assert rule_row(api, rule.id) == (3, "AAPL over 200", True, None)


def test_racing_first_changes_of_an_imported_rule_have_one_winner(
    api: ApiServer, tmp_path: Path
) -> None:
    """The rule has no version row yet: both changes wait on its alert_rules row (held here),
    so both read version 4 before either writes; one wins, the other is 412."""
    alice = _user()
    rule = cli_rule(alice, version=4)
    applied_with_the_cli(api, tmp_path, [rule])
    produced = messages(api, rule.id)[-1]
    imported = as_answered(produced)
    path = f"/v1/rules/{rule.id}"
    statuses: list[int] = []

    def change(name: str) -> None:
        with api.client(api.identity.token(alice)) as racer:
            statuses.append(
                racer.put(path, json=body(name), headers={"If-Match": '"4"'}).status_code
            )

    threads = [threading.Thread(target=change, args=(name,)) for name in ("left", "right")]
    with psycopg.connect(api.settings.database_url or "") as holder:
        holder.execute(rule_store.LOCK_ROW, (rule_store.rule_key(rule.id),))
        for thread in threads:
            thread.start()
        wait_for(lambda: waiting_on_locks(api) >= 2, 30, "both changes waiting for the lock")
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200, 412]
    with api.as_user(alice) as client:
        final = client.get(path).json()
        versions = client.get(f"{path}/versions").json()["items"]
    assert final["version"] == 5 and final["name"] in ("left", "right")
    assert [(v["version"], v["change"]) for v in versions] == [(5, "update"), (4, "imported")]
    assert [v["rule"] for v in versions] == [final, imported]
    assert messages(api, rule.id) == [produced, final]


def test_the_cursor_pages_through_both_sources_without_gap_or_repeat(
    api: ApiServer, tmp_path: Path
) -> None:
    alice = _user()
    with api.as_user(alice) as client:
        first = made(client, body("api 1"))
        cli_1 = cli_rule(alice, "cli 1")
        applied_with_the_cli(api, tmp_path, [cli_1])
        second = made(client, body("api 2"))
        # two rules the job stores in one transaction share created_at: the id orders them
        cli_2, cli_3 = cli_rule(alice, "cli 2"), cli_rule(alice, "cli 3")
        applied_with_the_cli(api, tmp_path, [cli_2, cli_3])
        third = made(client, body("api 3"))
        tied = sorted([cli_2.id, cli_3.id], reverse=True)
        expected = [third["id"], *tied, second["id"], cli_1.id, first["id"]]
        assert [r["id"] for r in client.get("/v1/rules").json()["items"]] == expected
        for limit in (1, 2, 4):
            seen: list[str] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": limit}
                if cursor is not None:
                    params["cursor"] = cursor
                page = client.get("/v1/rules", params=params).json()
                seen += [r["id"] for r in page["items"]]
                if len(seen) == 2:
                    # a change imports a rule between pages: it keeps its place in the list
                    version = client.get(f"/v1/rules/{cli_1.id}").headers["etag"]
                    changed = client.put(
                        f"/v1/rules/{cli_1.id}", json=body("cli 1"), headers={"If-Match": version}
                    )
                    assert changed.status_code == 200, changed.text
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == expected, limit
        assert [
            r["id"] for r in client.get("/v1/rules", params={"name": "cli"}).json()["items"]
        ] == [*tied, cli_1.id]
