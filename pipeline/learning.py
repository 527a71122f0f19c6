"""Learning which alerts matter: relevance scores from user feedback.

A score is an exponential moving average of the reward of each feedback action, per
(user, symbol). Scores live in [0, 1]; a (user, symbol) with no feedback has NEUTRAL_SCORE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline.messages import Feedback, FeedbackAction

NEUTRAL_SCORE = 0.5
DEFAULT_ALPHA = 0.2

REWARDS: dict[FeedbackAction, float | None] = {
    FeedbackAction.DELIVERED: None,  # delivery says nothing about interest
    FeedbackAction.OPENED: 0.7,
    FeedbackAction.ACTED: 1.0,
    FeedbackAction.SNOOZED: 0.3,
    FeedbackAction.DISMISSED: 0.1,
    FeedbackAction.MUTED: 0.0,
}


@dataclass(frozen=True, slots=True)
class RelevanceScore:
    """One score as published to Redis: ``dimension`` is ``symbol`` (later also others)."""

    user_id: str
    dimension: str
    key: str
    score: float
    updated_at: datetime


@dataclass
class RelevanceModel:
    """The scores of one user; plain state, snapshotted by the engine."""

    user_id: str
    alpha: float = DEFAULT_ALPHA
    by_symbol: dict[str, float] = field(default_factory=dict)

    def score(self, symbol: str) -> float:
        return self.by_symbol.get(symbol, NEUTRAL_SCORE)

    def learn(self, feedback: Feedback) -> list[RelevanceScore]:
        reward = REWARDS[feedback.action]
        if reward is None or feedback.symbol is None:
            return []
        previous = self.score(feedback.symbol)
        updated = (1 - self.alpha) * previous + self.alpha * reward
        self.by_symbol[feedback.symbol] = updated
        return [RelevanceScore(self.user_id, "symbol", feedback.symbol, updated, feedback.ts)]
