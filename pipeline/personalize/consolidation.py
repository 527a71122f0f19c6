"""CONSOLIDATE: one user's alerts in tumbling event-time windows.

Windows are aligned, ``[floor(triggered_at, length), +length)``; the length is the user's digest
window and may change between windows (an alert joins the open window that covers its time
first). A window closes when the watermark (``advance``: no alert triggered before it will
follow, from every input partition; pipeline/event_time.py) reaches its end, when the live
job's wall-clock deadline for it passes while the input is caught up (so a lone alert is not
held until the next one), or at the end of a bounded input.

An alert for a window that already closed re-opens nothing: the closed window is returned
again with the alert added (``late=True``) under the same notification id; the notification
sink sends only what it did not send before, as a follow-up with an id of its own
(sinks/notify.py). Closed windows are remembered for ``late_retention`` of event time; an alert
later than that for a window the watermark passed closes a window of its own at once.

What a closed window becomes (channels, staleness, budget, quiet hours) is decided by the user
desk (pipeline/personalize/desk.py); ``compose`` writes the notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipeline.messages import Channel, Notification, TriggeredAlert

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(ts: datetime, length: timedelta) -> datetime:
    return EPOCH + ((ts - EPOCH) // length) * length


@dataclass
class Window:
    start: datetime
    end: datetime
    alerts: list[TriggeredAlert] = field(default_factory=list)
    deadline: float | None = None  # wall-clock seconds, live mode only

    def has(self, alert: TriggeredAlert) -> bool:
        return any(a.alert_id == alert.alert_id for a in self.alerts)


@dataclass(frozen=True)
class ClosedWindow:
    start: datetime
    end: datetime
    alerts: list[TriggeredAlert]
    late: bool = False


@dataclass
class Consolidator:
    lateness: timedelta = timedelta(seconds=5)  # added to a live window's wall-clock deadline
    late_retention: timedelta = timedelta(hours=1)
    open: dict[datetime, Window] = field(default_factory=dict)
    closed: dict[datetime, Window] = field(default_factory=dict)
    watermark: datetime | None = None

    def add(
        self, alert: TriggeredAlert, length: timedelta, now: float | None = None
    ) -> list[ClosedWindow]:
        """Take one alert; return the window it re-emits when late, or the window of its own it
        closes at once when the watermark passed it already."""
        ts = alert.triggered_at
        window = self._covering(self.open, ts)
        late_window = None if window is not None else self._covering(self.closed, ts)
        if late_window is not None:
            if late_window.has(alert):
                return []
            late_window.alerts.append(alert)
            return [
                ClosedWindow(late_window.start, late_window.end, list(late_window.alerts), True)
            ]
        if window is None:
            start, end = window_start(ts, length), window_start(ts, length) + length
            # After a change of length, start where an overlapping earlier window ends.
            for other in [*self.open.values(), *self.closed.values()]:
                if other.start <= start < other.end:
                    start = other.end
            window = self.open[start] = Window(start, end)
            if now is not None:
                window.deadline = now + (length + self.lateness).total_seconds()
        if not window.has(alert):
            window.alerts.append(alert)
        return self._close(self._event_time_due)

    def advance(self, watermark: datetime) -> list[ClosedWindow]:
        """No alert triggered before ``watermark`` will come: close the windows it passed."""
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        return self._close(self._event_time_due)

    def close_due(self, now: float) -> list[ClosedWindow]:
        """Close the windows whose wall-clock deadline passed (live mode)."""
        return self._close(lambda w: w.deadline is not None and w.deadline <= now)

    def close_all(self) -> list[ClosedWindow]:
        """End of a bounded input: every open window is complete."""
        return self._close(lambda w: True)

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.open.values() if w.deadline is not None]
        return min(deadlines, default=None)

    def next_end(self) -> datetime | None:
        """The watermark at which the next open window closes."""
        return min((w.end for w in self.open.values()), default=None)

    @staticmethod
    def _covering(windows: dict[datetime, Window], ts: datetime) -> Window | None:
        for window in windows.values():
            if window.start <= ts < window.end:
                return window
        return None

    def _event_time_due(self, window: Window) -> bool:
        return self.watermark is not None and window.end <= self.watermark

    def _close(self, due: Callable[[Window], bool]) -> list[ClosedWindow]:
        out = []
        for start in sorted(self.open):
            window = self.open[start]
            if due(window):
                del self.open[start]
                self.closed[start] = window
                out.append(ClosedWindow(window.start, window.end, list(window.alerts)))
        self._forget_old_closed()
        return out

    def _forget_old_closed(self) -> None:
        if self.watermark is None:
            return
        horizon = self.watermark - self.late_retention
        for start in [s for s, w in self.closed.items() if w.end < horizon]:
            del self.closed[start]


def compose(
    notification_id: str,
    user_id: str,
    alerts: list[TriggeredAlert],
    start: datetime,
    end: datetime,
    channels: list[Channel],
    follow_up_of: str | None = None,
) -> Notification:
    """One notification for ``alerts`` in the given order (most relevant first): one alert as
    its title and message; several grouped by symbol, repeats of a rule merged into one line
    with a count."""
    highest = max((a.priority for a in alerts), key=lambda p: p.rank)
    if len(alerts) == 1:  # its title names the alert: the body is the alert's message alone
        title, message = alerts[0].title, alerts[0].message
    else:
        by_symbol: dict[str, dict[str, list[TriggeredAlert]]] = {}
        for alert in alerts:
            by_symbol.setdefault(alert.symbol, {}).setdefault(alert.rule_id, []).append(alert)
        lines = []
        for by_rule in by_symbol.values():
            for repeats in by_rule.values():
                latest = max(repeats, key=lambda a: a.triggered_at)
                count = f" (x{len(repeats)})" if len(repeats) > 1 else ""
                lines.append(f"{latest.title}{count}: {latest.message}")
        title, message = f"{len(alerts)} alerts: {', '.join(by_symbol)}", "\n".join(lines)
    return Notification(
        notification_id=notification_id,
        user_id=user_id,
        alert_ids=list(dict.fromkeys(a.alert_id for a in alerts)),
        title=title[:255],
        message=message[:4096],
        highest_priority=highest,
        channels=channels,
        window_start=start,
        window_end=end,
        follow_up_of=follow_up_of,
    )
