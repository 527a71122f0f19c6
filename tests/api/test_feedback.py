"""Feedback: each action on the caller's alert is published to alerts.feedback exactly as the
API answered it; symbol mutes need no alert; someone else's alert is not found."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from pipeline.cli import commands
from pipeline.messages import Feedback, Priority
from sinks.postgres import HistoryWriter
from tests.api.conftest import ApiServer
from tests.api.test_alerts import make_alert, make_rule
from tests.api.test_profile import api_key


class Alerts:
    def __init__(self, api: ApiServer) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.carol, self.dave = f"carol-{suffix}", f"dave-{suffix}"
        rule = make_rule(self.carol, "breakout")
        self.mine = make_alert(rule, 0, "NVDA")
        self.mine_too = make_alert(rule, 60, "AMD", Priority.HIGH)
        self.theirs = make_alert(make_rule(self.dave, "theirs"), 0, "TSLA")
        with HistoryWriter(api.settings.database_url or "") as writer:
            writer.write_alerts([self.mine, self.mine_too, self.theirs])


@pytest.fixture(scope="module")
def alerts(api: ApiServer) -> Alerts:
    return Alerts(api)


def feedback_on(api: ApiServer, user: str) -> list[dict[str, Any]]:
    records = commands.read_topic(api.settings.require_servers()[0], api.settings.topics.feedback)
    values = [json.loads(record.value) for record in records if record.value]
    return [value for value in values if value["user_id"] == user]


@pytest.mark.parametrize("action", ["opened", "acted", "dismissed", "snoozed", "muted", "unmuted"])
def test_each_action_is_published_as_answered(api: ApiServer, alerts: Alerts, action: str) -> None:
    with api.as_user(alerts.carol) as client:
        response = client.post(
            "/v1/feedback", json={"action": action, "alert_id": alerts.mine.alert_id}
        )
    assert response.status_code == 202, response.text
    body = response.json()
    assert Feedback.model_validate(body).action == action
    assert body["symbol"] == "NVDA" and body["condition_type"] == "price_above"
    assert body["user_id"] == alerts.carol
    assert body in feedback_on(api, alerts.carol)


def test_a_mute_may_name_another_symbol_or_a_symbol_alone(api: ApiServer, alerts: Alerts) -> None:
    with api.as_user(alerts.carol) as client:
        instead = client.post(
            "/v1/feedback",
            json={"action": "muted", "alert_id": alerts.mine_too.alert_id, "symbol": "INTC"},
        )
        alone = client.post("/v1/feedback", json={"action": "unmuted", "symbol": "INTC"})
        given_ts = client.post(
            "/v1/feedback",
            json={
                "action": "opened",
                "alert_id": alerts.mine_too.alert_id,
                "ts": "2026-01-05T15:00:00Z",
            },
        )
    assert instead.status_code == alone.status_code == given_ts.status_code == 202
    assert instead.json()["symbol"] == "INTC"
    assert alone.json()["alert_id"] == "symbol:INTC"
    assert alone.json()["symbol"] == "INTC" and "condition_type" not in alone.json()
    assert given_ts.json()["ts"] == "2026-01-05T15:00:00.000Z"
    published = feedback_on(api, alerts.carol)
    for response in (instead, alone, given_ts):
        assert response.json() in published


def test_feedback_refuses_invalid_requests(api: ApiServer, alerts: Alerts) -> None:
    mine = alerts.mine.alert_id
    bad = [
        {"action": "delivered", "alert_id": mine},
        {"action": "liked", "alert_id": mine},
        {"action": "opened"},
        {"action": "muted"},
        {"action": "opened", "alert_id": mine, "symbol": "NVDA"},
        {"action": "opened", "alert_id": mine, "ts": "1999-12-31T00:00:00Z"},
        {"action": "opened", "alert_id": mine, "extra": 1},
        {"action": "opened", "alert_id": ""},
    ]
    before = len(feedback_on(api, alerts.carol))
    with api.as_user(alerts.carol) as client:
        for body in bad:
            response = client.post("/v1/feedback", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    assert len(feedback_on(api, alerts.carol)) == before


def test_another_users_or_an_unknown_alert_is_not_found(api: ApiServer, alerts: Alerts) -> None:
    with api.as_user(alerts.carol) as client:
        foreign = client.post(
            "/v1/feedback", json={"action": "muted", "alert_id": alerts.theirs.alert_id}
        )
        unknown = client.post("/v1/feedback", json={"action": "opened", "alert_id": "nope"})
    assert foreign.status_code == 404 and unknown.status_code == 404
    assert "TSLA" not in foreign.text and alerts.dave not in foreign.text
    published = feedback_on(api, alerts.carol)
    assert all(m["alert_id"] not in (alerts.theirs.alert_id, "nope") for m in published)


def test_feedback_needs_credentials_and_the_write_scope(api: ApiServer, alerts: Alerts) -> None:
    body = {"action": "opened", "alert_id": alerts.mine.alert_id}
    with api.client() as anonymous:
        assert anonymous.post("/v1/feedback", json=body).status_code == 401
    with api.as_user("ann", ["analyst"]) as analyst:
        assert analyst.post("/v1/feedback", json=body).status_code == 403
    with api.client(api_key(api, alerts.carol, ["alerts:read"])) as reader:
        assert reader.post("/v1/feedback", json=body).status_code == 403
