"""A user's and a rule's newest alerts on a million-row triggered_alerts go through indexes (no
sequential scan), through the table and through v_alerts (issue 15 point 2)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration

ALERTS = 1_000_000
RULES = 10_000
USERS = 5_000

FILL = f"""
SET synchronous_commit = off;
INSERT INTO alert_rules (id, external_id, user_id, user_external_id, version, name)
SELECT md5('rule' || i)::uuid, 'r-' || i, md5('user' || (i % {USERS}))::uuid,
       'u-' || (i % {USERS}), 1, 'rule ' || i
FROM generate_series(0, {RULES - 1}) AS i;
INSERT INTO triggered_alerts (id, external_id, rule_id, rule_version, user_id, user_external_id,
                              symbol, priority, title, message, triggered_at, condition_types)
SELECT md5('alert' || g)::uuid, 'a-' || g, md5('rule' || (g % {RULES}))::uuid, 1,
       md5('user' || (g % {RULES} % {USERS}))::uuid, 'u-' || (g % {RULES} % {USERS}),
       (ARRAY['AAPL', 'MSFT', 'NVDA', 'SPY'])[1 + g % 4], 'MEDIUM', 'title', 'message',
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', ARRAY['price_above']
FROM generate_series(1, {ALERTS}) AS g
ORDER BY 1;  -- in key order, the primary key's index grows at its end
ANALYZE alert_rules;
"""


# The secondary indexes of the migrations, as they define them: dropped for the bulk load and
# built again from the same definitions afterwards (a sorted build is many times faster than
# a million single inserts into each).
SECONDARY_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename = 'triggered_alerts'
  AND indexname NOT IN (SELECT conname FROM pg_constraint
                        WHERE conrelid = 'triggered_alerts'::regclass)
"""


@pytest.fixture(scope="module")
def filled(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        indexes = conn.execute(SECONDARY_INDEXES).fetchall()
        assert len(indexes) >= 5
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')  # type: ignore[call-overload]
        conn.execute(FILL.encode())  # several statements: the simple protocol
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            # A partitioned table's index reads "ON ONLY" (its parent alone): build it on the
            # partitions too, as the migration did.
            conn.execute(definition.replace(" ON ONLY ", " ON "))  # type: ignore[call-overload]
        conn.execute("ANALYZE triggered_alerts")
    yield database_url


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _explain(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", args).fetchone()  # type: ignore[call-overload]
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return list(_plan_nodes(document[0]["Plan"]))


QUERIES = {
    "a user's newest, as the API reads them": (
        "SELECT * FROM triggered_alerts WHERE user_id = %s"
        " ORDER BY triggered_at DESC, id DESC LIMIT 100",
        lambda: _md5_uuid("user42"),
    ),
    "a user's newest through v_alerts, by wire id": (
        "SELECT * FROM v_alerts WHERE user_external_id = %s ORDER BY triggered_at DESC LIMIT 100",
        lambda: "u-42",
    ),
    "a rule's newest": (
        "SELECT * FROM v_alerts WHERE rule_id = %s ORDER BY triggered_at DESC LIMIT 100",
        lambda: _md5_uuid("rule42"),
    ),
}


def _md5_uuid(text: str) -> str:
    """md5(text)::uuid, as FILL makes the ids."""
    return str(uuid.UUID(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()))


@pytest.mark.parametrize("question", sorted(QUERIES))
def test_newest_alerts_use_no_sequential_scan(filled: str, question: str) -> None:
    sql, arg = QUERIES[question]
    nodes = _explain(filled, sql, arg())
    scans = [n["Node Type"] for n in nodes if "Scan" in n["Node Type"]]
    assert scans and "Seq Scan" not in scans, (question, scans)
    with psycopg.connect(filled) as conn:
        rows = conn.execute(sql, (arg(),)).fetchall()  # type: ignore[call-overload]
    assert len(rows) == 100
