"""Stopping the job: SIGTERM and Ctrl-C through the real command line, and a lost peer process.

SIGTERM (and SIGINT) must stop reading, give a delivery under way the shutdown grace, release
its claim when the provider is slower than that, exit 0 (130 for SIGINT) with one log line, and
leave a snapshot from which the next start resumes at once: nothing read twice, nothing lost,
no outbox row left SENDING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls, free_ports
from pipeline.cli import commands
from pipeline.config import Settings
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.redis_store import InAppFeed
from tests.conftest import WEBHOOK_SECRET_REF, job_settings, wait_for
from tests.fakes.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.integration


def start_cli(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run"],
        env={**os.environ, "PYTHONPATH": os.getcwd(), **settings.as_environment()},
        stderr=subprocess.PIPE,
        text=True,
    )


def webhook_rows(database_url: str, user: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.status FROM delivery_logs d JOIN consolidated_alerts c "
            "ON c.id = d.notification_id WHERE c.user_external_id = %s AND d.channel = 'webhook'",
            (user,),
        ).fetchall()
    return sorted(status for (status,) in rows)


def produce(settings: Settings, topic: str, key: str, values: list[dict[str, Any]]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch(
        [OutgoingRecord(topic, key.encode(), json.dumps(v).encode()) for v in values]
    )
    producer.close()


def ticks(prices: list[float]) -> list[dict[str, Any]]:
    start = datetime.now(UTC) - timedelta(seconds=len(prices))
    return [
        {"v": 1, "symbol": "NVDA", "price": p, "ts": (start + timedelta(seconds=i)).isoformat()}
        for i, p in enumerate(prices)
    ]


def test_sigterm_and_ctrl_c_stop_cleanly_and_the_next_start_resumes_at_once(
    stack: StackUrls, database_url: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    settings = job_settings(
        stack,
        database_url,
        engine={"shard_count": 4, "user_shard_count": 2, "shutdown_grace_seconds": 1},
        recovery={"directory": str(tmp_path / "recovery"), "snapshot_seconds": 0.5},
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "threads_per_channel": 1,  # the second notification waits behind the held one
            "timeout_seconds": 30,
        },
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:8]}"
    rule = {
        "v": 1, "id": "r-cross", "user_id": user, "name": "NVDA over 100", "symbol": "NVDA",
        "priority": "CRITICAL", "cooldown_seconds": 0,
        "conditions": {"type": "price_crosses_above", "threshold": 100},
    }  # fmt: skip
    profile = {
        "v": 1, "user_id": user, "channels": {"CRITICAL": ["in_app", "webhook"]},
        "destinations": {"webhook": {"url": receiver.url, "secret_ref": WEBHOOK_SECRET_REF}},
    }  # fmt: skip
    produce(settings, t.rules, "r-cross", [rule])
    produce(settings, t.profiles, user, [profile])
    produce(settings, t.ticks, "NVDA", ticks([99, 101, 99, 101]))  # two CRITICAL alerts
    receiver.reply_with(Reply(hang=20))  # the provider holds the first webhook past the grace

    job = start_cli(settings)
    wait_for(
        lambda: (
            len(receiver.received) == 1
            and webhook_rows(database_url, user) == ["PENDING", "SENDING"]
        ),
        60,
        "one webhook held by the provider, one waiting",
    )
    stopped_at = time.monotonic()
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    assert time.monotonic() - stopped_at < 10
    assert stderr.count("stopped on SIGTERM") == 1
    # The held call's claim was released (not left SENDING for the lease to lapse).
    assert webhook_rows(database_url, user) == ["PENDING", "RETRYING"]

    restarted = start_cli(settings)
    wait_for(
        lambda: webhook_rows(database_url, user) == ["DELIVERED", "DELIVERED"],
        30,
        "both webhooks delivered after the restart, without waiting for the 120 s lease",
    )
    produce(settings, t.ticks, "NVDA", ticks([99, 101]))  # the resumed job still evaluates
    wait_for(lambda: len(webhook_rows(database_url, user)) == 3, 30, "a third notification")
    restarted.send_signal(signal.SIGINT)
    _, stderr = restarted.communicate(timeout=30)
    assert restarted.returncode == 130, stderr
    assert stderr.count("stopped on SIGINT") == 1

    alerts = commands.read_topic(settings.require_servers()[0], t.triggered)
    assert len(alerts) == 3  # the restart read nothing twice: it resumed at the snapshot
    assert len(InAppFeed(settings.redis_url).entries(user)) == 3
    with psycopg.connect(database_url) as conn:
        (sending,) = conn.execute(
            "SELECT count(*) FROM delivery_logs WHERE status = 'SENDING'"
        ).fetchone()
    assert sending == 0


def test_a_lost_peer_process_stops_the_other_with_one_line(
    stack: StackUrls, database_url: str
) -> None:
    settings = job_settings(stack, database_url, engine={"shard_count": 4, "user_shard_count": 2})
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    children = []
    for index in range(2):
        engine = settings.engine.model_copy(update={"process_id": index, "addresses": addresses})
        children.append(start_cli(settings.model_copy(update={"engine": engine})))
    time.sleep(4)  # both running and connected
    assert [child.poll() for child in children] == [None, None]
    children[1].send_signal(signal.SIGKILL)
    _, stderr = children[0].communicate(timeout=30)
    children[1].wait(10)
    assert children[0].returncode == 3
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("smart-alerts: stopped: lost contact with another process")
    assert "Traceback" not in stderr
