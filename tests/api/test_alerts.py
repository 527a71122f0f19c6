"""Alert history: the rows the job writes (its own HistoryWriter) read back through the API,
filtered and paged; one alert with its values and outcome; acknowledging publishes `acted`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.cli import commands
from pipeline.ids import alert_id
from pipeline.messages import Notification, Priority, Rule, TriggeredAlert
from pipeline.personalize.desk import AlertOutcome
from sinks.postgres import HistoryWriter
from tests.api.conftest import ApiServer

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def make_alert(
    rule: Rule, seconds: int, symbol: str = "AAPL", priority: Priority = Priority.MEDIUM
) -> TriggeredAlert:
    at = T0 + timedelta(seconds=seconds)
    return TriggeredAlert(
        alert_id=alert_id(rule.id, rule.version, at, symbol),
        rule_id=rule.id,
        rule_version=rule.version,
        user_id=rule.user_id,
        symbol=symbol,
        priority=priority,
        title=f"{symbol} {rule.name}",
        message=f"{symbol} crossed",
        triggered_at=at,
        condition_types=["price_above"],
        values={"price": 301.5 + seconds, "threshold": 300.0},
    )


def make_rule(user: str, name: str) -> Rule:
    return Rule(
        id=f"r-{uuid.uuid4().hex[:8]}",
        user_id=user,
        name=name,
        conditions={"type": "price_above", "threshold": 300},
    )


class History:
    """What the job wrote for two users: alice has 6 alerts of two rules, bob one."""

    def __init__(self, api: ApiServer) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.alice, self.bob = f"alice-{suffix}", f"bob-{suffix}"
        self.breakout = make_rule(self.alice, "breakout")
        self.drop = make_rule(self.alice, "drop")
        self.bobs_rule = make_rule(self.bob, "bob's rule")
        self.alerts = [
            make_alert(self.breakout, 0),
            make_alert(self.breakout, 60, "MSFT"),
            make_alert(self.drop, 120, priority=Priority.HIGH),
            make_alert(self.breakout, 180),
            make_alert(self.drop, 240, "MSFT", Priority.CRITICAL),
            make_alert(self.breakout, 300, priority=Priority.LOW),
        ]
        self.bobs = make_alert(self.bobs_rule, 30, "TSLA")
        self.note = Notification(
            notification_id=f"n-{suffix}",
            user_id=self.alice,
            alert_ids=[self.alerts[0].alert_id, self.alerts[1].alert_id],
            title="AAPL, MSFT",
            message="AAPL: breakout; MSFT: breakout",
            highest_priority=Priority.MEDIUM,
            channels=["push", "email"],
            window_start=T0,
            window_end=T0 + timedelta(seconds=60),
        )
        self.critical = Notification(
            notification_id=f"c-{suffix}",
            user_id=self.alice,
            alert_ids=[self.alerts[4].alert_id],
            title="MSFT drop",
            message="MSFT: drop",
            highest_priority=Priority.CRITICAL,
            channels=["sms"],
            window_start=self.alerts[4].triggered_at,
            window_end=self.alerts[4].triggered_at,
        )
        with HistoryWriter(api.settings.database_url or "") as writer:
            writer.write_rules([self.breakout, self.drop, self.bobs_rule])
            writer.write_alerts([*self.alerts, self.bobs])
            writer.write_notifications([self.note, self.critical])
            writer.write_outcomes(
                [
                    AlertOutcome(a.alert_id, self.alice, "NOTIFIED", self.note.notification_id, T0)
                    for a in self.alerts[:2]
                ]
                + [AlertOutcome(self.alerts[2].alert_id, self.alice, "MUTED", None, T0)]
            )
            writer.record_delivery(self.note.notification_id, self.alice, "push", "tok-abcdef")
            writer.record_delivery(
                self.note.notification_id, self.alice, "email", "alice@example.com"
            )
            writer.mark_delivered(self.note.notification_id, "email", "alice@example.com", "m-1")

    def ids(self, indexes: list[int]) -> list[str]:
        return [self.alerts[i].alert_id for i in indexes]


@pytest.fixture(scope="module")
def history(api: ApiServer) -> History:
    return History(api)


def alert_ids(body: dict[str, Any]) -> list[str]:
    return [item["alert"]["alert_id"] for item in body["items"]]


def feedback_on(api: ApiServer, user: str) -> list[dict[str, Any]]:
    records = commands.read_topic(api.settings.require_servers()[0], api.settings.topics.feedback)
    values = [json.loads(record.value) for record in records if record.value]
    return [value for value in values if value["user_id"] == user]


def test_alerts_are_listed_newest_first_with_rule_and_outcome(
    api: ApiServer, history: History
) -> None:
    with api.as_user(history.alice) as client:
        response = client.get("/v1/alerts")
    assert response.status_code == 200, response.text
    body = response.json()
    assert alert_ids(body) == history.ids([5, 4, 3, 2, 1, 0])
    assert body["next_cursor"] is None
    oldest = body["items"][-1]
    assert oldest["alert"] == json.loads(history.alerts[0].to_json())
    assert oldest["rule_name"] == "breakout"
    assert oldest["outcome"]["status"] == "NOTIFIED"
    assert oldest["outcome"]["notification_id"] == history.note.notification_id
    assert body["items"][3]["outcome"]["status"] == "MUTED"
    assert body["items"][0]["outcome"] is None
    assert history.bobs.alert_id not in alert_ids(body)


def test_alert_filters_combine(api: ApiServer, history: History) -> None:
    def listed(**params: Any) -> list[str]:
        with api.as_user(history.alice) as client:
            response = client.get("/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        return alert_ids(response.json())

    assert listed(symbol="MSFT") == history.ids([4, 1])
    assert listed(rule=history.drop.id) == history.ids([4, 2])
    assert listed(priority=["HIGH", "CRITICAL"]) == history.ids([4, 2])
    window = {"from": "2026-01-05T14:31:00Z", "to": "2026-01-05T14:34:00Z"}
    assert listed(**window) == history.ids([3, 2, 1])
    assert listed(rule=history.breakout.id, symbol="AAPL", **window) == history.ids([3])
    assert listed(rule=history.bobs_rule.id) == []


def test_alert_pages_follow_the_cursor(api: ApiServer, history: History) -> None:
    seen: list[str] = []
    cursor = None
    with api.as_user(history.alice) as client:
        for _ in range(3):
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = client.get("/v1/alerts", params=params).json()
            seen.extend(alert_ids(body))
            cursor = body["next_cursor"]
    assert seen == history.ids([5, 4, 3, 2, 1, 0])
    assert cursor is None


def test_alert_list_refuses_bad_parameters(api: ApiServer, history: History) -> None:
    with api.as_user(history.alice) as client:
        for params in (
            {"priority": "URGENT"},
            {"limit": 0},
            {"cursor": "not-a-cursor"},
            {"from": "yesterday"},
            {"from": "2026-01-05T14:31:00"},
            {"to": "0.0"},  # a number is not an RFC 3339 time (pydantic would read Unix seconds)
            {"from": "1767623460"},
        ):
            for path in ("/v1/alerts", "/v1/notifications"):
                response = client.get(path, params=params)
                assert response.status_code == 422, (path, params, response.text)
                assert response.headers["content-type"] == "application/problem+json"
        too_long = "x" * 129
        assert client.get(f"/v1/alerts/{too_long}").status_code == 422
        assert client.post(f"/v1/alerts/{too_long}/acknowledge").status_code == 422


def test_one_alert_has_its_values_and_outcome(api: ApiServer, history: History) -> None:
    alert = history.alerts[2]
    with api.as_user(history.alice) as client:
        response = client.get(f"/v1/alerts/{alert.alert_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["alert"]["values"] == {"price": 421.5, "threshold": 300.0}
    assert body["alert"]["rule_id"] == history.drop.id
    assert body["outcome"]["status"] == "MUTED"
    assert body["acknowledged_at"] is None


def test_another_users_alert_is_not_found(api: ApiServer, history: History) -> None:
    bobs = history.bobs.alert_id
    with api.as_user(history.alice) as client:
        read = client.get(f"/v1/alerts/{bobs}")
        acknowledged = client.post(f"/v1/alerts/{bobs}/acknowledge")
        unknown = client.get("/v1/alerts/no-such-alert")
        listed = client.get("/v1/alerts", params={"user_id": history.bob})
    for response in (read, acknowledged):
        assert response.status_code == 404
        assert "TSLA" not in response.text and history.bob not in response.text
        assert response.json()["detail"] == f"no alert {bobs!r}"
    assert unknown.status_code == 404
    assert listed.status_code == 403 and "TSLA" not in listed.text
    assert feedback_on(api, history.bob) == []


def test_acknowledging_publishes_acted_once_and_keeps_the_first_time(
    api: ApiServer, history: History
) -> None:
    alert = history.alerts[3]
    with api.as_user(history.alice) as client:
        first = client.post(f"/v1/alerts/{alert.alert_id}/acknowledge")
        again = client.post(f"/v1/alerts/{alert.alert_id}/acknowledge")
        read = client.get(f"/v1/alerts/{alert.alert_id}")
    assert first.status_code == 200, first.text
    acknowledged_at = first.json()["acknowledged_at"]
    assert acknowledged_at is not None
    assert again.json()["acknowledged_at"] == acknowledged_at
    assert read.json()["acknowledged_at"] == acknowledged_at
    acted = [m for m in feedback_on(api, history.alice) if m["alert_id"] == alert.alert_id]
    assert acted == [
        {
            "v": 1,
            "user_id": history.alice,
            "alert_id": alert.alert_id,
            "action": "acted",
            "ts": acknowledged_at,
            "symbol": "AAPL",
            "condition_type": "price_above",
        }
    ]


def test_analysts_read_any_users_alerts_but_never_acknowledge(
    api: ApiServer, history: History
) -> None:
    with api.as_user("ann", ["analyst"]) as analyst:
        listed = analyst.get("/v1/alerts", params={"user_id": history.bob})
        one = analyst.get(f"/v1/alerts/{history.bobs.alert_id}")
        acknowledged = analyst.post(f"/v1/alerts/{history.bobs.alert_id}/acknowledge")
        notes = analyst.get("/v1/notifications", params={"user_id": history.alice})
    assert alert_ids(listed.json()) == [history.bobs.alert_id]
    assert one.status_code == 200
    assert acknowledged.status_code == 403
    deliveries = {d["channel"]: d["destination"] for d in notes.json()["items"][1]["deliveries"]}
    assert deliveries == {"email": "a***@example.com", "push": "***cdef"}


def test_notifications_are_listed_with_their_deliveries(api: ApiServer, history: History) -> None:
    with api.as_user(history.alice) as client:
        body = client.get("/v1/notifications").json()
        critical = client.get("/v1/notifications", params={"priority": "CRITICAL"}).json()
        aapl = client.get("/v1/notifications", params={"symbol": "AAPL"}).json()
        paged = client.get("/v1/notifications", params={"limit": 1}).json()
        rest = client.get("/v1/notifications", params={"cursor": paged["next_cursor"]}).json()
    ids = [item["notification"]["notification_id"] for item in body["items"]]
    assert ids == [history.critical.notification_id, history.note.notification_id]
    note = body["items"][1]
    assert note["notification"] == history.note.model_dump(mode="json")
    assert {(d["channel"], d["status"], d["destination"]) for d in note["deliveries"]} == {
        ("email", "DELIVERED", "alice@example.com"),
        ("push", "PENDING", "tok-abcdef"),
    }
    assert [i["notification"]["notification_id"] for i in critical["items"]] == ids[:1]
    assert [i["notification"]["notification_id"] for i in aapl["items"]] == ids[1:]
    assert [i["notification"]["notification_id"] for i in paged["items"] + rest["items"]] == ids
    with api.as_user(history.bob) as client:
        assert client.get("/v1/notifications").json()["items"] == []
        foreign = client.get("/v1/notifications", params={"user_id": history.alice})
    assert foreign.status_code == 403 and "alice@example.com" not in foreign.text


def test_alert_routes_need_credentials_and_scopes(api: ApiServer, history: History) -> None:
    some = history.alerts[0].alert_id
    with api.client() as anonymous:
        assert anonymous.get("/v1/alerts").status_code == 401
        assert anonymous.get(f"/v1/alerts/{some}").status_code == 401
        assert anonymous.post(f"/v1/alerts/{some}/acknowledge").status_code == 401
        assert anonymous.get("/v1/notifications").status_code == 401
    from tests.api.test_profile import api_key

    with api.client(api_key(api, history.alice, ["alerts:read"])) as reader:
        assert reader.get("/v1/alerts").status_code == 200
        refused = reader.post(f"/v1/alerts/{some}/acknowledge")
        assert refused.status_code == 403
    with api.client(api_key(api, history.alice, ["profile:read"])) as other:
        assert other.get("/v1/alerts").status_code == 403
        assert other.get("/v1/notifications").status_code == 403
    with api.as_user(history.alice) as client:
        assert client.get(f"/v1/alerts/{some}").json()["acknowledged_at"] is None
