"""The inbox page in real headless Chromium: opened with a token, it shows a CRITICAL alert the
job produced from a rule and a tick on the broker, live over the WebSocket without a reload;
the unread badge goes up, and "mark read" brings it down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from pipeline.dataflow import run
from pipeline.messages import Channel, Message, Priority, Rule, Tick, message_key
from sinks.kafka import CheckedProducer, OutgoingRecord
from tests.api.conftest import ApiServer
from tests.conftest import needs_chromium

TIMEOUT = 60

pytestmark = [pytest.mark.integration, needs_chromium]


def produce(api: ApiServer, topic: str, messages: list[Message]) -> None:
    producer = CheckedProducer(api.settings.require_servers()[0])
    try:
        producer.write_batch(
            [OutgoingRecord(topic, message_key(m).encode(), m.to_json()) for m in messages]
        )
    finally:
        producer.close()


def test_a_critical_alert_appears_live_and_mark_read_lowers_the_badge(
    api: ApiServer, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    wait = WebDriverWait(driver, TIMEOUT)
    user = f"u-page-{uuid.uuid4().hex[:8]}"

    def text(element_id: str) -> str:
        return str(driver.find_element(By.ID, element_id).text)

    driver.get(f"{api.url}/inbox#token={api.identity.token(user)}")
    wait.until(lambda _: text("status") == "live")
    assert text("unread-count") == "0"
    assert "token=" not in driver.current_url  # taken out of the address bar and history
    driver.execute_script("window.notReloaded = true")

    topics = api.settings.topics
    produce(
        api,
        topics.rules,
        [
            Rule.model_validate(
                {
                    "id": f"r-{user}",
                    "user_id": user,
                    "name": "TSLA stop",
                    "symbol": "TSLA",
                    "priority": Priority.CRITICAL,
                    "channels": [Channel.IN_APP],
                    "cooldown_seconds": 0,
                    "conditions": {"type": "price_below", "threshold": 395},
                }
            )
        ],
    )
    # Now, not an old fixed date: a CRITICAL alert older than its age limit is not pushed.
    produce(api, topics.ticks, [Tick(symbol="TSLA", ts=datetime.now(UTC), price=390.0)])
    run(api.settings, bounded=True)

    item = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#feed li.item"))[0]
    assert "CRITICAL" in item.text
    assert "TSLA" in item.text
    assert "unread" in str(item.get_attribute("class"))
    wait.until(lambda _: text("unread-count") == "1")
    assert driver.execute_script("return window.notReloaded") is True

    item.find_element(By.CSS_SELECTOR, "button.mark-read").click()
    wait.until(lambda _: text("unread-count") == "0")
    assert "unread" not in str(item.get_attribute("class"))
    notification_id = item.get_attribute("data-id")
    with api.as_user(user) as client:
        items = client.get("/v1/inbox").json()["items"]
        assert client.get("/v1/inbox/unread-count").json() == {"unread": 0}
    assert [(i["notification"]["notification_id"], i["state"]) for i in items] == [
        (notification_id, "read")
    ]
