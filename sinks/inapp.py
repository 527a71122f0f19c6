"""The in-app feed channel: the notification row in PostgreSQL, then the user's Redis stream.

Delivery follows the outbox order of ARCHITECTURE.md §2: the notification and a PENDING
delivery row are committed before the stream entry is written, and the entry is written at most
once per notification (the feed's own idempotent add), so a replay after a crash neither loses
nor doubles an entry.
"""

from __future__ import annotations

import logging

from pipeline.messages import Channel, Notification
from sinks.postgres import HistoryWriter
from sinks.redis_store import InAppFeed

log = logging.getLogger("smart_alerts.inapp")


def in_app_destination(user_id: str) -> str:
    return f"redis:sa:inapp:{user_id}"


class NotificationSink:
    """Stores every notification and delivers those routed to the in-app channel."""

    def __init__(self, history: HistoryWriter, feed: InAppFeed) -> None:
        self._history = history
        self._feed = feed

    def write_batch(self, notifications: list[Notification]) -> None:
        self._history.write_notifications(notifications)
        for notification in notifications:
            if Channel.IN_APP in notification.channels:
                self._deliver_in_app(notification)

    def _deliver_in_app(self, notification: Notification) -> None:
        nid, user = notification.notification_id, notification.user_id
        destination = in_app_destination(user)
        if not self._history.record_delivery(nid, user, Channel.IN_APP.value, destination):
            return
        try:
            entry_id = self._feed.publish(notification)
        except Exception as exc:
            self._history.mark_failed(nid, Channel.IN_APP.value, destination, str(exc), retry=True)
            raise
        self._history.mark_delivered(nid, Channel.IN_APP.value, destination, entry_id)

    def close(self) -> None:
        self._history.close()
        self._feed.close()
