"""A backtest over files and the live job over Kafka give the same alerts, ids included."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from connectors.embedded import StackUrls
from connectors.files import read_rows
from pipeline.cli import commands
from pipeline.cli.backtest import run_backtest
from pipeline.config import load_settings
from pipeline.dataflow import run
from pipeline.messages import Rule, Tick
from sinks.kafka import CheckedProducer
from tests.conftest import job_settings

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "cli" / "samples"


def test_backtest_and_live_give_the_same_alert_ids(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    # Users of their own, so this test's feed entries and scores stay out of other tests' way.
    rules = [
        rule | {"user_id": f"{rule['user_id']}-{run_id}"}
        for rule in json.loads((SAMPLES / "rules.json").read_text())
    ]
    rules.append(
        {
            "id": "r-rsi",
            "user_id": f"u-quant-{run_id}",
            "name": "RSI extremes",
            "symbols": ["AAPL", "NVDA", "TSLA"],
            "cooldown_seconds": 0,
            "conditions": {
                "any": [
                    {"type": "rsi_above", "threshold": 65, "period": 5, "timeframe": "1m"},
                    {"type": "rsi_below", "threshold": 35, "period": 5, "timeframe": "1m"},
                ]
            },
        }
    )
    rules_path = tmp_path / "rules.json"
    rules_path.write_text(json.dumps(rules))

    settings = job_settings(
        stack, database_url, partitions={"market": 3, "reference": 2}, engine={"epoch_ms": 50}
    )

    producer = CheckedProducer(stack.kafka_bootstrap)
    commands.publish(producer, settings.topics.rules, [Rule.model_validate(r) for r in rules])
    ticks = [Tick.model_validate(row) for row in read_rows(SAMPLES / "ticks.csv")]
    commands.publish(producer, settings.topics.ticks, ticks, echo=lambda _: None)
    producer.close()

    run(settings, bounded=True)
    live = commands.read_topic(stack.kafka_bootstrap, settings.topics.triggered)
    live_ids = sorted(json.loads(record.value)["alert_id"] for record in live if record.value)

    result = run_backtest(
        load_settings(None), rules=rules_path, ticks=SAMPLES / "ticks.csv", progress=False
    )
    backtest_ids = sorted(alert.alert_id for alert in result.alerts)

    assert len(backtest_ids) > 20
    assert any(alert.rule_id == "r-rsi" for alert in result.alerts)
    assert live_ids == backtest_ids
