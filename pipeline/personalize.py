"""PERSONALIZE: everything keyed by user — profile, learned relevance, consolidation, timing.

One UserDesk per user receives that user's profile updates, feedback and triggered alerts, and
decides what reaches the user and when (docs/personalization.md):

1. A muted rule or symbol: the alert is stored, recorded MUTED, and notifies nobody.
2. CRITICAL: a notification at once, whatever the window, budget, quiet hours or relevance.
3. Anything else joins the user's consolidation window. When the window closes:
   - alerts older than the staleness limit of their priority are recorded STALE, not pushed;
   - the rest are ordered by relevance; alerts below the profile's ``min_relevance`` only go to
     the in-app feed (the notification keeps the push channels only for the others);
   - during quiet hours, or outside market hours for a ``market_hours_only`` profile, the
     notification goes to the in-app feed only, and a digest of those alerts is pushed when the
     quiet period ends;
   - past the hourly budget (``max_per_hour`` pushed notifications), the alerts are DEFERRED
     and folded into the next notification that fits, never dropped.
Every alert ends NOTIFIED (in exactly one notification), STALE or MUTED; the outcomes are an
output of their own so the history records them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.consolidation import ClosedWindow, Consolidator, compose
from pipeline.ids import notification_id
from pipeline.learning import LearningConfig, RelevanceModel, RelevanceScore
from pipeline.market_calendar import is_regular_session, next_regular_open
from pipeline.messages import (
    Channel,
    Feedback,
    Notification,
    Priority,
    Profile,
    ProfileReset,
    TriggeredAlert,
)
from pipeline.quiet_hours import in_quiet_hours, quiet_hours_end

UserInput = Profile | ProfileReset | Feedback | TriggeredAlert

DEFAULT_CHANNELS = (Channel.IN_APP,)
HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What became of one alert: NOTIFIED (with its notification), STALE, MUTED or DEFERRED."""

    alert_id: str
    user_id: str
    status: str
    notification_id: str | None
    at: datetime


UserOutput = Notification | RelevanceScore | AlertOutcome


@dataclass(frozen=True)
class PersonalizationConfig:
    window: timedelta = timedelta(seconds=60)
    grace: timedelta = timedelta(seconds=5)
    stale_after: dict[Priority, timedelta] = field(
        default_factory=lambda: {
            Priority.LOW: timedelta(hours=1),
            Priority.MEDIUM: timedelta(minutes=30),
            Priority.HIGH: timedelta(minutes=10),
        }
    )
    learning: LearningConfig = field(default_factory=LearningConfig)


@dataclass
class UserDesk:
    """The state of one user; it learns its user id from the first item it is given."""

    config: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    user_id: str = ""
    profile: Profile | None = None
    relevance: RelevanceModel | None = None
    consolidator: Consolidator = field(init=False)
    watermark: datetime | None = None
    pushed: deque[datetime] = field(default_factory=deque)  # when budgeted notifications went out
    deferred: list[TriggeredAlert] = field(default_factory=list)
    held: list[TriggeredAlert] = field(default_factory=list)  # in-app only, awaiting the digest
    held_until: datetime | None = None
    last_digest: tuple[datetime, list[TriggeredAlert]] | None = None

    def __post_init__(self) -> None:
        self.consolidator = Consolidator(grace=self.config.grace)

    # ------------------------------------------------------------ profile

    def channels_for(self, priority: Priority) -> list[Channel]:
        """The profile's channels for a priority; users with no profile get the in-app feed."""
        if self.profile is None:
            return list(DEFAULT_CHANNELS)
        return list(self.profile.channels.get(priority) or DEFAULT_CHANNELS)

    def window_length(self) -> timedelta:
        digest = self.profile.digest_seconds if self.profile is not None else None
        return timedelta(seconds=digest) if digest else self.config.window

    def quiet_until(self, at: datetime) -> datetime | None:
        """When the user's current quiet period ends, or None when they can be notified now."""
        if self.profile is None:
            return None
        ends = []
        if in_quiet_hours(self.profile, at):
            ends.append(quiet_hours_end(self.profile, at))
        if self.profile.market_hours_only and not is_regular_session(at):
            ends.append(next_regular_open(at))
        found = [end for end in ends if end is not None]
        return max(found) if found else None

    # ------------------------------------------------------------ input

    def process(self, batch: list[UserInput], now: float | None = None) -> list[UserOutput]:
        """Profiles first (they apply from the next event on), then feedback and alerts by ts."""
        if not self.user_id and batch:
            self.user_id = batch[0].user_id
            self.relevance = RelevanceModel(self.user_id, self.config.learning)
        out: list[UserOutput] = []
        timed: list[Feedback | TriggeredAlert] = []
        for item in batch:
            if isinstance(item, Profile):
                self.profile = item
            elif isinstance(item, ProfileReset):
                self.profile = None
            else:
                timed.append(item)
        timed.sort(key=lambda item: item.ts if isinstance(item, Feedback) else item.triggered_at)
        for item in timed:
            if isinstance(item, Feedback):
                out.extend(self._model().learn(item))
                self._advance(item.ts, out)
            else:
                self._advance(item.triggered_at, out)
                out.extend(self._on_alert(item, now))
        return out

    def close_due(self, now: float) -> list[UserOutput]:
        """Live mode: windows, digests and deferred alerts whose wall-clock time came."""
        out: list[UserOutput] = []
        for closed in self.consolidator.close_due(now):
            out.extend(self._on_closed(closed))
        at = datetime.fromtimestamp(now).astimezone()
        self._release(at, out)
        return out

    def close_all(self) -> list[UserOutput]:
        """End of a bounded input: everything waiting goes out now."""
        out: list[UserOutput] = []
        for closed in self.consolidator.close_all():
            out.extend(self._on_closed(closed))
        if self.deferred:
            out.extend(self._emit(self.deferred, self._last_time(), "budget", budgeted=False))
            self.deferred = []
        if self.held:
            assert self.held_until is not None
            out.extend(self._digest())
        return out

    def next_deadline(self) -> float | None:
        deadlines = [self.consolidator.next_deadline()]
        if self.held_until is not None:
            deadlines.append(self.held_until.timestamp())
        if self.deferred and self.pushed:
            deadlines.append((self.pushed[0] + HOUR).timestamp())
        return min((d for d in deadlines if d is not None), default=None)

    # ------------------------------------------------------------ alerts

    def _model(self) -> RelevanceModel:
        assert self.relevance is not None
        return self.relevance

    def _on_alert(self, alert: TriggeredAlert, now: float | None) -> list[UserOutput]:
        model = self._model()
        out: list[UserOutput] = list(model.observe_alert(alert))
        if model.is_muted(alert.rule_id, alert.symbol):
            return [
                *out,
                AlertOutcome(alert.alert_id, self.user_id, "MUTED", None, alert.triggered_at),
            ]
        if alert.priority is Priority.CRITICAL:
            nid = notification_id(
                self.user_id, alert.triggered_at, kind=f"critical|{alert.alert_id}"
            )
            note = compose(
                nid,
                self.user_id,
                [alert],
                alert.triggered_at,
                alert.triggered_at,
                self.channels_for(Priority.CRITICAL),
            )
            return [
                *out,
                note,
                AlertOutcome(alert.alert_id, self.user_id, "NOTIFIED", nid, alert.triggered_at),
            ]
        for closed in self.consolidator.add(alert, self.window_length(), now):
            out.extend(self._on_closed(closed))
        return out

    def _advance(self, ts: datetime, out: list[UserOutput]) -> None:
        """Event time moved to ``ts``: expire unengaged alerts, close the windows it passed (in
        time order, before anything newer), then release digests and deferred alerts due."""
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
        out.extend(self._model().expire(self.watermark))
        for closed in self.consolidator.advance(self.watermark):
            out.extend(self._on_closed(closed))
        self._release(self.watermark, out)

    def _release(self, at: datetime, out: list[UserOutput]) -> None:
        if self.held and self.held_until is not None and at >= self.held_until:
            out.extend(self._digest())
        if self.deferred and self._budget_left(at):
            out.extend(self._emit(self.deferred, at, "budget", budgeted=True))
            self.deferred = []

    def _last_time(self) -> datetime:
        assert self.watermark is not None
        return self.watermark

    # ------------------------------------------------------------ closed windows

    def _on_closed(self, closed: ClosedWindow) -> list[UserOutput]:
        at = closed.end  # decisions are made as of the window's end, however late it is seen
        nid = notification_id(self.user_id, closed.start)
        if closed.late:
            # The window went out already: re-emit it under its id with the late alert added.
            alerts = self._ordered(closed.alerts, at)
            note = compose(
                nid, self.user_id, alerts, closed.start, closed.end, self._channels(alerts)
            )
            return [note, *self._notified(alerts, nid, at)]
        out: list[UserOutput] = []
        fresh = []
        for alert in [*self.deferred, *closed.alerts]:
            limit = self.config.stale_after.get(alert.priority)
            if limit is not None and at - alert.triggered_at > limit:
                out.append(AlertOutcome(alert.alert_id, self.user_id, "STALE", None, at))
            else:
                fresh.append(alert)
        self.deferred = []
        if not fresh:
            return out
        quiet_end = self.quiet_until(at)
        if quiet_end is not None:
            self.held.extend(fresh)
            self.held_until = (
                quiet_end if self.held_until is None else min(self.held_until, quiet_end)
            )
            alerts = self._ordered(fresh, at)
            note = compose(nid, self.user_id, alerts, closed.start, closed.end, [Channel.IN_APP])
            return [*out, note, *self._notified(alerts, nid, at)]
        channels = self._channels(fresh)
        if self._pushes(channels) and not self._budget_left(at):
            self.deferred = fresh
            return out + [
                AlertOutcome(a.alert_id, self.user_id, "DEFERRED", None, at) for a in fresh
            ]
        return out + self._emit(fresh, at, None, budgeted=True, window=(closed.start, closed.end))

    def _emit(
        self,
        alerts: list[TriggeredAlert],
        at: datetime,
        kind: str | None,
        *,
        budgeted: bool,
        window: tuple[datetime, datetime] | None = None,
    ) -> list[UserOutput]:
        start, end = window if window is not None else (at, at)
        nid = (
            notification_id(self.user_id, start, kind=kind)
            if kind
            else notification_id(self.user_id, start)
        )
        ordered = self._ordered(alerts, at)
        channels = self._channels(ordered)
        if budgeted and self._pushes(channels):
            self.pushed.append(at)
        note = compose(nid, self.user_id, ordered, start, end, channels)
        return [note, *self._notified(ordered, nid, at)]

    def _digest(self) -> list[UserOutput]:
        """The alerts held during a quiet period, pushed once it ends. Alerts of that period
        seen after its digest went out re-emit the digest under its id, like a late window."""
        assert self.held_until is not None
        at, held = self.held_until, self.held
        if self.last_digest is not None and self.last_digest[0] == at:
            held = [*self.last_digest[1], *held]
        else:
            self.pushed.append(at)
        self.held, self.held_until, self.last_digest = [], None, (at, held)
        alerts = self._ordered(held, at)
        nid = notification_id(self.user_id, at, kind="digest")
        highest = max((a.priority for a in alerts), key=lambda p: p.rank)
        start = min(a.triggered_at for a in alerts)
        return [compose(nid, self.user_id, alerts, start, at, self.channels_for(highest))]

    def _notified(self, alerts: list[TriggeredAlert], nid: str, at: datetime) -> list[UserOutput]:
        return [AlertOutcome(a.alert_id, self.user_id, "NOTIFIED", nid, at) for a in alerts]

    # ------------------------------------------------------------ relevance and budget

    def _relevance(self, alert: TriggeredAlert, at: datetime) -> float:
        return self._model().score(alert.symbol, alert.condition_types, at)

    def _ordered(self, alerts: list[TriggeredAlert], at: datetime) -> list[TriggeredAlert]:
        """Most relevant first; equal relevance in time order."""
        return sorted(alerts, key=lambda a: (-self._relevance(a, at), a.triggered_at, a.alert_id))

    def _channels(self, alerts: list[TriggeredAlert]) -> list[Channel]:
        """Channels of the highest priority among alerts relevant enough to push; in-app only
        when none is."""
        floor = self.profile.min_relevance if self.profile is not None else None
        at = self._last_time() if self.watermark is not None else alerts[0].triggered_at
        pushable = [a for a in alerts if floor is None or self._relevance(a, at) >= floor]
        if not pushable:
            return [Channel.IN_APP]
        return self.channels_for(max((a.priority for a in pushable), key=lambda p: p.rank))

    @staticmethod
    def _pushes(channels: list[Channel]) -> bool:
        return any(channel is not Channel.IN_APP for channel in channels)

    def _budget_left(self, at: datetime) -> bool:
        limit = self.profile.max_per_hour if self.profile is not None else None
        while self.pushed and self.pushed[0] <= at - HOUR:
            self.pushed.popleft()
        return limit is None or len(self.pushed) < limit
