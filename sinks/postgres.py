"""The PostgreSQL history writer (plain Python: the dataflow wraps it in a sink).

Every write is idempotent, because Bytewax recovery replays output after a crash: rows are keyed
by deterministic ids (``pipeline.ids.storage_uuid`` of the wire ids, see sql/001_initial.sql) and
written with upserts. Each call is one transaction on the writer's single connection.

A server that is down, lost or frozen is waited for (``pipeline.config.Dependencies``): connects
time out after ``connect_timeout_seconds``, the server cancels a statement after
``statement_timeout_seconds``, and a watchdog cuts the connection off when a call has had no
answer for that long plus ``WATCHDOG_MARGIN_S`` (a frozen server accepts TCP but never answers,
so nothing server-side can fire). The whole transaction is then retried on a new connection
(safe for the same reason) with exponential backoff and jitter, for ``retry_for_seconds`` from
the start of the first failed attempt; after that ``DatabaseUnavailableError`` says so in one
line. Any other error (a constraint, a bad statement) is raised at once.

Upserts skip rows whose content is unchanged (``IS DISTINCT FROM`` guards), so a replay neither
bumps ``updated_at`` nor leaves dead tuples behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, time
from time import monotonic, sleep
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from pipeline.config import Dependencies
from pipeline.evaluate.specs import AllOf, AnyOf, ConditionNode
from pipeline.ids import NAMESPACE, storage_uuid
from pipeline.messages import Feedback, Notification, Profile, Rule, TriggeredAlert
from pipeline.personalize.desk import AlertOutcome
from pipeline.personalize.learning import RelevanceScore

log = logging.getLogger("smart_alerts.postgres")

APPLICATION_NAME = "smart-alerts-history"
MAX_ERROR_LENGTH = 4000
# decimal(15, 4): at most 11 digits before the point.
MAX_THRESHOLD = 10**11
PRIORITY_ORDER = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
# The watchdog waits this much longer than statement_timeout, so that a live server's own
# cancellation (a clean error on a connection that stays usable) always comes first.
WATCHDOG_MARGIN_S = 1.0
# Retry delays: base * 2**n seconds, at most the cap, half of it random (equal jitter).
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0

T = TypeVar("T")
# SHA-1 already fed the namespace: each key hashes only its name.
NAMESPACE_SHA1 = hashlib.sha1(NAMESPACE.bytes, usedforsecurity=False)

# ---------------------------------------------------------------- statements

# A batch of rules is copied into a table of the transaction, then upserted by one statement,
# and the conditions of the changed rules are copied in: at start-up the whole compacted topic
# arrives at once (100k rules), and one statement per rule cost about 120 µs a rule. COPY rather
# than array or JSON parameters because psycopg formats COPY rows in C and the server reads
# them with the least work. (A temporary table needs the TEMP privilege on the database, which
# PostgreSQL grants to PUBLIC by default.)
CREATE_RULE_BATCH = """
CREATE TEMP TABLE rule_batch (
    id uuid, external_id text, user_id uuid, user_external_id text, name text, symbol text,
    symbols text[], priority text, is_active boolean, cooldown_minutes int, cooldown_seconds int,
    expires_at timestamptz, version int, mode text, channels text[], conditions jsonb,
    sessions text
) ON COMMIT DROP
"""

COPY_RULE_BATCH = "COPY rule_batch FROM STDIN"

# A rule row is rewritten only when something in it changed (a replay rewrites nothing).
RULE_UPSERT_ON_CONFLICT = """
ON CONFLICT (id) DO UPDATE SET
    external_id = EXCLUDED.external_id, user_id = EXCLUDED.user_id,
    user_external_id = EXCLUDED.user_external_id, name = EXCLUDED.name,
    symbol = EXCLUDED.symbol, symbols = EXCLUDED.symbols, priority = EXCLUDED.priority,
    is_active = EXCLUDED.is_active, cooldown_minutes = EXCLUDED.cooldown_minutes,
    cooldown_seconds = EXCLUDED.cooldown_seconds, expires_at = EXCLUDED.expires_at,
    version = EXCLUDED.version, mode = EXCLUDED.mode, channels = EXCLUDED.channels,
    conditions = EXCLUDED.conditions, sessions = EXCLUDED.sessions, deleted_at = NULL,
    updated_at = now()
WHERE r.deleted_at IS NOT NULL
   OR (r.external_id, r.user_id, r.user_external_id, r.name, r.symbol, r.symbols, r.priority,
       r.is_active, r.cooldown_minutes, r.cooldown_seconds, r.expires_at, r.version, r.mode,
       r.channels, r.conditions, r.sessions)
      IS DISTINCT FROM
      (EXCLUDED.external_id, EXCLUDED.user_id, EXCLUDED.user_external_id, EXCLUDED.name,
       EXCLUDED.symbol, EXCLUDED.symbols, EXCLUDED.priority, EXCLUDED.is_active,
       EXCLUDED.cooldown_minutes, EXCLUDED.cooldown_seconds, EXCLUDED.expires_at,
       EXCLUDED.version, EXCLUDED.mode, EXCLUDED.channels, EXCLUDED.conditions,
       EXCLUDED.sessions)
"""

UPSERT_RULE_BATCH = f"""
INSERT INTO alert_rules AS r (
    id, external_id, user_id, user_external_id, name, symbol, symbols, priority, is_active,
    cooldown_minutes, cooldown_seconds, expires_at, version, mode, channels, conditions,
    sessions)
SELECT * FROM rule_batch ORDER BY id
{RULE_UPSERT_ON_CONFLICT}RETURNING r.external_id
"""

DELETE_CONDITIONS = "DELETE FROM alert_conditions WHERE rule_id = ANY(%s::uuid[])"

COPY_CONDITIONS = """
COPY alert_conditions (
    id, rule_id, position, condition_type, threshold, comparison, time_window_minutes, params)
FROM STDIN
"""

TOMBSTONE_RULES = """
UPDATE alert_rules SET deleted_at = now(), is_active = false, updated_at = now()
WHERE id = ANY(%s) AND deleted_at IS NULL
"""

# An alert may arrive before its rule (another topic, another worker): a placeholder row keeps
# the foreign key; the rule, when it arrives, overwrites it. Never touches an existing rule.
PLACEHOLDER_RULE = """
INSERT INTO alert_rules (id, external_id, user_id, user_external_id, version)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

INSERT_ALERT = """
INSERT INTO triggered_alerts (
    id, external_id, rule_id, rule_version, user_id, user_external_id, symbol, priority,
    title, message, triggered_at, condition_types, "values")
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s)
ON CONFLICT (id, triggered_at) DO NOTHING
RETURNING id
"""

# Only a placeholder row (made by RECORD_DELIVERY for its foreign key) is ever filled in: a
# notification row that was sent never changes (what reaches its window later is a follow-up).
INSERT_NOTIFICATION = """
INSERT INTO consolidated_alerts AS c (
    id, external_id, user_id, user_external_id, alert_ids, consolidated_title,
    consolidated_message, highest_priority, channels, window_start, window_end, follow_up_of)
VALUES (%s, %s, %s, %s, %s::uuid[], %s, %s, %s, %s::text[], %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    external_id = EXCLUDED.external_id, user_id = EXCLUDED.user_id,
    user_external_id = EXCLUDED.user_external_id, alert_ids = EXCLUDED.alert_ids,
    consolidated_title = EXCLUDED.consolidated_title,
    consolidated_message = EXCLUDED.consolidated_message,
    highest_priority = EXCLUDED.highest_priority, channels = EXCLUDED.channels,
    window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
    follow_up_of = EXCLUDED.follow_up_of, updated_at = now()
WHERE c.consolidated_title IS NULL
"""

# The alerts each notification has sent: its own and its follow-ups'. Locks the rows, so two
# writers of one notification decide one after the other.
SENT_ALERTS = """
SELECT c.external_id, c.alert_ids FROM consolidated_alerts c
WHERE c.id = ANY(%s) AND c.consolidated_title IS NOT NULL
ORDER BY c.id
FOR UPDATE
"""

FOLLOW_UP_ALERTS = """
SELECT p.external_id, f.alert_ids
FROM consolidated_alerts f JOIN consolidated_alerts p ON p.id = f.follow_up_of
WHERE f.follow_up_of = ANY(%s)
"""

# A planned delivery: PENDING, or decided already (FAILED with no destination or provider,
# STALE when too old to push). A row recorded before keeps its status.
PLAN_DELIVERY = """
INSERT INTO delivery_logs (id, notification_id, channel, destination, status, secret_ref,
                           error_message, window_start)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (notification_id, channel, destination, window_start) DO NOTHING
"""

DELIVERY_STATUSES = """
SELECT id, status FROM delivery_logs WHERE id = ANY(%s)
"""

UPSERT_PROFILE = """
INSERT INTO user_alert_profiles AS p (
    id, user_id, user_external_id, preferred_channels, quiet_hours_start, quiet_hours_end,
    timezone, channels, digest_seconds, max_per_hour, min_relevance, destinations)
VALUES (%s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (user_id) DO UPDATE SET
    user_external_id = EXCLUDED.user_external_id,
    preferred_channels = EXCLUDED.preferred_channels,
    quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end,
    timezone = EXCLUDED.timezone, channels = EXCLUDED.channels,
    digest_seconds = EXCLUDED.digest_seconds, max_per_hour = EXCLUDED.max_per_hour,
    min_relevance = EXCLUDED.min_relevance, destinations = EXCLUDED.destinations,
    updated_at = now()
WHERE (p.user_external_id, p.preferred_channels, p.quiet_hours_start, p.quiet_hours_end,
       p.timezone, p.channels, p.digest_seconds, p.max_per_hour, p.min_relevance,
       p.destinations)
      IS DISTINCT FROM
      (EXCLUDED.user_external_id, EXCLUDED.preferred_channels, EXCLUDED.quiet_hours_start,
       EXCLUDED.quiet_hours_end, EXCLUDED.timezone, EXCLUDED.channels,
       EXCLUDED.digest_seconds, EXCLUDED.max_per_hour, EXCLUDED.min_relevance,
       EXCLUDED.destinations)
"""

# Two-level merge: {"symbol": {"AAPL": 0.62}} || patch, per dimension and key. The WHERE clause
# skips a patch the row already contains (a replay).
UPSERT_OUTCOME = """
INSERT INTO alert_outcomes AS o (alert_id, alert_external_id, user_id, user_external_id, status,
                                 notification_id, notification_external_id, decided_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (alert_id) DO UPDATE SET
    status = EXCLUDED.status,
    notification_id = EXCLUDED.notification_id,
    notification_external_id = EXCLUDED.notification_external_id,
    decided_at = EXCLUDED.decided_at,
    updated_at = now()
WHERE EXCLUDED.decided_at >= o.decided_at
  AND (o.status, o.notification_id) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.notification_id)
"""

MERGE_RELEVANCE = """
INSERT INTO user_alert_profiles AS p (id, user_id, user_external_id, relevance_scores)
VALUES (%s, %s, %s, %s)
ON CONFLICT (user_id) DO UPDATE SET
    relevance_scores =
        CASE WHEN jsonb_typeof(p.relevance_scores) = 'object'
             THEN p.relevance_scores ELSE '{}'::jsonb END
        || coalesce(
            (SELECT jsonb_object_agg(
                        patch.key,
                        CASE WHEN jsonb_typeof(p.relevance_scores -> patch.key) = 'object'
                             THEN p.relevance_scores -> patch.key ELSE '{}'::jsonb END
                        || patch.value)
             FROM jsonb_each(EXCLUDED.relevance_scores) AS patch),
            '{}'::jsonb),
    user_external_id = coalesce(p.user_external_id, EXCLUDED.user_external_id),
    updated_at = now()
WHERE NOT coalesce(p.relevance_scores @> EXCLUDED.relevance_scores, false)
"""

# Feedback rows, once each (the id is deterministic); what a replay inserts again is nothing,
# and the rows returned name the alerts and users whose status and history may have moved.
INSERT_FEEDBACK = """
INSERT INTO alert_feedback (id, ts, user_id, user_external_id, alert_id, alert_external_id,
                            action, symbol, condition_type)
SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::uuid[], %s::text[], %s::uuid[],
                     %s::text[], %s::text[], %s::text[], %s::text[])
ORDER BY 1
ON CONFLICT (id, ts) DO NOTHING
RETURNING user_id, alert_id
"""

# Row locks on alerts are always taken in id order (feedback, outcomes and deliveries of one
# alert are written by different threads).
LOCK_ALERTS = """
SELECT 1 FROM triggered_alerts WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE
"""

# An alert's status from everything known of it, whichever arrived first (sql/012): the
# outcome is the truth up to rank 2 (a later decision of the same rank replaces the earlier),
# feedback and deliveries move it forward only; acknowledged_at is the first acted feedback's
# ts unless set. Replays compute the same values and write nothing.
SYNC_ALERT_STATUS = """
UPDATE triggered_alerts AS t
SET status = s.status, acknowledged_at = s.acknowledged_at
FROM (
    SELECT a.id, a.triggered_at,
           alert_status_forward(
               alert_status_forward(
                   CASE WHEN o.status IS NOT NULL
                             AND alert_status_rank(coalesce(a.status, 'PENDING')) <= 2
                             AND alert_status_rank(o.status)
                                 >= alert_status_rank(coalesce(a.status, 'PENDING'))
                        THEN o.status ELSE a.status END,
                   f.status),
               d.status) AS status,
           coalesce(a.acknowledged_at, f.acted_at) AS acknowledged_at
    FROM triggered_alerts a
    LEFT JOIN LATERAL (
        SELECT CASE x.status WHEN 'DEFERRED' THEN 'BUDGETED' ELSE x.status END AS status
        FROM alert_outcomes x WHERE x.alert_id = a.id
    ) o ON true
    LEFT JOIN LATERAL (
        SELECT (array_agg(feedback_status(x.action)
                          ORDER BY alert_status_rank(feedback_status(x.action)) DESC)
                FILTER (WHERE feedback_status(x.action) IS NOT NULL))[1] AS status,
               min(x.ts) FILTER (WHERE x.action = 'acted') AS acted_at
        FROM alert_feedback x WHERE x.alert_id = a.id
    ) f ON true
    LEFT JOIN LATERAL (
        SELECT 'DELIVERED'::text AS status
        FROM consolidated_alerts c JOIN delivery_logs l ON l.notification_id = c.id
        WHERE c.alert_ids @> ARRAY[a.id] AND l.status = 'DELIVERED'
        LIMIT 1
    ) d ON true
    WHERE a.id = ANY(%s::uuid[])
) AS s
WHERE t.id = s.id AND t.triggered_at IS NOT DISTINCT FROM s.triggered_at
  AND (t.status, t.acknowledged_at) IS DISTINCT FROM (s.status, s.acknowledged_at)
"""

# action_history rebuilt from the user's stored feedback (so a replay rebuilds the same value).
REBUILD_ACTION_HISTORY = """
INSERT INTO user_alert_profiles AS p (id, user_id, user_external_id, action_history)
SELECT h.user_id, h.user_id, h.user_external_id, h.history
FROM (
    SELECT a.user_id, min(a.user_external_id) AS user_external_id,
           jsonb_object_agg(a.action, jsonb_build_object('count', a.n, 'last_at', a.last_at))
               AS history
    FROM (
        SELECT user_id, min(user_external_id) AS user_external_id, action, count(*) AS n,
               max(ts) AS last_at
        FROM alert_feedback WHERE user_id = ANY(%s::uuid[])
        GROUP BY user_id, action
    ) AS a
    GROUP BY a.user_id
) AS h
ORDER BY h.user_id
ON CONFLICT (user_id) DO UPDATE SET
    action_history = EXCLUDED.action_history,
    user_external_id = coalesce(p.user_external_id, EXCLUDED.user_external_id),
    updated_at = now()
WHERE p.action_history IS DISTINCT FROM EXCLUDED.action_history
"""

INSERT_SCORE_HISTORY = """
INSERT INTO relevance_score_history (user_id, user_external_id, dimension, key, updated_at, score)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (user_id, dimension, key, updated_at) DO NOTHING
"""

# The notification row must exist for the foreign key; the notification itself (written by
# store_notifications, usually just before) fills it in. The row's partition key is the
# notification's window start, the same on every replay (sql/014).
RECORD_DELIVERY = """
WITH placeholder AS (
    INSERT INTO consolidated_alerts (id, external_id, user_id, user_external_id, window_start)
    VALUES (%(notification)s, %(notification_external)s, %(user)s, %(user_external)s,
            %(window_start)s)
    ON CONFLICT DO NOTHING
), recorded AS (
    INSERT INTO delivery_logs (id, notification_id, channel, destination, status, secret_ref,
                               window_start)
    VALUES (%(id)s, %(notification)s, %(channel)s, %(destination)s, 'PENDING', %(secret_ref)s,
            %(window_start)s)
    ON CONFLICT (notification_id, channel, destination, window_start) DO NOTHING
    RETURNING status
)
SELECT status FROM recorded
UNION ALL
SELECT status FROM delivery_logs
WHERE notification_id = %(notification)s AND channel = %(channel)s
  AND destination = %(destination)s
"""

DELIVERY_STATUS = """
SELECT status FROM delivery_logs
WHERE notification_id = %s AND channel = %s AND destination = %s
"""

OPEN_DELIVERIES = """
SELECT c.external_id, c.user_external_id, c.alert_ids, c.consolidated_title,
       c.consolidated_message, c.highest_priority, c.channels, c.window_start, c.window_end,
       (SELECT p.external_id FROM consolidated_alerts p WHERE p.id = c.follow_up_of),
       d.channel, d.destination, d.attempts, d.created_at, d.secret_ref, d.next_attempt_at
FROM delivery_logs d JOIN consolidated_alerts c ON c.id = d.notification_id
WHERE d.channel = ANY(%s) AND c.consolidated_title IS NOT NULL
  AND (d.status IN ('PENDING', 'RETRYING')
       OR (d.status = 'SENDING' AND d.claimed_until < now()))
ORDER BY d.created_at
LIMIT %s
"""

# The open rows by channel and status: the ops page's outbox depth (docs/operations.md).
OUTBOX_DEPTH = """
SELECT channel, status, count(*) FROM delivery_logs
WHERE channel = ANY(%s) AND status IN ('PENDING', 'SENDING', 'RETRYING')
GROUP BY channel, status
"""

# A RETRYING row is claimable from one second before its next_attempt_at: the attempt's own
# timer and PostgreSQL's clock may differ that much, a second worker's early scan may not.
CLAIM_DELIVERY = """
UPDATE delivery_logs SET
    status = 'SENDING', claimed_until = now() + %(lease)s * interval '1 second',
    provider = coalesce(%(provider)s, provider), updated_at = now()
WHERE notification_id = %(notification)s AND channel = %(channel)s
  AND destination = %(destination)s
  AND (status = 'PENDING'
       OR (status = 'RETRYING'
           AND coalesce(next_attempt_at, now()) <= now() + interval '1 second')
       OR (status = 'SENDING' AND claimed_until < now()))
RETURNING (SELECT reason FROM disabled_destinations x
           WHERE x.channel = delivery_logs.channel AND x.destination = delivery_logs.destination)
"""

DISABLE_DESTINATION = """
INSERT INTO disabled_destinations (channel, destination, reason) VALUES (%s, %s, %s)
ON CONFLICT (channel, destination) DO NOTHING
"""

# A stopping job gives up an attempt still under way: RETRYING, due at once.
RELEASE_CLAIM = """
UPDATE delivery_logs SET status = 'RETRYING', claimed_until = NULL, next_attempt_at = now(),
    updated_at = now()
WHERE notification_id = %s AND channel = %s AND destination = %s AND status = 'SENDING'
"""

# The first delivery of a notification also moves its alerts to DELIVERED (unless they are
# further on), locked in id order like every status write, in the same round trip.
MARK_DELIVERED = """
WITH marked AS (
    UPDATE delivery_logs SET
        status = 'DELIVERED', delivered_at = now(), provider_message_id = %(message_id)s,
        provider = coalesce(provider, CASE WHEN channel = 'in_app' THEN 'in_app' END),
        attempts = attempts + 1, last_attempt_at = now(), next_attempt_at = NULL,
        claimed_until = NULL, updated_at = now()
    WHERE notification_id = %(notification)s AND channel = %(channel)s
      AND destination = %(destination)s AND status <> 'DELIVERED'
    RETURNING id
), due AS (
    SELECT t.id, t.triggered_at FROM triggered_alerts t
    WHERE EXISTS (SELECT FROM marked)
      AND t.id = ANY(coalesce(
          (SELECT c.alert_ids FROM consolidated_alerts c WHERE c.id = %(notification)s), '{}'))
      AND alert_status_rank(coalesce(t.status, 'PENDING')) < 3
    ORDER BY t.id
    FOR UPDATE
), moved AS (
    UPDATE triggered_alerts t SET status = 'DELIVERED'
    FROM due WHERE t.id = due.id AND t.triggered_at = due.triggered_at
)
SELECT id FROM marked
"""

MARK_FAILED = """
UPDATE delivery_logs SET
    status = %(status)s, error_message = %(error)s, attempts = attempts + 1,
    retry_count = retry_count + %(retried)s, last_attempt_at = now(),
    next_attempt_at = %(next_attempt_at)s, claimed_until = NULL, updated_at = now()
WHERE notification_id = %(notification)s AND channel = %(channel)s
  AND destination = %(destination)s AND status <> 'DELIVERED'
RETURNING id
"""


class OpenDelivery(NamedTuple):
    """A delivery to resume: PENDING, RETRYING, or SENDING with a lapsed lease."""

    notification: Notification
    channel: str
    destination: str
    attempts: int  # finished attempts
    created_at: datetime
    secret_ref: str | None
    next_attempt_at: datetime | None


class DeliveryRecord(NamedTuple):
    """One (notification, channel, destination) to record in the outbox. ``window_start`` is
    the notification's; None: read from its stored row (which must exist then)."""

    notification_id: str
    user_id: str
    channel: str
    destination: str
    secret_ref: str | None = None
    window_start: datetime | None = None


class PlannedDelivery(NamedTuple):
    """A delivery of a notification to record: PENDING, or FAILED / STALE with the reason."""

    channel: str
    destination: str
    secret_ref: str | None = None
    status: str = "PENDING"
    error: str | None = None


# Given the alerts each notification of a batch has sent (storage uuids; None for one not yet
# sent), the notifications to store and the deliveries to record for each.
Plan = list[tuple[Notification, list[PlannedDelivery]]]
Decide = Callable[[dict[str, set[uuid.UUID] | None]], Plan]


class Claim(NamedTuple):
    """``claimed``: this caller may attempt the delivery now (it is SENDING, leased to it);
    ``disabled_reason``: why its destination must not be used, if it is disabled."""

    claimed: bool
    disabled_reason: str | None = None


class DatabaseUnavailableError(RuntimeError):
    """PostgreSQL did not answer within the retry budget; the message is one line naming the
    server (never the password), the attempts, and the last error."""


class _Watchdog:
    """Cuts a connection off when one call has waited longer than ``limit_s`` for the server.

    A frozen server (a stopped process, a hung host) leaves its connections open: the kernel
    still acknowledges every packet, so neither statement_timeout nor TCP keepalives fire and
    the blocked call would wait forever. Shutting the socket down, on a duplicate of its
    descriptor because libpq owns it, makes that call fail at once as a lost connection.
    One thread per writer times its calls; it starts with the first call and ends on close.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._cond = threading.Condition()
        self._fd: int | None = None  # the socket of the call being timed
        self._deadline = 0.0
        self._fired = False
        self._idle = False  # the thread waits for a call, not for a deadline
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, fd: int) -> None:
        with self._cond:
            self._fd, self._deadline = fd, monotonic() + self.limit_s
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(
                    target=self._run, name="postgres-watchdog", daemon=True
                )
                self._thread.start()
            elif self._idle:  # a thread timing an earlier call wakes up by itself
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._fd = None

    def cut_off(self) -> bool:
        """Whether a call was cut off since the last time this was asked."""
        with self._cond:
            fired, self._fired = self._fired, False
            return fired

    def close(self) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            self._closed = True
            self._cond.notify()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._fd is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                remaining = self._deadline - monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                # Under the lock: the call cannot return and free the descriptor meanwhile.
                try:
                    with socket.socket(fileno=os.dup(self._fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    log.debug("could not shut the PostgreSQL socket down", exc_info=True)
                self._fd, self._fired = None, True


class _WatchedConnection(psycopg.Connection[Any]):
    """A connection whose every blocking call (statements, commit, rollback) is timed by the
    watchdog: psycopg runs them all through ``wait``. Set ``watchdog`` before the first call
    (``connect`` makes none)."""

    watchdog: _Watchdog

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        self.watchdog.arm(self.pgconn.socket)
        try:
            return super().wait(gen, *args, **kwargs)
        finally:
            self.watchdog.disarm()


class HistoryWriter:
    """Writes rules, alerts, notifications, profiles, feedback, scores and deliveries to
    PostgreSQL."""

    def __init__(self, database_url: str, dependencies: Dependencies | None = None) -> None:
        """Connects at once, waiting for an unreachable server as long as for a write (so the
        start-up order of the servers does not matter); ``dependencies`` None: the defaults."""
        self._database_url = database_url
        self._dependencies = dependencies or Dependencies()
        self._watchdog = _Watchdog(self._dependencies.statement_timeout_seconds + WATCHDOG_MARGIN_S)
        self.where = _server_name(database_url)
        self._conn: _WatchedConnection | None = None
        self._transaction(lambda conn: None)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._disconnect()
        self._watchdog.close()

    def _connect(self) -> _WatchedConnection:
        params = conninfo_to_dict(self._database_url)
        timeout_ms = round(self._dependencies.statement_timeout_seconds * 1000)
        # Appended, so that options of the URL (a role, a search_path) still apply.
        given = params.get("options") or os.environ.get("PGOPTIONS", "")
        options: dict[str, Any] = {
            "autocommit": False,
            # libpq counts whole seconds (and at least 2).
            "connect_timeout": math.ceil(self._dependencies.connect_timeout_seconds),
            "options": f"{given} -c statement_timeout={timeout_ms}".strip(),
        }
        if "application_name" not in params:
            options["application_name"] = APPLICATION_NAME
        conn = _WatchedConnection.connect(self._database_url, **options)
        conn.watchdog = self._watchdog
        return conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _transaction(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run ``work`` in one transaction on the writer's connection, made if needed.

        When the server is unreachable, lost, frozen or cancels a statement for taking too
        long, the whole transaction is retried on a new connection with backoff for
        ``retry_for_seconds``, then DatabaseUnavailableError. A deadlock or serialization
        failure is retried once at once. Rows are written in key order so that concurrent
        writers (one per worker) take row locks in the same order.
        """
        budget = self._dependencies.retry_for_seconds
        first_failed: float | None = None  # when the first failed attempt began
        attempts = 0
        rolled_back = False
        while True:
            began = monotonic()
            attempts += 1
            conn = self._conn
            try:
                if conn is None or conn.closed:
                    conn = self._conn = self._connect()
                result = work(conn)
                conn.commit()
                return result
            except psycopg.OperationalError as exc:
                # Retried: no connection, a lost or cut-off one, a statement_timeout.
                cancelled = isinstance(exc, psycopg.errors.QueryCanceled)
                if conn is not None and not (conn.closed or conn.broken or cancelled):
                    _rollback_quietly(conn)
                    if isinstance(exc, psycopg.errors.TransactionRollback) and not rolled_back:
                        rolled_back = True  # a deadlock or serialization failure
                        log.warning("PostgreSQL rolled the batch back (%s); retrying it once", exc)
                        continue
                    raise
                self._disconnect()
                error = self._describe(exc)
                first_failed = began if first_failed is None else first_failed
                elapsed = monotonic() - first_failed
                if elapsed >= budget:
                    raise DatabaseUnavailableError(
                        f"PostgreSQL at {self.where} did not answer: tried {attempts} "
                        f"{'time' if attempts == 1 else 'times'} over {elapsed:.1f} s; "
                        f"last error: {error}"
                    ) from exc
                delay = min(_backoff(attempts), budget - elapsed)
                log.warning(
                    "PostgreSQL at %s did not answer (%s); retry %d in %.1f s (giving up after "
                    "%g s)",
                    self.where,
                    error,
                    attempts,
                    delay,
                    budget,
                )
                sleep(delay)
            except BaseException:
                if conn is not None:
                    _rollback_quietly(conn)
                raise

    def _describe(self, exc: psycopg.OperationalError) -> str:
        """The cause of a failed attempt, in a few words on one line."""
        if self._watchdog.cut_off():
            return f"no answer within {self._watchdog.limit_s:g} s"
        if isinstance(exc, psycopg.errors.ConnectionTimeout):
            return "connect timeout"
        # libpq: 'connection failed: connection to server at "h", port p failed: Connection
        # refused' plus hint lines; keep the last cause of the first line.
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return " ".join(lines[0].rsplit("failed: ", 1)[-1].split())

    def _executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(statement, rows)

        self._transaction(work)

    # ------------------------------------------------------------ rules

    def write_rules(self, rules: list[Rule]) -> None:
        """Upsert rules (last one wins per id) and replace the leaf conditions of changed ones
        (``upsert_rules``), in one transaction."""
        staged = _stage_rules(rules)
        if staged:
            self._transaction(lambda conn: _upsert_staged(conn, staged))

    def delete_rules(self, rule_ids: list[str]) -> None:
        """Tombstones: mark the rules deleted (``tombstone_rules``)."""
        if rule_ids:
            self._transaction(lambda conn: tombstone_rules(conn, rule_ids))

    # ------------------------------------------------------------ alerts, notifications

    def write_alerts(self, alerts: list[TriggeredAlert]) -> None:
        """Insert alerts once each (a replayed alert id is ignored)."""
        if not alerts:
            return
        firsts: dict[str, TriggeredAlert] = {}
        for alert in alerts:
            firsts.setdefault(alert.rule_id, alert)
        placeholders = sorted(
            (_key("rule", a.rule_id), a.rule_id, _key("user", a.user_id), a.user_id, a.rule_version)
            for a in firsts.values()
        )
        rows = [_alert_row(alert) for alert in alerts]

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(PLACEHOLDER_RULE, placeholders)
                cur.executemany(INSERT_ALERT, rows, returning=True)
                inserted = []
                while True:
                    inserted += [row[0] for row in cur.fetchall()]
                    if not cur.nextset():
                        break
            # An alert stored after its outcome, feedback or delivery takes its status now.
            _sync_alert_status(conn, inserted)

        self._transaction(work)

    def write_notifications(self, notifications: list[Notification]) -> None:
        """Store notifications not stored yet; a stored notification never changes (what
        reaches its window later goes out in a follow-up: ``store_notifications``)."""
        firsts = {n.notification_id: n for n in reversed(notifications)}
        rows = sorted((_notification_row(n) for n in firsts.values()), key=_first)
        self._executemany(INSERT_NOTIFICATION, rows)

    def store_notifications(
        self,
        notification_ids: list[str],
        decide: Decide,
        before_commit: Callable[[list[Notification]], None] | None = None,
    ) -> list[tuple[Notification, list[PlannedDelivery]]]:
        """One transaction for a batch of notifications: read (and lock) which alerts each has
        sent, let ``decide`` plan what to store and deliver, store the new notifications and
        record their deliveries, run ``before_commit`` with them (publishing), commit.

        Returns each stored notification with its deliveries that are still open (PENDING or
        RETRYING): a replay of the same batch finds everything sent and plans nothing.
        """
        keys = sorted({storage_uuid("notification", nid) for nid in notification_ids})

        def work(conn: psycopg.Connection) -> list[tuple[Notification, list[PlannedDelivery]]]:
            sent: dict[str, set[uuid.UUID] | None] = dict.fromkeys(notification_ids)
            for nid, alert_ids in conn.execute(SENT_ALERTS, (keys,)).fetchall():
                sent[nid] = set(alert_ids or [])
            for nid, alert_ids in conn.execute(FOLLOW_UP_ALERTS, (keys,)).fetchall():
                known = sent.get(nid)
                if known is not None:
                    known.update(alert_ids or [])
            plan = decide(sent)
            if not plan:
                return []
            rows = [_notification_row(note) for note, _ in plan]
            deliveries = [
                (delivery_uuid(note.notification_id, d.channel, d.destination), note, d)
                for note, planned in plan
                for d in planned
            ]
            with conn.cursor() as cur:
                cur.executemany(INSERT_NOTIFICATION, rows)
                cur.executemany(
                    PLAN_DELIVERY,
                    sorted(
                        (
                            key,
                            storage_uuid("notification", note.notification_id),
                            d.channel,
                            d.destination,
                            d.status,
                            d.secret_ref,
                            d.error[:MAX_ERROR_LENGTH] if d.error else None,
                            note.window_start,
                        )
                        for key, note, d in deliveries
                    ),
                )
                status: dict[uuid.UUID, str] = dict(
                    conn.execute(DELIVERY_STATUSES, ([key for key, _, _ in deliveries],)).fetchall()
                )
            if before_commit is not None:
                before_commit([note for note, _ in plan])
            return [
                (
                    note,
                    [
                        d
                        for d in planned
                        if status.get(delivery_uuid(note.notification_id, d.channel, d.destination))
                        in ("PENDING", "RETRYING")
                    ],
                )
                for note, planned in plan
            ]

        return self._transaction(work)

    # ------------------------------------------------------------ users

    def write_profiles(self, profiles: list[Profile]) -> None:
        """Upsert each user's profile; relevance scores and action history are kept."""
        latest = _last_per_key(profiles, lambda p: p.user_id)
        rows = sorted((_profile_row(p) for p in latest), key=_first)
        self._executemany(UPSERT_PROFILE, rows)

    def write_relevance(self, scores: list[RelevanceScore]) -> None:
        """Merge scores into relevance_scores as {dimension: {key: score}}, per key, and keep
        each change in relevance_score_history."""
        patches: dict[str, dict[str, dict[str, float]]] = {}
        for score in scores:  # in stream order: the last score of a key wins
            patches.setdefault(score.user_id, {}).setdefault(score.dimension, {})[score.key] = (
                score.score
            )
        rows = sorted(
            (
                (_key("user", user), _key("user", user), user, Jsonb(patch))
                for user, patch in patches.items()
            ),
            key=_first,
        )
        # Every change goes to relevance_score_history too (the last of a key and time wins).
        changes = {(s.user_id, s.dimension, s.key, s.updated_at): s.score for s in scores}
        history = sorted(
            (_key("user", user), user, dimension, key, at, score)
            for (user, dimension, key, at), score in changes.items()
        )

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(MERGE_RELEVANCE, rows)
                cur.executemany(INSERT_SCORE_HISTORY, history)

        if rows:
            self._transaction(work)

    def write_outcomes(self, outcomes: list[AlertOutcome]) -> None:
        """Upsert what became of each alert; a later decision replaces an earlier one."""
        latest = {outcome.alert_id: outcome for outcome in outcomes}
        rows = sorted(
            (
                (
                    storage_uuid("alert", o.alert_id),
                    o.alert_id,
                    _key("user", o.user_id),
                    o.user_id,
                    o.status,
                    storage_uuid("notification", o.notification_id) if o.notification_id else None,
                    o.notification_id,
                    o.at,
                )
                for o in latest.values()
            ),
            key=_first,
        )
        if not rows:
            return

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(UPSERT_OUTCOME, rows)
            _sync_alert_status(conn, [row[0] for row in rows])

        self._transaction(work)

    def write_feedback(self, feedback: list[Feedback]) -> None:
        """Store each feedback event once (``feedback_uuid``), then move the status and
        ``acknowledged_at`` of the alerts it names and rebuild the users' ``action_history``.
        A replayed event inserts nothing and so changes nothing."""
        rows = sorted({feedback_uuid(f): f for f in feedback}.items())
        if not rows:
            return
        columns = (
            [key for key, _ in rows],
            [f.ts for _, f in rows],
            [_key("user", f.user_id) for _, f in rows],
            [f.user_id for _, f in rows],
            [storage_uuid("alert", f.alert_id) for _, f in rows],
            [f.alert_id for _, f in rows],
            [f.action.value for _, f in rows],
            [f.symbol for _, f in rows],
            [f.condition_type for _, f in rows],
        )

        def work(conn: psycopg.Connection) -> None:
            with conn.cursor(row_factory=tuple_row) as cur:
                inserted = cur.execute(INSERT_FEEDBACK, columns).fetchall()
                if not inserted:
                    return
                _sync_alert_status(conn, [alert for _, alert in inserted])
                users = sorted({user for user, _ in inserted})
                cur.execute(REBUILD_ACTION_HISTORY, (users,))

        self._transaction(work)

    # ------------------------------------------------------------ deliveries (outbox)

    def record_delivery(
        self,
        notification_id: str,
        user_id: str,
        channel: str,
        destination: str,
        secret_ref: str | None = None,
        window_start: datetime | None = None,
    ) -> bool:
        """Record a PENDING delivery unless recorded; True while it is not DELIVERED yet.
        ``window_start`` (the notification's) is needed when the notification is not stored."""
        return self.record_deliveries(
            [
                DeliveryRecord(
                    notification_id, user_id, channel, destination, secret_ref, window_start
                )
            ]
        )[0]

    def record_deliveries(self, records: list[DeliveryRecord]) -> list[bool]:
        """``record_delivery`` for many, in one transaction; the answers in the same order."""
        keys = [delivery_uuid(r.notification_id, r.channel, r.destination) for r in records]
        params = [
            {
                "id": key,
                "notification": storage_uuid("notification", r.notification_id),
                "notification_external": r.notification_id,
                "user": _key("user", r.user_id),
                "user_external": r.user_id,
                "channel": r.channel,
                "destination": r.destination,
                "secret_ref": r.secret_ref,
                "window_start": r.window_start,
            }
            for r, key in zip(records, keys, strict=True)
        ]
        in_key_order = sorted(range(len(records)), key=keys.__getitem__)

        def work(conn: psycopg.Connection) -> list[bool]:
            _fill_window_starts(conn, params)
            open_ = [False] * len(params)
            for i in in_key_order:
                p = params[i]
                row = conn.execute(RECORD_DELIVERY, p).fetchone()
                if row is None:  # recorded concurrently after this statement's snapshot
                    row = conn.execute(
                        DELIVERY_STATUS, (p["notification"], p["channel"], p["destination"])
                    ).fetchone()
                open_[i] = row is None or row[0] != "DELIVERED"
            return open_

        return self._transaction(work)

    def open_deliveries(self, channels: Iterable[str], limit: int = 10_000) -> list[OpenDelivery]:
        """The deliveries of these channels to resume, with their notification, oldest first
        (at most ``limit``: the next scan takes the rest)."""

        def work(conn: psycopg.Connection) -> list[OpenDelivery]:
            out = []
            for row in conn.execute(OPEN_DELIVERIES, (list(channels), limit)).fetchall():
                nid, user, alert_ids, title, message, priority, note_channels, start, end = row[:9]
                notification = Notification(
                    notification_id=nid,
                    user_id=user,
                    alert_ids=[str(a) for a in alert_ids or []],
                    title=title,
                    message=message or "",
                    highest_priority=priority,
                    channels=note_channels or [],
                    window_start=start,
                    window_end=end,
                    follow_up_of=row[9],
                )
                channel, destination, attempts, created_at, secret_ref, next_at = row[10:]
                out.append(
                    OpenDelivery(
                        notification,
                        channel,
                        destination,
                        int(attempts),
                        created_at,
                        secret_ref,
                        next_at,
                    )  # fmt: skip
                )
            return out

        return self._transaction(work)

    def claim_delivery(
        self,
        notification_id: str,
        channel: str,
        destination: str,
        lease_seconds: float,
        provider: str | None = None,
    ) -> Claim:
        """Lease the delivery to this caller for one attempt, if it is open and due; the row
        records ``provider``, the sender's, for analysts (v_delivery_success).

        Every worker scans the outbox, so two may hold a job for one row: only the one whose
        claim succeeds sends. A lease that lapses (the job stopped mid-call) reopens the row.
        """
        params = {
            "lease": lease_seconds,
            "provider": provider,
            "notification": storage_uuid("notification", notification_id),
            "channel": channel,
            "destination": destination,
        }

        def work(conn: psycopg.Connection) -> Claim:
            row = conn.execute(CLAIM_DELIVERY, params).fetchone()
            return Claim(False) if row is None else Claim(True, row[0])

        return self._transaction(work)

    def outbox_depth(self, channels: Iterable[str]) -> dict[tuple[str, str], int]:
        """How many rows of these channels are open, by (channel, status)."""

        def work(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute(OUTBOX_DEPTH, (list(channels),)).fetchall()
            return {(channel, status): int(count) for channel, status, count in rows}

        return self._transaction(work)

    def release_claim(self, notification_id: str, channel: str, destination: str) -> None:
        """Give back the claim of an attempt this job will not finish."""
        key = storage_uuid("notification", notification_id)
        self._transaction(lambda conn: conn.execute(RELEASE_CLAIM, (key, channel, destination)))

    def disable_destination(self, channel: str, destination: str, reason: str) -> None:
        """The provider said the destination is dead: deliveries to it fail without a try."""

        def work(conn: psycopg.Connection) -> None:
            conn.execute(DISABLE_DESTINATION, (channel, destination, reason[:MAX_ERROR_LENGTH]))

        self._transaction(work)

    def mark_delivered(
        self,
        notification_id: str,
        channel: str,
        destination: str,
        provider_message_id: str | None,
    ) -> None:
        key = storage_uuid("notification", notification_id)

        params = {
            "message_id": provider_message_id,
            "notification": key,
            "channel": channel,
            "destination": destination,
        }

        def work(conn: psycopg.Connection) -> None:
            if conn.execute(MARK_DELIVERED, params).fetchone() is None:
                _require_recorded(conn, notification_id, channel, destination)

        self._transaction(work)

    def mark_failed(
        self,
        notification_id: str,
        channel: str,
        destination: str,
        error: str,
        *,
        retry: bool,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """A failed attempt: RETRYING (``retry``) or FAILED. A DELIVERED row stays DELIVERED.

        ``next_attempt_at`` (an aware datetime) tells when a retry is due, if the caller knows.
        """
        params = {
            "status": "RETRYING" if retry else "FAILED",
            "error": error[:MAX_ERROR_LENGTH],
            "retried": 1 if retry else 0,
            "next_attempt_at": next_attempt_at if retry else None,
            "notification": storage_uuid("notification", notification_id),
            "channel": channel,
            "destination": destination,
        }

        def work(conn: psycopg.Connection) -> None:
            if conn.execute(MARK_FAILED, params).fetchone() is None:
                _require_recorded(conn, notification_id, channel, destination)

        self._transaction(work)


# ---------------------------------------------------------------- rows


def upsert_rules(conn: psycopg.Connection[Any], rules: Iterable[Rule]) -> None:
    """Upsert rules (last one wins per id) and replace the leaf conditions of changed ones, in
    the caller's transaction: what HistoryWriter.write_rules does, for the API's writes.

    As many statements for 100,000 rules as for one: the rules are copied into a table of
    the transaction and upserted from it; the upsert returns the rules that changed, whose
    conditions are deleted and copied in again (an unchanged rule, as in a replay, keeps its
    row and its conditions untouched). The temporary table lives until the commit, so call
    this once per transaction.
    """
    staged = _stage_rules(rules)
    if staged:
        _upsert_staged(conn, staged)


def tombstone_rules(conn: psycopg.Connection[Any], rule_ids: Iterable[str]) -> None:
    """Mark rules deleted (deleted_at, is_active = false) in the caller's transaction; rows
    stay, because triggered_alerts references them."""
    keys = sorted({_key("rule", rule_id) for rule_id in rule_ids})
    if keys:
        conn.execute(TOMBSTONE_RULES, (keys,))


def _stage_rules(rules: Iterable[Rule]) -> dict[str, _StagedRule]:
    """The last rule per storage key (two spellings of one UUID are one row), by wire id."""
    latest: dict[str, Rule] = {}
    for rule in rules:
        key = _key_hex("rule", rule.id)
        latest.pop(key, None)
        latest[key] = rule
    return {rule.id: _StagedRule(key, rule) for key, rule in latest.items()}


def _upsert_staged(conn: psycopg.Connection[Any], staged: dict[str, _StagedRule]) -> None:
    rows = [staged_rule.row() for staged_rule in staged.values()]
    # Tuple rows whatever the connection's row factory (the API's connections make dicts).
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(CREATE_RULE_BATCH)
        with cur.copy(COPY_RULE_BATCH) as copy:
            for row in rows:
                copy.write_row(row)
        changed = [staged[wire_id] for (wire_id,) in cur.execute(UPSERT_RULE_BATCH)]
        if not changed:
            return
        keys = f"{{{','.join(rule.key for rule in changed)}}}"  # hex needs no quoting
        cur.execute(DELETE_CONDITIONS, (keys,))
        with cur.copy(COPY_CONDITIONS) as copy:
            for rule in changed:
                for condition in rule.condition_rows():
                    copy.write_row(condition)


def feedback_uuid(feedback: Feedback) -> uuid.UUID:
    """The key of a feedback row: UUIDv5 of its user, alert, action and ts (RFC 3339 UTC with
    microseconds), so the same event read twice is one row."""
    at = feedback.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    name = f"feedback|{feedback.user_id}|{feedback.alert_id}|{feedback.action.value}|{at}"
    return uuid.uuid5(NAMESPACE, name)


def _fill_window_starts(conn: psycopg.Connection[Any], params: list[dict[str, Any]]) -> None:
    """The window start of each delivery the caller gave none, from its stored notification:
    the partition key must be the notification's, whoever records the delivery."""
    missing = sorted({p["notification"] for p in params if p["window_start"] is None})
    if not missing:
        return
    found = dict(
        conn.execute(
            "SELECT id, window_start FROM consolidated_alerts"
            " WHERE id = ANY(%s) AND window_start IS NOT NULL",
            (missing,),
        ).fetchall()
    )
    for p in params:
        if p["window_start"] is None:
            if p["notification"] not in found:
                raise LookupError(
                    f"notification {p['notification_external']} is not stored: give the "
                    "delivery its window_start (DeliveryRecord.window_start)"
                )
            p["window_start"] = found[p["notification"]]


def _sync_alert_status(conn: psycopg.Connection[Any], alert_ids: Iterable[uuid.UUID]) -> None:
    """Recompute status and acknowledged_at of these alerts (SYNC_ALERT_STATUS), rows locked
    in id order first."""
    keys = sorted(set(alert_ids))
    if keys:
        conn.execute(LOCK_ALERTS, (keys,))
        conn.execute(SYNC_ALERT_STATUS, (keys,))


def delivery_uuid(notification_id: str, channel: str, destination: str) -> uuid.UUID:
    """The key of a delivery row: replays of one (notification, channel, destination) meet."""
    return uuid.uuid5(NAMESPACE, f"delivery|{notification_id}|{channel}|{destination}")


class _StagedRule:
    """A rule as its alert_rules row and its alert_conditions rows. The tree is dumped to JSON
    once: the leaves' JSON is read from it, not dumped again leaf by leaf."""

    def __init__(self, key: str, rule: Rule) -> None:
        self.key = key
        self.rule = rule
        self.tree: dict[str, Any] = rule.conditions.model_dump(mode="json", exclude_none=True)

    def row(self) -> tuple[Any, ...]:
        rule = self.rule
        channels = rule.channels
        return (
            self.key,
            rule.id,
            _key_hex("user", rule.user_id),
            rule.user_id,
            rule.name,
            rule.symbol,
            rule.symbols,
            rule.priority.value,
            rule.active,
            math.ceil(rule.cooldown_seconds / 60),
            rule.cooldown_seconds,
            rule.expires_at,
            rule.version,
            rule.mode,
            [channel.value for channel in channels] if channels is not None else None,
            json.dumps(self.tree),
            rule.sessions,
        )

    def condition_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for position, params in enumerate(_leaves(self.rule.conditions, self.tree)):
            condition_type = str(params.get("type", ""))
            threshold = params.get("threshold")
            if not isinstance(threshold, int | float) or abs(threshold) >= MAX_THRESHOLD:
                threshold = None
            window = params.get("window_seconds")
            rows.append(
                (
                    _uuid5_hex(f"condition|{self.rule.id}|{position}"),
                    self.key,
                    position,
                    condition_type[:50],
                    # The text PostgreSQL makes of a float8 for a decimal column (DBL_DIG = 15
                    # digits): the stored value is that of a float parameter, as before COPY.
                    f"{threshold:.15g}" if threshold is not None else None,
                    comparison_of(condition_type),
                    math.ceil(window / 60) if isinstance(window, int | float) else None,
                    json.dumps(params),
                )
            )
        return rows


def _leaves(node: ConditionNode, dumped: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON of each leaf of ``node``, depth first (as ``iter_conditions``), taken from the
    JSON of the whole tree, ``dumped``."""
    if isinstance(node, AllOf):
        pairs = zip(node.all, dumped["all"], strict=True)
    elif isinstance(node, AnyOf):
        pairs = zip(node.any, dumped["any"], strict=True)
    else:
        return [dumped]
    return [leaf for child, child_json in pairs for leaf in _leaves(child, child_json)]


def comparison_of(condition_type: str) -> str | None:
    """above / below / crosses_above / crosses_below, as the condition type says; else None."""
    if "crosses_above" in condition_type or condition_type.endswith("cross_up"):
        return "crosses_above"
    if "crosses_below" in condition_type or condition_type.endswith("cross_down"):
        return "crosses_below"
    if condition_type.endswith("_above"):
        return "above"
    if condition_type.endswith("_below"):
        return "below"
    return None


def _alert_row(alert: TriggeredAlert) -> tuple[Any, ...]:
    return (
        storage_uuid("alert", alert.alert_id),
        alert.alert_id,
        _key("rule", alert.rule_id),
        alert.rule_version,
        _key("user", alert.user_id),
        alert.user_id,
        alert.symbol,
        alert.priority.value,
        alert.title,
        alert.message,
        alert.triggered_at,
        alert.condition_types,
        Jsonb(alert.values),
    )


def _notification_row(notification: Notification) -> tuple[Any, ...]:
    parent = notification.follow_up_of
    return (
        storage_uuid("notification", notification.notification_id),
        notification.notification_id,
        _key("user", notification.user_id),
        notification.user_id,
        [storage_uuid("alert", alert_id) for alert_id in notification.alert_ids],
        notification.title,
        notification.message,
        notification.highest_priority.value,
        [channel.value for channel in notification.channels],
        notification.window_start,
        notification.window_end,
        storage_uuid("notification", parent) if parent is not None else None,
    )


def _profile_row(profile: Profile) -> tuple[Any, ...]:
    data = profile.model_dump(mode="json", exclude_none=True)
    channels: dict[str, list[str]] = data["channels"]
    preferred: list[str] = []
    for priority in sorted(channels, key=_priority_rank):
        preferred.extend(c for c in channels[priority] if c not in preferred)
    quiet = profile.quiet_hours
    key = _key("user", profile.user_id)
    return (
        key,
        key,
        profile.user_id,
        preferred,
        _clock(quiet.start) if quiet else None,
        _clock(quiet.end) if quiet else None,
        profile.timezone,
        Jsonb(channels),
        profile.digest_seconds,
        profile.max_per_hour,
        profile.min_relevance,
        Jsonb(data["destinations"]),
    )


def _priority_rank(priority: str) -> int:
    return PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else len(PRIORITY_ORDER)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


# ---------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1 << 14)
def _key(kind: str, wire_id: str) -> uuid.UUID:
    """storage_uuid of a rule or user id, memoized: they repeat (UUIDv5 is not free)."""
    return storage_uuid(kind, wire_id)


def _key_hex(kind: str, wire_id: str) -> str:
    """``storage_uuid(kind, wire_id).hex``, faster for the usual wire ids: a string shorter than
    32 characters cannot be a UUID, so its key is UUIDv5, computed without UUID objects (which
    made up a third of the cost of writing a rule)."""
    if len(wire_id) < 32:
        return _uuid5_hex(f"{kind}|{wire_id}")
    return storage_uuid(kind, wire_id).hex


def _uuid5_hex(name: str) -> str:
    """``uuid.uuid5(NAMESPACE, name).hex``: SHA-1 of namespace and name, version and variant
    bits set (RFC 9562)."""
    digest = NAMESPACE_SHA1.copy()
    digest.update(name.encode())
    raw = bytearray(digest.digest()[:16])
    raw[6] = raw[6] & 0x0F | 0x50
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


K = TypeVar("K")
V = TypeVar("V")


def _last_per_key(items: Iterable[V], key: Callable[[V], K]) -> Iterable[V]:
    """The last item of each key, in the order of those last items (stream order)."""
    latest: dict[K, V] = {}
    for item in items:
        latest.pop(key(item), None)
        latest[key(item)] = item
    return latest.values()


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _require_recorded(
    conn: psycopg.Connection, notification_id: str, channel: str, destination: str
) -> None:
    key = storage_uuid("notification", notification_id)
    if conn.execute(DELIVERY_STATUS, (key, channel, destination)).fetchone() is None:
        raise LookupError(
            f"no delivery recorded for notification {notification_id} on {channel} to "
            f"{destination}: call record_delivery before sending"
        )


def _server_name(database_url: str) -> str:
    """``host:port/dbname`` of a libpq URL or conninfo string, never its password."""
    params = conninfo_to_dict(database_url)
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "localhost")
    port = params.get("port") or os.environ.get("PGPORT", "5432")
    dbname = params.get("dbname") or os.environ.get("PGDATABASE", "")
    return f"{host}:{port}/{dbname}" if dbname else f"{host}:{port}"


def _backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: exponential, equal jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempts) / 2
    return ceiling + random.uniform(0, ceiling)


def _rollback_quietly(conn: psycopg.Connection) -> None:
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        log.debug("rollback failed", exc_info=True)


__all__ = [
    "DatabaseUnavailableError",
    "HistoryWriter",
    "comparison_of",
    "delivery_uuid",
    "feedback_uuid",
]
