"""Month partitions of the history tables (sql/014): ``smart-alerts maintain``.

Each partitioned table has one partition per UTC calendar month (``<table>_pYYYY_MM``) and a
DEFAULT partition (``<table>_default``) that takes any row no month partition covers, so the
job never fails a write for a missing month. A run, for each table:

1. creates the partitions of the current month and of ``premake_months`` months after it, and
   of every month that has rows in the default partition and is not expired (those rows move
   into it: ``history_partition_month`` in sql/014);
2. drops the month partitions that are expired: older than the current month minus the table's
   retention in months (``[retention]``);
3. deletes expired rows from the default partition.

Idempotent: a second run finds everything done and changes nothing. Runs are serialized by a
session advisory lock, so two at once (a cron job and a manual run, two CronJob pods) are safe:
the second waits, then has nothing to do. Each partition is created or dropped in a short
transaction of its own, and no lock is waited for longer than ``lock_timeout_seconds`` (a
waiting ACCESS EXCLUSIVE lock would stall the job's writes behind it): on a timeout the run
stops with the error, and the next run does what is left.

It must run as the owner of the tables (the role that runs ``migrate``): creating and
attaching partitions needs it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import psycopg
from psycopg import sql

# Table -> its partition key (sql/014).
PARTITIONED: dict[str, str] = {
    "triggered_alerts": "triggered_at",
    "delivery_logs": "window_start",
    "alert_feedback": "ts",
}
MONTH_SUFFIX = re.compile(r"_p(?P<year>\d{4})_(?P<month>\d{2})$")
# pg_advisory_lock key of "partition maintenance in this database": the first 8 bytes of
# sha256 of a name of its own (not the migrations' key: a migration may run meanwhile).
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"vs9-smart-alerts:partition_maintenance").digest()[:8], "big", signed=True
)


@dataclass(frozen=True)
class Policy:
    """Whole months kept before the current month, per table; months made ahead."""

    keep_months: dict[str, int]
    premake_months: int = 2
    lock_timeout_seconds: float = 10.0


@dataclass
class Report:
    """What a run did: partitions created and dropped, expired rows deleted from defaults."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.dropped or any(self.deleted.values()))


def month_start(at: datetime | date) -> date:
    """The first day of the UTC month of ``at``."""
    if isinstance(at, datetime):
        at = at.astimezone(UTC).date()
    return at.replace(day=1)


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_p{month:%Y_%m}"


def maintain(
    database_url: str,
    policy: Policy,
    *,
    now: datetime | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Create, drop and clean partitions as the module docstring says; ``now`` (aware) fixes
    the current month (default: the wall clock)."""
    current = month_start(now or datetime.now(UTC))
    report = Report()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false)",
            (f"{round(policy.lock_timeout_seconds * 1000)}ms",),
        )
        _lock(conn, log)
        try:
            for table, key in PARTITIONED.items():
                keep = policy.keep_months[table]
                cutoff = add_months(current, -keep)
                wanted = {add_months(current, n) for n in range(policy.premake_months + 1)}
                wanted |= _months_in_default(conn, table, key, cutoff)
                for month in sorted(wanted):
                    if _create(conn, table, month):
                        report.created.append(partition_name(table, month))
                        log(f"created {partition_name(table, month)}")
                for name in sorted(_expired(conn, table, cutoff)):
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    report.dropped.append(name)
                    log(f"dropped {name} (older than {cutoff:%Y-%m}, {keep} months kept)")
                deleted = _delete_expired(conn, table, key, cutoff)
                report.deleted[table] = deleted
                if deleted:
                    log(f"deleted {deleted} rows older than {cutoff:%Y-%m} from {table}_default")
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    if not report.changed:
        log("partitions are up to date")
    return report


def partitions(database_url: str, table: str) -> list[str]:
    """The partitions of ``table``, by name."""
    with psycopg.connect(database_url) as conn:
        return sorted(_partitions(conn, table))


def _lock(conn: psycopg.Connection, log: Callable[[str], None]) -> None:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    if row is not None and row[0]:
        return
    log("another partition maintenance of this database is running; waiting for it to finish")
    # The lock_timeout does not bound an advisory lock wait; the other run's own does.
    conn.execute("SET lock_timeout = 0")
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    finally:
        conn.execute("RESET lock_timeout")


def _partitions(conn: psycopg.Connection, table: str) -> Iterable[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (table,),
    ).fetchall()
    return [str(name) for (name,) in rows]


def _months_in_default(conn: psycopg.Connection, table: str, key: str, cutoff: date) -> set[date]:
    query = sql.SQL(
        "SELECT DISTINCT date_trunc('month', {key} AT TIME ZONE 'UTC')::date FROM {default}"
        " WHERE {key} >= %s"
    ).format(key=sql.Identifier(key), default=sql.Identifier(f"{table}_default"))
    rows = conn.execute(query, (datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC),)).fetchall()
    return {row[0] for row in rows}


def _create(conn: psycopg.Connection, table: str, month: date) -> bool:
    with conn.transaction():
        row = conn.execute("SELECT history_partition_month(%s, %s)", (table, month)).fetchone()
    return bool(row and row[0])


def _expired(conn: psycopg.Connection, table: str, cutoff: date) -> list[str]:
    expired = []
    for name in _partitions(conn, table):
        match = MONTH_SUFFIX.search(name)
        if match is None or not name.startswith(f"{table}_p"):
            continue
        if date(int(match["year"]), int(match["month"]), 1) < cutoff:
            expired.append(name)
    return expired


def _delete_expired(conn: psycopg.Connection, table: str, key: str, cutoff: date) -> int:
    query = sql.SQL("DELETE FROM {default} WHERE {key} < %s").format(
        default=sql.Identifier(f"{table}_default"), key=sql.Identifier(key)
    )
    cursor = conn.execute(query, (datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC),))
    return cursor.rowcount


__all__ = ["PARTITIONED", "Policy", "Report", "add_months", "maintain", "month_start", "partitions"]
