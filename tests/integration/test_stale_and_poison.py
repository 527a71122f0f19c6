"""Nothing stale pushed, and no item stops the job, on the real embedded stack.

A replay of January 2023 ticks into the job: the alerts and notifications are stored and shown
in the in-app feed, but no e-mail and no webhook goes out; each push delivery is recorded STALE
with its reason. And an item that makes a stateful step raise becomes a dead letter while
everything else flows (``engine.on_item_error = "stop"`` stops the job instead).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from connectors.mail_catcher import MailCatcher
from pipeline.cli import commands
from pipeline.cli.main import cause_in_chain
from pipeline.config import Settings
from pipeline.dataflow import run
from pipeline.evaluate.engine import ShardEngine
from pipeline.messages import Tick
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.redis_store import InAppFeed
from tests.conftest import WEBHOOK_SECRET_REF, job_settings
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailCatcher]:
    with MailCatcher(tmp_path / "mail") as catcher:
        yield catcher


def send(settings: Settings, topic: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch(
        [OutgoingRecord(topic, key.encode(), json.dumps(v).encode()) for key, v in rows]
    )
    producer.close()


def crossings(symbol: str, start: datetime, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Ticks crossing 100 upwards ``count`` times, a minute apart."""
    ticks = []
    for i in range(count):
        for offset, price in ((0, 99.0), (1, 101.0)):
            ts = start + timedelta(minutes=i, seconds=offset)
            ticks.append((symbol, {"v": 1, "symbol": symbol, "price": price, "ts": ts.isoformat()}))
    return ticks


def rule(rule_id: str, user: str, symbol: str, priority: str) -> dict[str, Any]:
    return {
        "v": 1, "id": rule_id, "user_id": user, "name": rule_id, "symbol": symbol,
        "priority": priority, "cooldown_seconds": 0,
        "conditions": {"type": "price_crosses_above", "threshold": 100},
    }  # fmt: skip


def test_a_replay_of_old_ticks_pushes_nothing_and_shows_everything_in_app(
    stack: StackUrls,
    database_url: str,
    receiver: WebhookReceiver,
    mailbox: MailCatcher,
) -> None:
    settings = job_settings(
        stack,
        database_url,
        engine={"shard_count": 4, "user_shard_count": 2, "epoch_ms": 50},
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "email_provider": "smtp",
            "email_from": "alerts@vs9.example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": mailbox.port,
            "smtp_security": "none",
        },
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:8]}"
    send(settings, t.rules, [(r["id"], r) for r in (
        rule("r-high", user, "AAPL", "HIGH"), rule("r-crit", user, "TSLA", "CRITICAL"),
    )])  # fmt: skip
    pushes = ["in_app", "email", "webhook"]
    send(settings, t.profiles, [(user, {
        "v": 1, "user_id": user, "channels": {"HIGH": pushes, "CRITICAL": ["email", "webhook"]},
        "destinations": {
            "email": "trader@example.org",
            "webhook": {"url": receiver.url, "secret_ref": WEBHOOK_SECRET_REF},
        },
    })])  # fmt: skip
    january_2023 = datetime(2023, 1, 9, 15, 0, tzinfo=UTC)
    send(settings, t.ticks, crossings("AAPL", january_2023, 3) + crossings("TSLA", january_2023, 2))

    run(settings, bounded=True)

    assert receiver.received == [] and mailbox.messages == []
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT c.external_id, d.channel, d.status, d.error_message FROM delivery_logs d "
            "JOIN consolidated_alerts c ON c.id = d.notification_id "
            "WHERE c.user_external_id = %s",
            (user,),
        ).fetchall()
        notifications = conn.execute(
            "SELECT count(*) FROM consolidated_alerts WHERE user_external_id = %s", (user,)
        ).fetchone()[0]
    assert notifications >= 3  # the AAPL windows and the two CRITICAL ones
    by_channel: dict[str, set[str]] = {}
    for _, channel, status, error in rows:
        by_channel.setdefault(channel, set()).add(status)
        if status == "STALE":
            assert error.startswith("not pushed: ") and "days old" in error
    assert by_channel == {"in_app": {"DELIVERED"}, "email": {"STALE"}, "webhook": {"STALE"}}
    # Shown in-app even where the profile lists no in-app channel (the CRITICAL ones).
    assert len(InAppFeed(settings.redis_url).entries(user)) == notifications


def test_an_item_a_step_cannot_process_is_a_dead_letter_and_the_rest_flows(
    stack: StackUrls, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = job_settings(
        stack, database_url, engine={"shard_count": 4, "user_shard_count": 2, "epoch_ms": 50}
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:8]}"
    on_tick = ShardEngine.on_tick

    def trips_on_boom(self: ShardEngine, tick: Tick) -> list[Any]:
        if tick.symbol == "BOOM" and tick.price == 101:
            raise ZeroDivisionError("an unforeseen case")
        return on_tick(self, tick)

    monkeypatch.setattr(ShardEngine, "on_tick", trips_on_boom)
    send(settings, t.rules, [(r["id"], r) for r in (
        rule("r-boom", user, "BOOM", "MEDIUM"), rule("r-fine", user, "FINE", "MEDIUM"),
    )])  # fmt: skip
    start = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    send(settings, t.ticks, crossings("BOOM", start, 2) + crossings("FINE", start, 2))

    run(settings, bounded=True)

    letters = [
        json.loads(r.value) for r in commands.read_topic(stack.kafka_bootstrap, t.dlq) if r.value
    ]
    assert len(letters) == 2  # each BOOM tick at 101
    for letter in letters:
        assert letter["source_topic"] == t.ticks and letter["key"] == "BOOM"
        assert (letter["partition"], letter["offset"]) == (-1, -1)
        assert letter["error"] == "evaluate: ZeroDivisionError: an unforeseen case"
        assert Tick.model_validate_json(letter["value"]).price == 101
    alerts = [
        json.loads(r.value)["rule_id"]
        for r in commands.read_topic(stack.kafka_bootstrap, t.triggered)
        if r.value
    ]
    assert alerts == ["r-fine", "r-fine"]

    stopping = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"on_item_error": "stop"})}
    )
    with pytest.raises(BaseException) as raised:
        run(stopping, bounded=True)
    assert cause_in_chain(raised.value, (ZeroDivisionError,)) is not None
