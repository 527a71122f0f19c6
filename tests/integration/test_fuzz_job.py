"""Fuzz through the whole job: hostile records on all six input topics, on the real stack.

The unit fuzz (tests/unit/test_parsing_fuzz.py) drives parsing and the domain classes; this
one sends a corpus drawn from the same strategies through Kafka into the running job, with its
PostgreSQL, Redis and delivery sinks, next to a rule and ticks that must still alert. The job
must end normally, dead-letter exactly what parsing refuses, and alert as if nothing happened.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.cli.commands import INPUT_MODELS
from pipeline.config import Settings, Topics
from pipeline.dataflow import run
from pipeline.ids import alert_id
from pipeline.parsing import parse_record
from sinks.kafka import CheckedProducer, OutgoingRecord
from tests.conftest import PUSH_OLD_ALERTS, fresh_database, job_settings
from tests.integration.test_end_to_end import T0, rule, tick
from tests.unit.test_parsing_fuzz import Record, arbitrary_records, hostile_records

pytestmark = pytest.mark.integration

CORPUS = st.lists(st.one_of(arbitrary_records(), hostile_records()), min_size=400, max_size=400)


@settings(
    max_examples=1,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.generate],  # one corpus, one run of the job: no shrinking
    suppress_health_check=list(HealthCheck),
)
@given(corpus=CORPUS)
def test_hostile_records_on_every_topic_are_dead_letters_and_the_job_goes_on(
    stack: StackUrls, corpus: list[Record]
) -> None:
    with fresh_database(stack, "fuzz_job") as database_url:
        settings = job_settings(
            stack,
            database_url,
            engine={"shard_count": 4, "user_shard_count": 2, "epoch_ms": 50},
            personalization=PUSH_OLD_ALERTS,
        )
        check(settings, corpus)


def check(settings: Settings, corpus: list[Record]) -> None:
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:6]}"
    defaults = Topics()  # the corpus is drawn on the default topic names
    to_ours = {getattr(defaults, name): getattr(t, name) for name in INPUT_MODELS}
    records = [OutgoingRecord(to_ours[r.topic], r.key, r.value, partition=0) for r in corpus]
    refused = sum(parse_record(r, defaults).dead_letter is not None for r in corpus)
    producer = CheckedProducer(settings.require_servers()[0])
    good = rule("r-still", user, "GOOD", {"type": "price_crosses_above", "threshold": 100})
    producer.write_batch(
        [OutgoingRecord(t.rules, b"r-still", json.dumps(good).encode(), 0)]
        + records
        + [
            OutgoingRecord(t.ticks, b"GOOD", json.dumps(tick("GOOD", price, i)).encode(), 0)
            for i, price in enumerate([99, 101])
        ]
    )
    producer.close()

    run(settings, bounded=True)

    bootstrap = settings.require_servers()[0]
    assert len(commands.read_topic(bootstrap, t.dlq)) == refused
    assert refused > len(corpus) // 2  # the corpus is mostly hostile
    triggered = {
        json.loads(r.value)["alert_id"] for r in commands.read_topic(bootstrap, t.triggered)
    }
    expected = alert_id("r-still", 1, T0 + timedelta(seconds=1), "GOOD")
    assert expected in triggered
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM triggered_alerts WHERE external_id = %s", (expected,)
        ).fetchone()[0]
    assert stored == 1
