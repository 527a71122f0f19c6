"""Deterministic identifiers: the same input gives the same ids on every run and every worker."""

from __future__ import annotations

import uuid
from datetime import datetime

from pipeline.messages import format_timestamp

NAMESPACE = uuid.UUID("6f0c2d1e-9b7a-5c43-8e21-5a9d3f7b4c10")


def alert_id(rule_id: str, rule_version: int, ts: datetime, symbol: str) -> str:
    """UUIDv5 of (rule_id, rule_version, triggering event's ts, symbol), ARCHITECTURE.md §2."""
    name = f"alert|{rule_id}|{rule_version}|{format_timestamp(ts)}|{symbol}"
    return str(uuid.uuid5(NAMESPACE, name))


def notification_id(user_id: str, window_start: datetime, kind: str = "window") -> str:
    """One notification per (user, window start): a re-emitted window keeps its id."""
    return str(
        uuid.uuid5(NAMESPACE, f"notification|{kind}|{user_id}|{format_timestamp(window_start)}")
    )


def follow_up_id(notification_id: str, alert_ids: list[str]) -> str:
    """A follow-up of a notification: the same alerts arriving again find the same id."""
    name = f"follow-up|{notification_id}|{','.join(sorted(alert_ids))}"
    return str(uuid.uuid5(NAMESPACE, name))


def storage_uuid(kind: str, wire_id: str) -> uuid.UUID:
    """The PostgreSQL key of a wire id: the id itself when it is a UUID, else UUIDv5 of it.

    Wire ids may be any string; the history schema keys rows by UUID and keeps the wire id
    beside it (``external_id``) so analysts can join either way.
    """
    try:
        return uuid.UUID(wire_id)
    except ValueError:
        return uuid.uuid5(NAMESPACE, f"{kind}|{wire_id}")
