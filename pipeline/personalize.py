"""PERSONALIZE: everything keyed by user — profile, learned relevance, consolidation.

One UserDesk per user receives that user's profile updates, feedback and triggered alerts, and
emits notifications (through the consolidator) and relevance scores (through the learner).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta

from pipeline.consolidation import Consolidator
from pipeline.learning import RelevanceModel, RelevanceScore
from pipeline.messages import (
    Channel,
    Feedback,
    Notification,
    Priority,
    Profile,
    ProfileReset,
    TriggeredAlert,
)

UserInput = Profile | ProfileReset | Feedback | TriggeredAlert
UserOutput = Notification | RelevanceScore

RECENT_ALERTS_KEPT = 1000
DEFAULT_CHANNELS = [Channel.IN_APP]


@dataclass
class UserDesk:
    """The state of one user; it learns its user id from the first item it is given."""

    window: timedelta = timedelta(seconds=60)
    grace: timedelta = timedelta(seconds=5)
    user_id: str = ""
    profile: Profile | None = None
    relevance: RelevanceModel = field(init=False)
    consolidator: Consolidator = field(init=False)
    recent_symbols: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._bind(self.user_id)

    def _bind(self, user_id: str) -> None:
        self.user_id = user_id
        self.relevance = RelevanceModel(user_id)
        self.consolidator = Consolidator(user_id, window=self.window, grace=self.grace)

    def channels_for(self, priority: Priority) -> list[Channel]:
        """The profile's channels for a priority; users with no profile get the in-app feed."""
        if self.profile is None:
            return list(DEFAULT_CHANNELS)
        return list(self.profile.channels.get(priority) or DEFAULT_CHANNELS)

    def process(self, batch: list[UserInput], now: float | None = None) -> list[UserOutput]:
        """Profiles first (they apply from the next event on), then feedback and alerts by ts."""
        if not self.user_id and batch:
            self._bind(batch[0].user_id)
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
                out.extend(self._learn(item))
            else:
                self._remember(item)
                out.extend(self.consolidator.add(item, self.channels_for, now))
        return out

    def close_due(self, now: float) -> list[UserOutput]:
        return list(self.consolidator.close_due(now, self.channels_for))

    def close_all(self) -> list[UserOutput]:
        return list(self.consolidator.close_all(self.channels_for))

    def next_deadline(self) -> float | None:
        return self.consolidator.next_deadline()

    def _learn(self, feedback: Feedback) -> list[RelevanceScore]:
        if feedback.symbol is None and feedback.alert_id in self.recent_symbols:
            feedback = feedback.model_copy(
                update={"symbol": self.recent_symbols[feedback.alert_id]}
            )
        return self.relevance.learn(feedback)

    def _remember(self, alert: TriggeredAlert) -> None:
        self.recent_symbols[alert.alert_id] = alert.symbol
        while len(self.recent_symbols) > RECENT_ALERTS_KEPT:
            self.recent_symbols.popitem(last=False)
