"""CONSOLIDATE: one user's alerts in tumbling event-time windows become one notification each.

Windows are aligned, ``[floor(triggered_at, window), +window)``. A window closes when the user's
event-time watermark (the latest ``triggered_at`` seen, minus ``grace``) passes its end, when the
live job's wall-clock deadline for it passes (so a lone alert is not held until the next one), or
at the end of a bounded input. CRITICAL alerts never wait: each becomes a notification at once.

A late alert for a window that already closed re-emits that window's notification with the same
id and the added alert, so every store upserts on the notification id (ARCHITECTURE.md §3).
Closed windows are remembered for ``late_retention``; an alert later than that joins the window
its own time falls in as a new notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipeline.ids import notification_id
from pipeline.messages import Channel, Notification, Priority, TriggeredAlert

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ChannelPolicy = Callable[[Priority], list[Channel]]


def window_start(ts: datetime, window: timedelta) -> datetime:
    return EPOCH + ((ts - EPOCH) // window) * window


@dataclass
class Window:
    start: datetime
    alerts: list[TriggeredAlert] = field(default_factory=list)
    deadline: float | None = None  # wall-clock seconds, live mode only


@dataclass
class Consolidator:
    user_id: str
    window: timedelta = timedelta(seconds=60)
    grace: timedelta = timedelta(seconds=5)
    late_retention: timedelta = timedelta(hours=1)
    open: dict[datetime, Window] = field(default_factory=dict)
    closed: dict[datetime, Window] = field(default_factory=dict)
    watermark: datetime | None = None

    def add(
        self, alert: TriggeredAlert, channels: ChannelPolicy, now: float | None = None
    ) -> list[Notification]:
        """Take one alert; return the notifications it completes (CRITICAL, late, or closed)."""
        if alert.priority is Priority.CRITICAL:
            return [self._critical(alert, channels)]
        start = window_start(alert.triggered_at, self.window)
        out: list[Notification] = []
        if start in self.closed:
            closed = self.closed[start]
            if any(a.alert_id == alert.alert_id for a in closed.alerts):
                return []
            closed.alerts.append(alert)
            out.append(self._notification(closed, channels))
        else:
            window = self.open.setdefault(start, Window(start))
            if any(a.alert_id == alert.alert_id for a in window.alerts):
                return []
            if window.deadline is None and now is not None:
                window.deadline = now + (self.window + self.grace).total_seconds()
            window.alerts.append(alert)
        if self.watermark is None or alert.triggered_at > self.watermark:
            self.watermark = alert.triggered_at
        return out + self._close(lambda w: self._event_time_due(w), channels)

    def close_due(self, now: float, channels: ChannelPolicy) -> list[Notification]:
        """Close the windows whose wall-clock deadline passed (live mode)."""
        return self._close(lambda w: w.deadline is not None and w.deadline <= now, channels)

    def close_all(self, channels: ChannelPolicy) -> list[Notification]:
        """End of a bounded input: every open window is complete."""
        return self._close(lambda w: True, channels)

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.open.values() if w.deadline is not None]
        return min(deadlines, default=None)

    def _event_time_due(self, window: Window) -> bool:
        if self.watermark is None:
            return False
        return window.start + self.window + self.grace <= self.watermark

    def _close(self, due: Callable[[Window], bool], channels: ChannelPolicy) -> list[Notification]:
        out = []
        for start in sorted(self.open):
            window = self.open[start]
            if due(window):
                del self.open[start]
                self.closed[start] = window
                out.append(self._notification(window, channels))
        self._forget_old_closed()
        return out

    def _forget_old_closed(self) -> None:
        if self.watermark is None:
            return
        horizon = self.watermark - self.late_retention
        for start in [s for s in self.closed if s + self.window < horizon]:
            del self.closed[start]

    def _critical(self, alert: TriggeredAlert, channels: ChannelPolicy) -> Notification:
        return compose(
            notification_id(self.user_id, alert.triggered_at, kind=f"critical|{alert.alert_id}"),
            self.user_id,
            [alert],
            alert.triggered_at,
            alert.triggered_at,
            channels,
        )

    def _notification(self, window: Window, channels: ChannelPolicy) -> Notification:
        return compose(
            notification_id(self.user_id, window.start),
            self.user_id,
            window.alerts,
            window.start,
            window.start + self.window,
            channels,
        )


def compose(
    notification_id_: str,
    user_id: str,
    alerts: list[TriggeredAlert],
    start: datetime,
    end: datetime,
    channels: ChannelPolicy,
) -> Notification:
    """One notification for ``alerts``: grouped by symbol, repeats of a rule merged with a count."""
    ordered = sorted(alerts, key=lambda a: (a.triggered_at, a.alert_id))
    highest = max((a.priority for a in ordered), key=lambda p: p.rank)
    by_symbol: dict[str, dict[str, list[TriggeredAlert]]] = {}
    for alert in ordered:
        by_symbol.setdefault(alert.symbol, {}).setdefault(alert.rule_id, []).append(alert)
    lines = []
    for by_rule in by_symbol.values():
        for repeats in by_rule.values():
            latest = repeats[-1]
            count = f" (x{len(repeats)})" if len(repeats) > 1 else ""
            lines.append(f"{latest.title}{count}: {latest.message}")
    if len(ordered) == 1:
        title = ordered[0].title
    else:
        title = f"{len(ordered)} alerts: {', '.join(by_symbol)}"
    return Notification(
        notification_id=notification_id_,
        user_id=user_id,
        alert_ids=list(dict.fromkeys(a.alert_id for a in ordered)),
        title=title[:255],
        message="\n".join(lines)[:4096],
        highest_priority=highest,
        channels=channels(highest),
        window_start=start,
        window_end=end,
    )
