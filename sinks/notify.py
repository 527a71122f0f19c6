"""Notifications to their channels: stored, published, then delivered through the outbox.

For each batch of notifications from the personalization step, one PostgreSQL transaction
(``HistoryWriter.store_notifications``):

1. reads which alerts each notification id has sent already (its own and its follow-ups');
2. stores a notification not sent before; for one sent before (a window re-emitted with a late
   alert, or again after a crash), composes a *follow-up* of only the alerts it lacks, with an
   id of its own and ``follow_up_of`` set. A stored row never changes, so a notification row
   never loses an alert it was sent with, and every alert reaches its user exactly once;
3. records every delivery of what it stores in ``delivery_logs`` (the outbox): the in-app feed
   and each destination of each channel, PENDING; FAILED at once when the profile has no
   destination or no provider is configured; STALE on the push channels (push, e-mail, SMS,
   voice, webhook) when the notification is older than its priority's age limit by the wall
   clock (a replay of old data, a backlog after an outage), in which case it is still shown in
   the in-app feed;
4. publishes what it stores on ``alerts.notifications`` before committing (at-least-once:
   consumers de-duplicate on ``notification_id``).

After the commit the in-app entries are added (idempotently) and the other deliveries go to the
delivery core (sinks/delivery.py). Open in-app rows left by a crash are added at start.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from pipeline.config import Personalization
from pipeline.ids import follow_up_id, storage_uuid
from pipeline.logs import delivery_fields, notification_fields, remember_rules
from pipeline.messages import Channel, Destinations, Notification, Priority
from pipeline.personalize.consolidation import compose
from pipeline.personalize.desk import Dispatch
from sinks.delivery import DeliveryCore
from sinks.kafka import MessagePublisher
from sinks.postgres import HistoryWriter, Plan, PlannedDelivery
from sinks.redis_store import InAppFeed

log = logging.getLogger("smart_alerts.notify")


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
    if channel is Channel.WEBHOOK:
        hooks = [destinations.webhook] if destinations.webhook is not None else []
        targets: dict[str, str | None] = {}
        for hook in hooks + (destinations.webhooks or []):
            # one delivery per URL: a delivery is recorded per (notification, channel, URL)
            targets.setdefault(hook.url, hook.secret_ref)
        return list(targets.items())
    return []


class NotificationSink:
    def __init__(
        self,
        history: HistoryWriter,
        feed: InAppFeed,
        delivery: DeliveryCore | None = None,
        *,
        publisher: MessagePublisher | None = None,
        push_age_limits: dict[Priority, timedelta] | None = None,
        clock: Callable[[], float] = time.time,
        drain_on_close: Callable[[], bool] = lambda: True,
        close_grace: float = 10.0,
    ) -> None:
        self._history = history
        self._feed = feed
        self._delivery = delivery
        self._publisher = publisher
        self._limits = push_age_limits or Personalization().stale_limits()
        self._clock = clock
        self._drain_on_close = drain_on_close
        self._close_grace = close_grace
        self._resume_in_app()
        if delivery is not None:
            delivery.resume()

    def write_batch(self, dispatches: list[Dispatch]) -> None:
        now = self._clock()

        def decide(sent: dict[str, set[uuid.UUID] | None]) -> Plan:
            plan: Plan = []
            for dispatch in dispatches:
                note = self._to_send(dispatch, sent)
                if note is not None:
                    remember_rules(note, dispatch.alerts)
                    plan.append((note, self._plan(note, dispatch.destinations, now)))
            return plan

        publish = self._publisher.publish if self._publisher is not None else None
        stored = self._history.store_notifications(
            [d.notification.notification_id for d in dispatches], decide, publish
        )
        handovers: list[tuple[Notification, Channel, str, str | None]] = []
        for note, open_deliveries in stored:
            log.info(
                "notification stored",
                extra={
                    **notification_fields(note),
                    "priority": note.highest_priority.value,
                    "channels": [channel.value for channel in note.channels],
                    "follow_up_of": note.follow_up_of,
                    "open_deliveries": len(open_deliveries),
                },
            )
            for d in open_deliveries:
                if d.channel == Channel.IN_APP.value:
                    self._deliver_in_app(note, d.destination)
                else:
                    handovers.append((note, Channel(d.channel), d.destination, d.secret_ref))
        if handovers and self._delivery is not None:
            self._delivery.enqueue_recorded(handovers)

    @staticmethod
    def _to_send(dispatch: Dispatch, sent: dict[str, set[uuid.UUID] | None]) -> Notification | None:
        """The notification itself when its id was never sent, a follow-up of the alerts it
        has not sent yet, or None (a replay: nothing new)."""
        note = dispatch.notification
        nid = note.notification_id
        already = sent.get(nid)
        if already is None:
            sent[nid] = {storage_uuid("alert", a) for a in note.alert_ids}
            return note
        missing = [a for a in dispatch.alerts if storage_uuid("alert", a.alert_id) not in already]
        if not missing:
            return None
        already.update(storage_uuid("alert", a.alert_id) for a in missing)
        fid = follow_up_id(nid, [a.alert_id for a in missing])
        return compose(
            fid, note.user_id, missing, note.window_start, note.window_end, note.channels, nid
        )

    def _plan(
        self, note: Notification, destinations: Destinations | None, now: float
    ) -> list[PlannedDelivery]:
        """Every delivery of a notification; a stale one is shown in-app and not pushed."""
        age = now - note.window_end.timestamp()
        limit = self._limits[note.highest_priority].total_seconds()
        stale = age > limit
        channels = list(note.channels)
        if stale and Channel.IN_APP not in channels:
            channels.append(Channel.IN_APP)
        plan: list[PlannedDelivery] = []
        for channel in channels:
            if channel is Channel.IN_APP:
                plan.append(PlannedDelivery(channel.value, in_app_destination(note.user_id)))
                continue
            targets = destinations_for(channel, destinations)
            if not targets:
                reason = "no destination in the profile"
                plan.append(_given_up(channel, f"profile:{channel.value}", "FAILED", reason))
            elif stale:
                reason = (
                    f"not pushed: {_duration(age)} old when it would have been sent, over the "
                    f"{note.highest_priority.value} limit of {_duration(limit)}; shown in-app"
                )
                plan += [_given_up(channel, target, "STALE", reason) for target, _ in targets]
            elif self._delivery is None or channel not in self._delivery.senders:
                reason = f"no {channel.value} provider configured"
                plan += [_given_up(channel, target, "FAILED", reason) for target, _ in targets]
            else:
                plan += [PlannedDelivery(channel.value, t, ref) for t, ref in targets]
        for d in plan:
            if d.status != "PENDING":
                log.warning(
                    "%s for %s not delivered: %s", d.channel, note.notification_id, d.error,
                    extra=delivery_fields(note, d.channel, d.destination, d.status, 0),
                )  # fmt: skip
        return plan

    def _deliver_in_app(self, notification: Notification, destination: str) -> None:
        nid = notification.notification_id
        try:
            entry_id = self._feed.publish(notification)
        except Exception as exc:
            self._history.mark_failed(nid, Channel.IN_APP.value, destination, str(exc), retry=True)
            raise
        self._history.mark_delivered(nid, Channel.IN_APP.value, destination, entry_id)
        log.info(
            "delivered %s via in_app", nid,
            extra=delivery_fields(notification, Channel.IN_APP.value, destination, "DELIVERED", 1),
        )  # fmt: skip

    def _resume_in_app(self) -> None:
        """In-app rows a crash left open: the feed is idempotent, so adding them is safe."""
        for row in self._history.open_deliveries([Channel.IN_APP.value]):
            self._deliver_in_app(row.notification, row.destination)

    def close(self) -> None:
        """The end of a bounded run drains what is queued (up to 30 s); a stop does not start
        new attempts. Either way calls under way get ``close_grace`` seconds, then their claims
        are released for the next start."""
        if self._delivery is not None:
            if self._drain_on_close():
                self._delivery.drain(timeout=30.0)
            self._delivery.close(timeout=self._close_grace)
        if self._publisher is not None:
            self._publisher.close()
        self._history.close()
        self._feed.close()


def _given_up(channel: Channel, destination: str, status: str, reason: str) -> PlannedDelivery:
    return PlannedDelivery(channel.value, destination, None, status, reason)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
