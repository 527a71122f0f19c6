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

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.event_time import Progress, ReferenceGate, Watermark, WatermarkJoin
from pipeline.ids import notification_id
from pipeline.market_calendar import is_regular_session, next_regular_open
from pipeline.messages import (
    Channel,
    DeadLetter,
    Destinations,
    Feedback,
    Notification,
    Priority,
    Profile,
    ProfileReset,
    TriggeredAlert,
)
from pipeline.personalize.consolidation import ClosedWindow, Consolidator, compose
from pipeline.personalize.learning import LearningConfig, RelevanceModel, RelevanceScore
from pipeline.personalize.quiet_hours import in_quiet_hours, quiet_hours_end
from pipeline.safety import SafetyNet

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


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A notification with what its delivery needs: the destinations of the user's profile
    when it was made, and its alerts (a follow-up is composed from those not sent before)."""

    notification: Notification
    destinations: Destinations | None
    alerts: tuple[TriggeredAlert, ...]


UserOutput = Dispatch | RelevanceScore | AlertOutcome


@dataclass(frozen=True)
class PersonalizationConfig:
    window: timedelta = timedelta(seconds=60)
    lateness: timedelta = timedelta(seconds=5)  # added to a live window's wall-clock deadline
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
    """The state of one user; it learns its user id from the first item it is given.

    Time moves by ``advance(watermark)``: the watermark of every input partition
    (pipeline/event_time.py) closes windows and releases digests and deferred alerts.
    """

    config: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    user_id: str = ""
    profile: Profile | None = None
    relevance: RelevanceModel | None = None
    consolidator: Consolidator = field(init=False)
    watermark: datetime | None = None  # the latest watermark given to advance()
    pushed: deque[datetime] = field(default_factory=deque)  # when budgeted notifications went out
    deferred: list[TriggeredAlert] = field(default_factory=list)
    deferred_at: datetime | None = None  # when they were deferred (a window's end)
    held: list[TriggeredAlert] = field(default_factory=list)  # in-app only, awaiting the digest
    held_until: datetime | None = None
    last_digest: tuple[datetime, list[TriggeredAlert]] | None = None

    def __post_init__(self) -> None:
        self.consolidator = Consolidator(lateness=self.config.lateness)
        if self.user_id and self.relevance is None:
            self.relevance = RelevanceModel(self.user_id, self.config.learning)

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
        out: list[UserOutput] = []
        timed: list[Feedback | TriggeredAlert] = []
        for item in batch:
            if isinstance(item, Profile | ProfileReset):
                self.set_profile(item)
            else:
                timed.append(item)
        timed.sort(key=event_time)
        for item in timed:
            out.extend(self.take(item, now))
        return out

    def set_profile(self, item: Profile | ProfileReset) -> None:
        self._know(item.user_id)
        self.profile = item if isinstance(item, Profile) else None

    def take(self, item: Feedback | TriggeredAlert, now: float | None = None) -> list[UserOutput]:
        """One feedback (learning) or alert (muted, at once, or into its window)."""
        self._know(item.user_id)
        if isinstance(item, Feedback):
            return list(self._model().learn(item))
        return self._on_alert(item, now)

    def advance(self, watermark: datetime) -> list[UserOutput]:
        """Event time reached ``watermark``: expire unengaged alerts, close the windows it
        passed (in time order), then release digests and deferred alerts due."""
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        out: list[UserOutput] = list(self._model().expire(self.watermark))
        for closed in self.consolidator.advance(self.watermark):
            out.extend(self._on_closed(closed))
        self._release(self.watermark, out)
        return out

    def next_due(self) -> datetime | None:
        """The watermark at which ``advance`` has something to do."""
        dues = [self.consolidator.next_end(), self.held_until, self._model().next_expiry()]
        if self.deferred:
            dues.append(self._budget_free_at())
        return min((due for due in dues if due is not None), default=None)

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
            out.extend(self._emit(self.deferred, self._budget_free_at(), "budget", budgeted=False))
            self.deferred = []
        if self.held:
            assert self.held_until is not None
            out.extend(self._digest())
        return out

    def next_deadline(self) -> float | None:
        deadlines = [self.consolidator.next_deadline()]
        if self.held_until is not None:
            deadlines.append(self.held_until.timestamp())
        if self.deferred:
            deadlines.append(self._budget_free_at().timestamp())
        return min((d for d in deadlines if d is not None), default=None)

    # ------------------------------------------------------------ alerts

    def _know(self, user_id: str) -> None:
        if not self.user_id:
            self.user_id = user_id
            self.relevance = RelevanceModel(user_id, self.config.learning)

    def _model(self) -> RelevanceModel:
        assert self.relevance is not None
        return self.relevance

    def _on_alert(self, alert: TriggeredAlert, now: float | None) -> list[UserOutput]:
        model = self._model()
        out: list[UserOutput] = list(model.observe_alert(alert))
        if model.is_muted(alert.rule_id, alert.symbol, alert.triggered_at):
            return [
                *out,
                AlertOutcome(alert.alert_id, self.user_id, "MUTED", None, alert.triggered_at),
            ]
        if alert.priority is Priority.CRITICAL:
            nid = notification_id(
                self.user_id, alert.triggered_at, kind=f"critical|{alert.alert_id}"
            )
            note = self._dispatch(
                nid,
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

    def _release(self, at: datetime, out: list[UserOutput]) -> None:
        if self.held and self.held_until is not None and at >= self.held_until:
            out.extend(self._digest())
        if self.deferred:
            free_at = self._budget_free_at()
            if free_at <= at and self._budget_left(free_at):
                out.extend(self._emit(self.deferred, free_at, "budget", budgeted=True))
                self.deferred = []

    # ------------------------------------------------------------ closed windows

    def _on_closed(self, closed: ClosedWindow) -> list[UserOutput]:
        at = closed.end  # decisions are made as of the window's end, however late it is seen
        nid = notification_id(self.user_id, closed.start)
        if closed.late:
            # The window went out already: re-emit it under its id with the late alert added.
            alerts = self._ordered(closed.alerts, at)
            note = self._dispatch(nid, alerts, closed.start, closed.end, self._channels(alerts, at))
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
            note = self._dispatch(nid, alerts, closed.start, closed.end, [Channel.IN_APP])
            return [*out, note, *self._notified(alerts, nid, at)]
        channels = self._channels(fresh, at)
        if self._pushes(channels) and not self._budget_left(at):
            self.deferred, self.deferred_at = fresh, at
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
        channels = self._channels(ordered, at)
        if budgeted and self._pushes(channels):
            self.pushed.append(at)
        note = self._dispatch(nid, ordered, start, end, channels)
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
        return [self._dispatch(nid, alerts, start, at, self.channels_for(highest))]

    def _dispatch(
        self,
        nid: str,
        alerts: list[TriggeredAlert],
        start: datetime,
        end: datetime,
        channels: list[Channel],
    ) -> Dispatch:
        note = compose(nid, self.user_id, alerts, start, end, channels)
        destinations = self.profile.destinations if self.profile is not None else None
        return Dispatch(note, destinations, tuple(alerts))

    def _notified(self, alerts: list[TriggeredAlert], nid: str, at: datetime) -> list[UserOutput]:
        return [AlertOutcome(a.alert_id, self.user_id, "NOTIFIED", nid, at) for a in alerts]

    # ------------------------------------------------------------ relevance and budget

    def _relevance(self, alert: TriggeredAlert, at: datetime) -> float:
        timezone = self.profile.timezone if self.profile is not None else "UTC"
        return self._model().relevance(alert, at, timezone)

    def _ordered(self, alerts: list[TriggeredAlert], at: datetime) -> list[TriggeredAlert]:
        """Most relevant first; equal relevance in time order."""
        return sorted(alerts, key=lambda a: (-self._relevance(a, at), a.triggered_at, a.alert_id))

    def _channels(self, alerts: list[TriggeredAlert], at: datetime) -> list[Channel]:
        """Channels of the highest priority among alerts relevant enough to push at ``at`` (the
        decision's event time); in-app only when none is."""
        floor = self.profile.min_relevance if self.profile is not None else None
        pushable = [a for a in alerts if floor is None or self._relevance(a, at) >= floor]
        if not pushable:
            return [Channel.IN_APP]
        return self.channels_for(max((a.priority for a in pushable), key=lambda p: p.rank))

    @staticmethod
    def _pushes(channels: list[Channel]) -> bool:
        return any(channel is not Channel.IN_APP for channel in channels)

    def _budget_free_at(self) -> datetime:
        """When the deferred alerts may go: the first moment from their deferral on with room
        in the hourly budget. Event time only, so the id of their notification is the same
        whenever and wherever it is computed."""
        assert self.deferred_at is not None
        limit = self.profile.max_per_hour if self.profile is not None else None
        if limit is None or len(self.pushed) < limit:
            return self.deferred_at
        return max(self.deferred_at, self.pushed[len(self.pushed) - limit] + HOUR)

    def _budget_left(self, at: datetime) -> bool:
        limit = self.profile.max_per_hour if self.profile is not None else None
        while self.pushed and self.pushed[0] <= at - HOUR:
            self.pushed.popleft()
        return limit is None or len(self.pushed) < limit


# ---------------------------------------------------------------- the personalize step's state

DeskInput = UserInput | Progress | Watermark
DeskOutput = UserOutput | DeadLetter


def event_time(item: Feedback | TriggeredAlert) -> datetime:
    return item.ts if isinstance(item, Feedback) else item.triggered_at


@dataclass
class DeskShard:
    """Everything one personalization key keeps: the desks of its users, the watermark of every
    evaluation shard and feedback partition, and the alerts and feedback held until the
    profiles are loaded.

    A shard's watermark follows that shard's alerts, and a feedback partition's marker its
    feedback, so once all have passed a window's end, every alert of that window is here and
    every feedback before it has been learnt (pipeline/event_time.py). Desks are woken in
    watermark order from a heap of the times they have work at, so a watermark costs nothing for
    the users with nothing pending.
    """

    config: PersonalizationConfig
    evaluate_shards: frozenset[str]
    feedback_parts: frozenset[str]
    profile_parts: frozenset[str]
    net: SafetyNet
    desks: dict[str, UserDesk] = field(default_factory=dict)
    clock: WatermarkJoin = field(init=False)
    gate: ReferenceGate = field(init=False)
    held: list[Feedback | TriggeredAlert] = field(default_factory=list)
    # Alerts wait until every feedback partition has passed their time (or is caught up or
    # idle), so that a mute is learnt before the alerts after it, whatever is read first.
    waiting: list[tuple[datetime, int, TriggeredAlert]] = field(default_factory=list)  # heap
    arrivals: int = 0  # orders the waiting alerts of one time
    feedback_read: WatermarkJoin = field(init=False)
    watermark: datetime | None = None
    due: list[tuple[datetime, str]] = field(default_factory=list)  # heap, stale entries harmless
    live_due: list[tuple[float, str]] = field(default_factory=list)  # heap of wall deadlines

    def __post_init__(self) -> None:
        self.clock = WatermarkJoin(self.evaluate_shards | self.feedback_parts)
        self.feedback_read = WatermarkJoin(self.feedback_parts)
        self.gate = ReferenceGate(self.profile_parts)

    def expect(
        self,
        evaluate_shards: frozenset[str],
        feedback_parts: frozenset[str],
        profile_parts: frozenset[str],
    ) -> None:
        """After a restart: the shards and partitions of this run."""
        self.evaluate_shards, self.feedback_parts = evaluate_shards, feedback_parts
        self.profile_parts = profile_parts
        self.clock.expect(evaluate_shards | feedback_parts)
        self.feedback_read.expect(feedback_parts)
        self.gate.expected = profile_parts

    def process(
        self, batch: list[DeskInput], now: float | None = None, *, everything: bool = False
    ) -> list[DeskOutput]:
        """Profiles at once; feedback and alerts in time order once the profiles are loaded
        (alerts once the feedback before them is read, or all of them with ``everything``);
        then the desks whose time came under the (possibly advanced) watermark."""
        out: list[DeskOutput] = []
        timed: list[Feedback | TriggeredAlert] = []
        for item in batch:
            if isinstance(item, Watermark):
                self.clock.observe(item.shard, item.complete_before, caught_up=item.caught_up)
            elif isinstance(item, Progress):
                self.gate.observe(item)
                newest = item.newest - self.config.lateness if item.newest is not None else None
                self.clock.observe(item.part, newest, caught_up=item.caught_up, idle=item.idle)
                self.feedback_read.observe(
                    item.part, item.newest, caught_up=item.caught_up, idle=item.idle
                )
            elif isinstance(item, Profile | ProfileReset):
                out.extend(self.net.run(item, self._set_profile))
            else:
                timed.append(item)
        if not self.gate.is_open:
            self.held.extend(timed)
            return out
        if self.held:
            timed, self.held = self.held + timed, []
        timed = self._in_feedback_order(timed, everything=everything)
        out.extend(self.net.run_each(timed, lambda i: self._desk(i.user_id).take(i, now)))
        for user in {item.user_id for item in timed}:
            self._schedule(user)
        watermark = self.clock.watermark
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = watermark
        if self.watermark is not None:
            out.extend(self._advance(self.watermark))
        return out

    @property
    def caught_up(self) -> bool:
        """Every market partition was at its end: wall-clock deadlines may close windows."""
        return self.clock.caught_up

    def close_due(self, now: float) -> list[DeskOutput]:
        """Live mode, input caught up: windows, digests and deferred alerts whose wall-clock time
        came."""
        if not self.caught_up:
            return []
        return self._wake(self.live_due, now, lambda user: self.desks[user].close_due(now))

    def close_all(self) -> list[DeskOutput]:
        """End of a bounded input: everything held or waiting goes out now."""
        out: list[DeskOutput] = []
        if self.held or self.waiting:
            self.gate.is_open = True
            out.extend(self.process([], everything=True))
        for user in list(self.desks):
            out.extend(self.net.run_for_user(user, lambda u: self.desks[u].close_all()))
        return out

    def next_deadline(self) -> float | None:
        """The wall-clock time of the next ``close_due`` with work (live mode, caught up)."""
        return self.live_due[0][0] if self.live_due and self.caught_up else None

    def _in_feedback_order(
        self, timed: list[Feedback | TriggeredAlert], *, everything: bool = False
    ) -> list[Feedback | TriggeredAlert]:
        """Feedback at once; alerts once every feedback partition has passed their time (all of
        them with ``everything``): the ones waiting and ``timed``'s, in time order."""
        for item in timed:
            if isinstance(item, TriggeredAlert):
                self.arrivals += 1
                heapq.heappush(self.waiting, (item.triggered_at, self.arrivals, item))
        ready: list[Feedback | TriggeredAlert] = [i for i in timed if isinstance(i, Feedback)]
        while self.waiting and (everything or self.feedback_read.passed(self.waiting[0][0])):
            ready.append(heapq.heappop(self.waiting)[2])
        ready.sort(key=event_time)
        return ready

    def _desk(self, user_id: str) -> UserDesk:
        desk = self.desks.get(user_id)
        if desk is None:
            desk = self.desks[user_id] = UserDesk(self.config, user_id=user_id)
        return desk

    def _set_profile(self, item: Profile | ProfileReset) -> list[DeskOutput]:
        self._desk(item.user_id).set_profile(item)
        return []

    def _advance(self, watermark: datetime) -> list[DeskOutput]:
        return self._wake(self.due, watermark, lambda user: self.desks[user].advance(watermark))

    def _wake(
        self,
        heap: list[tuple[Any, str]],
        until: Any,
        work: Callable[[str], list[UserOutput]],
    ) -> list[DeskOutput]:
        """``work`` once for each desk with an entry in ``heap`` due by ``until``; then each is
        scheduled again for what it still has to do."""
        out: list[DeskOutput] = []
        woken: set[str] = set()
        while heap and heap[0][0] <= until:
            _, user = heapq.heappop(heap)
            if user not in woken:
                woken.add(user)
                out.extend(self.net.run_for_user(user, work))
        for user in woken:
            self._schedule(user)
        return out

    def _schedule(self, user: str) -> None:
        desk = self.desks.get(user)
        if desk is None:
            return
        due = desk.next_due()
        if due is not None:
            heapq.heappush(self.due, (due, user))
        deadline = desk.next_deadline()
        if deadline is not None:
            heapq.heappush(self.live_due, (deadline, user))
