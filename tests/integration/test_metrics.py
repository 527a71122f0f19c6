"""The metrics page of a live job after a small run: every metric of the contract
(docs/operations.md, "Health and metrics") with sane values, and ``promtool check metrics``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.embedded import StackUrls
from sinks.kafka import CheckedProducer, OutgoingRecord
from tests.conftest import WEBHOOK_SECRET_REF, job_settings, wait_for
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.integration.ops_job import OpsJob, ops_job

pytestmark = pytest.mark.integration

PROMTOOL = "/usr/bin/promtool"
CONTRACT = {  # name on the page (counters with _total) -> type
    "smart_alerts_build_info": "gauge",
    "smart_alerts_input_messages": "counter",
    "smart_alerts_consumer_lag": "gauge",
    "smart_alerts_event_time_lag_seconds": "gauge",
    "smart_alerts_alerts_triggered": "counter",
    "smart_alerts_notifications": "counter",
    "smart_alerts_dead_letters": "counter",
    "smart_alerts_tick_to_alert_seconds": "histogram",
    "smart_alerts_outbox_depth": "gauge",
    "smart_alerts_circuit_breaker_open": "gauge",
    "smart_alerts_delivery_attempts": "counter",
    "smart_alerts_delivery_seconds": "histogram",
    "smart_alerts_recovery_snapshot_age_seconds": "gauge",
    "smart_alerts_ready": "gauge",
}


def samples(page: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(page: str, name: str, **labels: str) -> float:
    found = [v for lab, v in samples(page).get(name, []) if labels.items() <= lab.items()]
    return sum(found)


def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = CheckedProducer(bootstrap)
    producer.write_batch([OutgoingRecord(topic, key, val) for topic, key, val in records])
    producer.close()


def page_of(job: OpsJob) -> str:
    status, page = job.get("/metrics")
    return page if status == 200 else ""


def test_the_metrics_page_after_a_small_run_carries_every_metric_of_the_contract(
    stack: StackUrls, database_url: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.reply_with(*[Reply(status=503)] * 5)  # the receiver fails: retries, open circuit
    settings = job_settings(
        stack,
        database_url,
        engine={
            "shard_count": 2,
            "user_shard_count": 1,
            "window_seconds": 1,
            "allowed_lateness_seconds": 1,
        },
        recovery={"directory": str(tmp_path / "recovery"), "snapshot_seconds": 1},
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "breaker_failures": 1,
            "resume_seconds": 1,
        },
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:8]}"
    rule = {
        "v": 1, "id": f"r-{user}", "user_id": user, "name": "NVDA over 100", "symbol": "NVDA",
        "priority": "CRITICAL", "cooldown_seconds": 0,
        "conditions": {"type": "price_crosses_above", "threshold": 100},
    }  # fmt: skip
    profile = {
        "v": 1, "user_id": user, "channels": {"CRITICAL": ["in_app", "webhook"]},
        "destinations": {
            "webhook": {"url": receiver.url, "secret_ref": WEBHOOK_SECRET_REF}
        },
    }  # fmt: skip
    now = datetime.now(UTC)

    def tick(price: float, seconds_ago: float) -> bytes:
        ts = (now - timedelta(seconds=seconds_ago)).isoformat()
        return json.dumps({"v": 1, "symbol": "NVDA", "price": price, "ts": ts}).encode()

    bootstrap = settings.require_servers()[0]
    produce(
        bootstrap,
        [
            (t.rules, rule["id"].encode(), json.dumps(rule).encode()),
            (t.profiles, user.encode(), json.dumps(profile).encode()),
        ],
    )
    with ops_job(settings) as job:
        wait_for(lambda: job.get("/readyz")[0] == 200, 60, "the job to be ready")
        produce(
            bootstrap,
            [
                (t.ticks, b"NVDA", tick(99, 2)),
                (t.ticks, b"NVDA", b"{not json"),
                (t.ticks, b"NVDA", tick(101, 1)),
            ],
        )

        def settled() -> bool:
            page = page_of(job)
            return (
                value(page, "smart_alerts_tick_to_alert_seconds_count") >= 1
                and value(page, "smart_alerts_notifications_total") >= 1
                and value(page, "smart_alerts_circuit_breaker_open", channel="webhook") == 1
                and value(page, "smart_alerts_outbox_depth", channel="webhook") >= 1
                and value(page, "smart_alerts_consumer_lag", topic=t.ticks) == 0
                and value(page, "smart_alerts_input_messages_total", topic=t.ticks) == 3
            )

        try:
            wait_for(settled, 60, "the alert, its notification, the open circuit and no lag")
        finally:
            page = page_of(job)
            print(page)  # in the report when the wait fails

    found = {family.name: family.type for family in text_string_to_metric_families(page)}
    assert {name: found.get(name) for name in CONTRACT} == CONTRACT
    assert "_created" not in page

    assert value(page, "smart_alerts_ready") == 1
    (build,) = samples(page)["smart_alerts_build_info"]
    assert build[1] == 1 and build[0]["version"] and build[0]["bytewax"] == "0.21.1"
    assert value(page, "smart_alerts_input_messages_total", topic=t.ticks, outcome="ok") == 2
    lags = samples(page)["smart_alerts_consumer_lag"]
    assert {lab["topic"] for lab, _ in lags} >= {t.ticks, t.rules, t.profiles, t.positions}
    assert all(v == 0 for _, v in lags)  # every partition read to its end
    stages = {lab["stage"]: v for lab, v in samples(page)["smart_alerts_event_time_lag_seconds"]}
    assert set(stages) == {"ingest", "evaluate", "personalize"}
    assert 0 < stages["ingest"] < 120 and 0 < stages["evaluate"] < 120
    assert value(page, "smart_alerts_alerts_triggered_total", priority="CRITICAL") == 1
    assert value(page, "smart_alerts_notifications_total", priority="CRITICAL") >= 1
    assert value(page, "smart_alerts_dead_letters_total", topic=t.ticks, reason="not_json") == 1
    assert value(page, "smart_alerts_dead_letters_total") == 1
    sent_to_alert = value(
        page, "smart_alerts_tick_to_alert_seconds_sum", priority="CRITICAL"
    ) / value(page, "smart_alerts_tick_to_alert_seconds_count", priority="CRITICAL")
    assert 0 < sent_to_alert < 60
    depth = {
        lab["status"]: v
        for lab, v in samples(page)["smart_alerts_outbox_depth"]
        if lab["channel"] == "webhook"
    }
    assert set(depth) == {"PENDING", "SENDING", "RETRYING"} and sum(depth.values()) >= 1
    assert value(page, "smart_alerts_delivery_attempts_total", channel="webhook") >= 1
    assert value(page, "smart_alerts_delivery_seconds_count", channel="webhook") >= 1
    assert 0 <= value(page, "smart_alerts_recovery_snapshot_age_seconds") < 30

    promtool_checks(page)


def promtool_checks(page: str) -> None:
    if not os.access(PROMTOOL, os.X_OK):
        if os.geteuid() != 0:
            pytest.skip(f"{PROMTOOL} missing and not root: `make` installs Debian's prometheus")
        pytest.fail(f"{PROMTOOL} missing: the Makefile's set-up installs it (run as root)")
    assert shutil.which(PROMTOOL)
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dead_letter_reasons_are_a_small_fixed_set() -> None:
    from pipeline.metrics import DEAD_LETTER_REASONS, dead_letter_reason

    examples: dict[str, Any] = {
        "not JSON: expected value at line 1 column 1": "not_json",
        "not UTF-8: invalid start byte at byte 0": "not_json",
        "expected a JSON object, got an array": "not_json",
        "message of 2000000 bytes exceeds 1048576": "too_large",
        "invalid Tick: price: Field required": "invalid_message",
        "a rules record needs its key: the rule id": "bad_key",
        "message key 'x' does not match its rule id 'y'": "bad_key",
        "tombstone without a key (expected the rule id)": "bad_key",
        "evaluate: ZeroDivisionError: division by zero": "step_error",
        "personalize: user u-1: KeyError: 'x'": "step_error",
    }
    assert {error: dead_letter_reason(error) for error in examples} == examples
    assert set(examples.values()) == set(DEAD_LETTER_REASONS)
