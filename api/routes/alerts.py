"""Alert history: triggered alerts and notifications from PostgreSQL; acknowledging.

The job writes the rows (sinks/postgres.py): ``triggered_alerts`` (with the rule from
``alert_rules`` and what personalization decided from ``alert_outcomes``), ``consolidated_alerts``
and their ``delivery_logs``. Wire ids are the ``*_external_id`` columns; lookups go through the
storage keys (``pipeline.ids.storage_uuid``), which the tables are indexed on.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, Path, Query
from pydantic import AwareDatetime, BaseModel, BeforeValidator

from api.auth import Principal, for_user, not_found, require, services
from api.pagination import (
    CursorParam,
    LimitParam,
    Page,
    page_of,
    time_cursor,
)
from api.services import Services
from pipeline.ids import storage_uuid
from pipeline.masking import mask_destination
from pipeline.messages import (
    Channel,
    Feedback,
    FeedbackAction,
    Notification,
    Priority,
    Timestamp,
    TriggeredAlert,
)

router = APIRouter(prefix="/v1", tags=["alerts"])

Reader = Annotated[Principal, Depends(require("alerts:read"))]
Writer = Annotated[Principal, Depends(require("alerts:write"))]
Svc = Annotated[Services, Depends(services)]
UserParam = Annotated[
    str | None, Query(description="whose alerts (analysts and admins read any user's)")
]
PriorityParam = Annotated[
    list[Priority] | None, Query(description="only these priorities (repeat the parameter)")
]
# A time in a query is RFC 3339 with its offset only: pydantic would also take a number as
# Unix seconds, which the document does not promise and a typo should not become.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d:\d\d)")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(
            "expected an RFC 3339 time with a UTC offset or Z, e.g. 2026-01-05T14:30:00Z"
        )
    return value


QueryTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
FromParam = Annotated[
    QueryTime | None,
    Query(alias="from", description="RFC 3339 time with offset: at or after it (inclusive)"),
]
ToParam = Annotated[
    QueryTime | None, Query(alias="to", description="RFC 3339 time with offset: before it")
]
AlertIdParam = Annotated[str, Path(min_length=1, max_length=128, description="the alert id")]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "missing scope, or another user's alerts without the role for it"},
    422: {"description": "a parameter is invalid (it is named)"},
    503: {"description": "PostgreSQL (or, to acknowledge, Kafka) is unavailable"},
}


class AlertOutcome(BaseModel):
    """What personalization made of the alert (alert_outcomes; docs/personalization.md)."""

    status: Literal["NOTIFIED", "STALE", "MUTED", "DEFERRED"]
    notification_id: str | None = None
    decided_at: Timestamp


class AlertRecord(BaseModel):
    """A triggered alert as the job published it, with its rule's name, its acknowledgement
    and its outcome (null until the job decided it)."""

    alert: TriggeredAlert
    rule_name: str | None
    acknowledged_at: Timestamp | None = None
    outcome: AlertOutcome | None = None


class Delivery(BaseModel):
    """One delivery of a notification (delivery_logs): per channel and destination."""

    channel: Channel
    destination: str
    status: Literal["PENDING", "SENDING", "RETRYING", "DELIVERED", "FAILED", "STALE"]
    attempts: int
    delivered_at: Timestamp | None = None
    last_attempt_at: Timestamp | None = None
    error_message: str | None = None


class NotificationRecord(BaseModel):
    """A notification as the job published it, with where it went."""

    notification: Notification
    created_at: Timestamp
    deliveries: list[Delivery]


ALERT_COLUMNS = """
SELECT t.id, t.external_id, t.user_external_id, t.symbol, t.priority, t.title, t.message,
       t.triggered_at, t.acknowledged_at, t.rule_version, t.condition_types, t."values",
       r.external_id AS rule_external_id, r.name AS rule_name,
       o.status AS outcome_status, o.notification_external_id, o.decided_at
FROM triggered_alerts t
LEFT JOIN alert_rules r ON r.id = t.rule_id
LEFT JOIN alert_outcomes o ON o.alert_id = t.id
"""
NOTIFICATION_COLUMNS = """
SELECT c.id, c.external_id, c.user_external_id, c.consolidated_title, c.consolidated_message,
       c.highest_priority, c.channels, c.window_start, c.window_end, c.created_at,
       parent.external_id AS follow_up_of,
       ARRAY(
           SELECT coalesce(t.external_id, o.alert_external_id)
           FROM unnest(c.alert_ids) WITH ORDINALITY AS a(id, position)
           LEFT JOIN triggered_alerts t ON t.id = a.id
           LEFT JOIN alert_outcomes o ON o.alert_id = a.id
           WHERE coalesce(t.external_id, o.alert_external_id) IS NOT NULL
           ORDER BY a.position
       ) AS alert_external_ids
FROM consolidated_alerts c
LEFT JOIN consolidated_alerts parent ON parent.id = c.follow_up_of
"""
DELIVERIES = """
SELECT notification_id, channel, destination, status, attempts, delivered_at, last_attempt_at,
       error_message
FROM delivery_logs WHERE notification_id = ANY(%s) ORDER BY channel, destination
"""
ACKNOWLEDGE = """
UPDATE triggered_alerts SET acknowledged_at = now()
WHERE id = %s AND acknowledged_at IS NULL
RETURNING acknowledged_at
"""


def alert_record(row: dict[str, Any]) -> AlertRecord:
    alert = TriggeredAlert.model_validate(
        {
            "alert_id": row["external_id"],
            "rule_id": row["rule_external_id"],
            "rule_version": row["rule_version"],
            "user_id": row["user_external_id"],
            "symbol": row["symbol"],
            "priority": row["priority"],
            "title": row["title"],
            "message": row["message"],
            "triggered_at": row["triggered_at"],
            "condition_types": row["condition_types"] or [],
            "values": row["values"] or {},
        }
    )
    outcome = None
    if row["outcome_status"] is not None:
        outcome = AlertOutcome(
            status=row["outcome_status"],
            notification_id=row["notification_external_id"],
            decided_at=row["decided_at"],
        )
    return AlertRecord(
        alert=alert,
        rule_name=row["rule_name"],
        acknowledged_at=row["acknowledged_at"],
        outcome=outcome,
    )


def find_alert(
    conn: psycopg.Connection[dict[str, Any]], alert_id: str, *, lock: bool = False
) -> dict[str, Any] | None:
    """The row of one alert by its wire id (None if there is none); ``lock`` locks it."""
    query = ALERT_COLUMNS + " WHERE t.id = %s" + (" FOR UPDATE OF t" if lock else "")
    return conn.execute(query, (storage_uuid("alert", alert_id),)).fetchone()


def owned_alert(
    conn: psycopg.Connection[dict[str, Any]],
    principal: Principal,
    alert_id: str,
    *,
    write: bool = False,
    lock: bool = False,
) -> dict[str, Any]:
    """The alert if the principal may read (or write) it; 404 for a missing alert and for
    someone else's alike."""
    row = find_alert(conn, alert_id, lock=lock)
    owner = row["user_external_id"] if row is not None else None
    allowed = principal.may_write(owner) if write else principal.may_read(owner)
    if row is None or not allowed:
        raise not_found("alert", alert_id)
    return row


def single_condition_type(condition_types: list[str]) -> str | None:
    """The condition type a feedback names: the alert's only one. With several, none: the
    job then rewards each of the alert's types (a named one would be the only one rewarded)."""
    distinct = list(dict.fromkeys(condition_types))
    return distinct[0] if len(distinct) == 1 else None


def _newest_first_page(
    where: list[str],
    args: list[Any],
    time_column: str,
    from_: datetime | None,
    to: datetime | None,
    cursor: str | None,
) -> str:
    """Adds the ``[from, to)`` range on ``time_column`` and the cursor's position to a query's
    conditions; the ORDER BY that goes with them (time, then the row's key, newest first)."""
    table = time_column.split(".")[0]
    if from_ is not None:
        where.append(f"{time_column} >= %s")
        args.append(from_)
    if to is not None:
        where.append(f"{time_column} < %s")
        args.append(to)
    position = time_cursor(cursor, uuid.UUID)
    if position is not None:
        where.append(f"({time_column}, {table}.id) < (%s, %s)")
        args.extend(position)
    return f" ORDER BY {time_column} DESC, {table}.id DESC"


@router.get(
    "/alerts",
    summary="List triggered alerts, newest first",
    response_model=Page[AlertRecord],
    responses=PROBLEMS,
)
def list_alerts(
    principal: Reader,
    svc: Svc,
    user_id: UserParam = None,
    symbol: Annotated[str | None, Query(max_length=32, description="only this symbol")] = None,
    rule: Annotated[str | None, Query(max_length=128, description="only this rule id")] = None,
    priority: PriorityParam = None,
    from_: FromParam = None,
    to: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> Page[AlertRecord]:
    """The user's alerts (the caller's; analysts name ``user_id``), newest ``triggered_at``
    first, filtered by symbol, rule id, priority and a ``[from, to)`` time range."""
    user = for_user(principal, user_id)
    where = ["t.user_id = %s"]
    args: list[Any] = [storage_uuid("user", user)]
    if symbol is not None:
        where.append("t.symbol = %s")
        args.append(symbol)
    if rule is not None:
        where.append("t.rule_id = %s")
        args.append(storage_uuid("rule", rule))
    if priority:
        where.append("t.priority = ANY(%s)")
        args.append([p.value for p in priority])
    order = _newest_first_page(where, args, "t.triggered_at", from_, to, cursor)
    query = ALERT_COLUMNS + " WHERE " + " AND ".join(where) + order + " LIMIT %s"
    with svc.transaction() as conn:
        rows = conn.execute(query, [*args, limit + 1]).fetchall()
    keys = {row["external_id"]: row["id"] for row in rows}
    return page_of(
        [alert_record(row) for row in rows],
        limit,
        lambda item: [item.alert.triggered_at.isoformat(), str(keys[item.alert.alert_id])],
    )


@router.get(
    "/alerts/{alert_id}",
    summary="Read one triggered alert",
    response_model=AlertRecord,
    responses={**PROBLEMS, 404: {"description": "no such alert of the caller's"}},
)
def get_alert(alert_id: AlertIdParam, principal: Reader, svc: Svc) -> AlertRecord:
    """One alert with the values that made its conditions true and its outcome. Another
    user's alert is 404 (analysts and admins read any)."""
    with svc.transaction() as conn:
        return alert_record(owned_alert(conn, principal, alert_id))


@router.post(
    "/alerts/{alert_id}/acknowledge",
    summary="Acknowledge a triggered alert",
    response_model=AlertRecord,
    responses={**PROBLEMS, 404: {"description": "no such alert of the caller's"}},
)
def acknowledge_alert(alert_id: AlertIdParam, principal: Writer, svc: Svc) -> AlertRecord:
    """Record that the user acted on the alert: ``acknowledged_at`` is set once (the first
    acknowledgement wins; repeating it answers the same time) and the ``acted`` feedback is
    published to alerts.feedback before the acknowledgement is stored."""
    with svc.transaction() as conn:
        row = owned_alert(conn, principal, alert_id, write=True, lock=True)
        if row["acknowledged_at"] is None:
            stamped = conn.execute(ACKNOWLEDGE, (row["id"],)).fetchone()
            assert stamped is not None  # the row is locked and was not acknowledged
            row["acknowledged_at"] = stamped["acknowledged_at"]
            feedback = Feedback(
                user_id=row["user_external_id"],
                alert_id=row["external_id"],
                action=FeedbackAction.ACTED,
                ts=row["acknowledged_at"],
                symbol=row["symbol"],
                condition_type=single_condition_type(row["condition_types"] or []),
            )
            svc.publish(svc.settings.topics.feedback, [feedback])
        return alert_record(row)


@router.get(
    "/notifications",
    summary="List notifications with their deliveries, newest first",
    response_model=Page[NotificationRecord],
    responses=PROBLEMS,
)
def list_notifications(
    principal: Reader,
    svc: Svc,
    user_id: UserParam = None,
    symbol: Annotated[
        str | None, Query(max_length=32, description="only those with an alert of this symbol")
    ] = None,
    rule: Annotated[
        str | None, Query(max_length=128, description="only those with an alert of this rule")
    ] = None,
    priority: PriorityParam = None,
    from_: FromParam = None,
    to: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> Page[NotificationRecord]:
    """The user's notifications (consolidated_alerts), newest ``window_start`` first, each
    with its deliveries per channel and destination (delivery_logs). ``priority`` filters on
    the highest priority, ``[from, to)`` on the window start. Analysts see destinations
    masked."""
    user = for_user(principal, user_id)
    where = ["c.user_id = %s"]
    args: list[Any] = [storage_uuid("user", user)]
    alert_filters: list[str] = []
    alert_args: list[Any] = []
    if symbol is not None:
        alert_filters.append("t.symbol = %s")
        alert_args.append(symbol)
    if rule is not None:
        alert_filters.append("t.rule_id = %s")
        alert_args.append(storage_uuid("rule", rule))
    if alert_filters:
        where.append(
            "EXISTS (SELECT 1 FROM triggered_alerts t WHERE t.id = ANY(c.alert_ids) AND "
            + " AND ".join(alert_filters)
            + ")"
        )
        args.extend(alert_args)
    if priority:
        where.append("c.highest_priority = ANY(%s)")
        args.append([p.value for p in priority])
    order = _newest_first_page(where, args, "c.window_start", from_, to, cursor)
    query = NOTIFICATION_COLUMNS + " WHERE " + " AND ".join(where) + order + " LIMIT %s"
    with svc.transaction() as conn:
        rows = conn.execute(query, [*args, limit + 1]).fetchall()
        deliveries: dict[uuid.UUID, list[Delivery]] = {}
        for d in conn.execute(DELIVERIES, ([row["id"] for row in rows],)).fetchall():
            deliveries.setdefault(d["notification_id"], []).append(
                _delivery(d, masked=principal.masks_contacts)
            )
    keys = {row["external_id"]: row["id"] for row in rows}
    records = [
        NotificationRecord(
            notification=Notification(
                notification_id=row["external_id"],
                user_id=row["user_external_id"],
                alert_ids=row["alert_external_ids"],
                title=row["consolidated_title"],
                message=row["consolidated_message"],
                highest_priority=row["highest_priority"],
                channels=row["channels"] or [],
                window_start=row["window_start"],
                window_end=row["window_end"],
                follow_up_of=row["follow_up_of"],
            ),
            created_at=row["created_at"],
            deliveries=deliveries.get(row["id"], []),
        )
        for row in rows
    ]
    return page_of(
        records,
        limit,
        lambda item: [
            item.notification.window_start.isoformat(),
            str(keys[item.notification.notification_id]),
        ],
    )


def _delivery(row: dict[str, Any], *, masked: bool) -> Delivery:
    destination: str = row["destination"]
    if masked:
        destination = mask_destination(row["channel"], destination)
    return Delivery(
        channel=row["channel"],
        destination=destination,
        status=row["status"],
        attempts=row["attempts"],
        delivered_at=row["delivered_at"],
        last_attempt_at=row["last_attempt_at"],
        error_message=row["error_message"],
    )
