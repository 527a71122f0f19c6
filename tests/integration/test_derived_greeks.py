"""Option ticks and prints without IV/greeks get them derived in the live job, on the real
embedded broker: rules on IV and greeks fire, and the alerts say the values were derived."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.evaluate.greeks import GreeksConfig, GreeksDeriver
from pipeline.messages import OptionsFlow, Rule, Tick
from sinks.kafka import CheckedProducer
from tests.conftest import job_settings, start_processes, wait_all

pytestmark = pytest.mark.integration

T0 = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
CALL = "AAPL  260731C00200000"
OTHER = "AAPL  260731C00210000"


def rule(rule_id: str, user: str, symbol: str, condition: dict[str, Any]) -> Rule:
    return Rule.model_validate(
        {
            "id": rule_id,
            "user_id": user,
            "name": rule_id,
            "symbol": symbol,
            "cooldown_seconds": 0,
            "conditions": {"all": [condition]},
        }
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_derived_iv_and_greeks_fire_rules_and_are_marked(
    stack: StackUrls, database_url: str, processes: int
) -> None:
    # Two processes: the derived marks travel with the messages to another process's shard.
    user = f"u-greeks-{uuid.uuid4().hex[:8]}"
    settings = job_settings(stack, database_url, engine={"epoch_ms": 50})
    rules = [
        rule("r-iv", user, CALL, {"type": "iv_above", "threshold": 20}),
        rule("r-delta", user, CALL, {"type": "delta_above", "threshold": 0.3}),
        rule("r-feed-iv", user, OTHER, {"type": "iv_above", "threshold": 20}),
        rule("r-sweep", user, "AAPL", {"type": "flow_sweep"}),
    ]
    derived_tick = Tick(symbol=CALL, ts=T0, price=6.0, underlying_price=198.0, underlying="AAPL")
    feed_tick = Tick(symbol=OTHER, ts=T0, price=3.0, underlying_price=198.0, iv=31.5)
    sweep = OptionsFlow(
        id="p-1",
        ts=T0 + timedelta(seconds=1),
        underlying="AAPL",
        contract=CALL,
        right="C",
        strike=200,
        expiry="2026-07-31",
        price=6.1,
        size=200,
        side="ask",
        trade_type="sweep",
        underlying_price=198.2,
    )
    producer = CheckedProducer(stack.kafka_bootstrap)
    commands.publish(producer, settings.topics.rules, rules, echo=lambda _: None)
    commands.publish(
        producer, settings.topics.ticks, [derived_tick, feed_tick], echo=lambda _: None
    )
    commands.publish(producer, settings.topics.options_flow, [sweep], echo=lambda _: None)
    producer.close()

    assert wait_all(start_processes(settings, processes), 180) == [0] * processes

    records = commands.read_topic(stack.kafka_bootstrap, settings.topics.triggered)
    alerts = {a["rule_id"]: a for a in (json.loads(r.value) for r in records if r.value)}
    assert set(alerts) == {"r-iv", "r-delta", "r-feed-iv", "r-sweep"}

    # The same model on the same messages, outside the job: the job used it, in percent.
    expected = GreeksDeriver(GreeksConfig()).derive([("", derived_tick), ("", sweep)])
    tick_out, sweep_out = (message for _, message in expected)
    assert isinstance(tick_out, Tick) and isinstance(sweep_out, OptionsFlow)
    assert 25 < tick_out.iv < 45  # percent, as the feed's `iv`

    iv_values = alerts["r-iv"]["values"]
    assert iv_values["iv"] == pytest.approx(tick_out.iv)
    assert iv_values["iv_source"] == "derived"
    delta_values = alerts["r-delta"]["values"]
    assert delta_values["delta"] == pytest.approx(tick_out.delta)
    assert delta_values["delta_source"] == "derived"
    # The feed's IV is used as sent and not marked.
    assert alerts["r-feed-iv"]["values"]["iv"] == 31.5
    assert "iv_source" not in alerts["r-feed-iv"]["values"]
    sweep_values = alerts["r-sweep"]["values"]
    assert sweep_values["iv"] == pytest.approx(sweep_out.iv)
    assert sweep_values["iv_source"] == "derived"
