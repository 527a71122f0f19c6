"""Notifications to their channels: stored, then delivered through the outbox.

Every notification is upserted into ``consolidated_alerts``. Its in-app copy is written at once
(the user's Redis stream; outbox row first, then an idempotent add, so a replay neither loses
nor doubles an entry). Every other channel of the notification is expanded to the user's
destinations for it (profile ``destinations``: e-mail, phone, push tokens, webhook) and handed
to the delivery core (sinks/delivery.py), which records it PENDING before any attempt and
retries, throttles and gives up per channel. A channel with no destination in the profile, or
no provider configured, is recorded FAILED with that reason, so operators see it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.messages import Channel, Destinations, Notification
from sinks.delivery import DeliveryCore
from sinks.postgres import HistoryWriter
from sinks.redis_store import InAppFeed

log = logging.getLogger("smart_alerts.notify")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A notification with the destinations of its user's profile when it was made."""

    notification: Notification
    destinations: Destinations | None


def in_app_destination(user_id: str) -> str:
    return f"redis:sa:inapp:{user_id}"


def destinations_for(
    channel: Channel, destinations: Destinations | None
) -> list[tuple[str, str | None]]:
    """(destination, secret ref) pairs of a channel in the profile's destinations."""
    if destinations is None:
        return []
    if channel is Channel.EMAIL and destinations.email:
        return [(destinations.email, None)]
    if channel in (Channel.SMS, Channel.VOICE) and destinations.phone:
        return [(destinations.phone, None)]
    if channel is Channel.PUSH:
        return [(token, None) for token in destinations.push_tokens or []]
    if channel is Channel.WEBHOOK and destinations.webhook is not None:
        return [(destinations.webhook.url, destinations.webhook.secret_ref)]
    return []


class NotificationSink:
    def __init__(
        self, history: HistoryWriter, feed: InAppFeed, delivery: DeliveryCore | None = None
    ) -> None:
        self._history = history
        self._feed = feed
        self._delivery = delivery
        if delivery is not None:
            delivery.resume()

    def write_batch(self, dispatches: list[Dispatch]) -> None:
        self._history.write_notifications([d.notification for d in dispatches])
        handovers: list[tuple[Notification, Channel, str, str | None]] = []
        for dispatch in dispatches:
            note = dispatch.notification
            for channel in note.channels:
                if channel is Channel.IN_APP:
                    self._deliver_in_app(note)
                else:
                    handovers += self._deliverable(note, channel, dispatch.destinations)
        if handovers and self._delivery is not None:
            self._delivery.submit_many(handovers)

    def _deliverable(
        self, note: Notification, channel: Channel, destinations: Destinations | None
    ) -> list[tuple[Notification, Channel, str, str | None]]:
        """The deliveries to hand over; those that cannot be made are recorded FAILED."""
        targets = destinations_for(channel, destinations)
        if not targets:
            self._give_up(
                note, channel, f"profile:{channel.value}", "no destination in the profile"
            )
            return []
        if self._delivery is None or channel not in self._delivery.senders:
            for destination, _ in targets:
                self._give_up(note, channel, destination, f"no {channel.value} provider configured")
            return []
        return [(note, channel, destination, secret_ref) for destination, secret_ref in targets]

    def _give_up(self, note: Notification, channel: Channel, destination: str, reason: str) -> None:
        nid, user = note.notification_id, note.user_id
        if self._history.record_delivery(nid, user, channel.value, destination):
            self._history.mark_failed(nid, channel.value, destination, reason, retry=False)
            log.warning("%s for %s not delivered: %s", channel.value, nid, reason)

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
        if self._delivery is not None:
            self._delivery.drain(timeout=30)
            self._delivery.close()
        self._history.close()
        self._feed.close()
