"""Learning which alerts matter: relevance scores from user feedback.

Plain Python (no Bytewax): one ``RelevanceModel`` per user, held in the user's state and
snapshotted by the engine (it pickles). Every time below is event time (a feedback's ``ts``, an
alert's ``triggered_at``, the user's watermark), never the wall clock, so a replay learns the
same scores.

Scores
    One score per (user, symbol) and one per (user, condition type), each in [0, 1]. A key
    with no feedback yet has the neutral score N (``LearningConfig.neutral``, 0.5).

Rewards (``REWARDS``; ``LearningConfig.rewards``)
    acted 1.0 · opened 0.7 · snoozed 0.3 · ignored 0.2 · dismissed 0.1 · muted 0.0.
    ``delivered`` and ``unmuted`` carry no signal (no reward). ``ignored`` is synthetic: it is
    never on the wire; the model applies it to an alert that got no engagement (opened, acted,
    dismissed, snoozed or muted) within ``ignore_after`` (24 h) of its ``triggered_at``.
    Ignoring sits between dismissing (the user said no) and snoozing (the user said later): it
    is weak negative evidence, since the user may simply not have looked.

Update (exponential moving average), for each score a feedback touches::

    s ← (1 − α)·decay(s, t) + α·reward          α = LearningConfig.alpha (0.2)

with ``t`` the feedback's time (for ``ignored``: the alert's deadline, ``triggered_at +
ignore_after``); the score's ``updated_at`` becomes ``t``.

Decay (half-life, toward neutral), applied before each update and whenever a score is read at
time t::

    decay(s, t) = N + (s − N) · 0.5 ** ((t − updated_at) / half_life)

that is, with the defaults (N = 0.5, half_life = 14 days),
``score_t = 0.5 + (score − 0.5) · 0.5 ** ((t − updated_at) / 14 days)``: a score 0.9 left alone
for 14 days reads 0.7, for 28 days 0.6. When t is before ``updated_at`` (late feedback),
t − updated_at counts as 0 and ``updated_at`` does not move back.

Which scores a feedback touches
    The symbol: the feedback's ``symbol``, else the symbol of the alert it names. The condition
    types: the feedback's ``condition_type``, else every (distinct) condition type of the alert.
    The model remembers the last ``remembered_alerts`` (1,000) alerts it observed (rule id,
    symbol, condition types, trigger time); older ones are forgotten, and feedback naming a
    forgotten alert only updates what the feedback itself names.

Relevance of an alert (``RelevanceModel.score``)
    The plain mean of the decayed symbol score and the decayed score of each distinct condition
    type: (s_symbol + s_c1 + … + s_cn) / (1 + n). Alone (no condition types), the symbol score.

Ignored alerts
    ``observe_alert`` starts an alert's engagement deadline, ``triggered_at + ignore_after``.
    Engagement feedback (opened, acted, dismissed, snoozed, muted) stops it; ``delivered`` and
    ``unmuted`` do not. ``expire(now)`` applies ``ignored`` to every alert whose deadline is
    strictly before ``now``, in deadline order (``learn`` does the same up to the feedback's time
    first, so rewards always apply in event-time order). Engagement after the deadline still
    counts, on top of the ``ignored`` already applied. No deadline starts for an alert that is
    muted when observed (the user never sees it), nor for one already past its deadline. Only
    remembered alerts wait: forgetting an alert drops its deadline without a reward.

Mutes
    ``muted`` silences, for this user, the rule of the alert it names and the alert's symbol (the
    feedback's ``symbol`` instead, if it names one); ``is_muted(rule_id, symbol, at)`` is true
    when either is silenced by a mute given at or before ``at``. ``unmuted`` lifts the mute of
    the rule of the alert it names (the muting alert or any remembered alert of that rule) and
    of the symbol (the feedback's ``symbol`` if given, else the alert's). Alerts behind an
    active mute are kept beyond the bounded memory, so an ``unmuted`` naming the muting alert
    always works. ``condition_type`` plays no part in mutes.

Feedback before its alert
    A feedback naming an alert the model has not observed yet (possible when feedback is replayed
    faster than alerts are produced) applies at once to what it names itself, and is kept
    (bounded, like the memory) until the alert is observed; then the rest applies: the reward to
    the dimensions the feedback did not name (at the feedback's time), the rule mute, and no
    engagement deadline if it was engagement.

Trained model (the switch)
    With ``LearningConfig.predictor`` set (``[personalization] relevance_model = "trained"``),
    the relevance of an alert (``relevance``) is the trained model's predicted engagement from
    the alert's features (pipeline/personalize/engagement.py, kept per user from the same
    alerts and feedback), instead of the mean above. The EMA scores are learnt and published
    all the same.

Output
    Every score a call changes is returned as a ``RelevanceScore`` (its value as of its
    ``updated_at``; readers decay it with the formula above), in the order computed; the engine
    writes them to Redis ``sa:relevance:{user}`` fields ``symbol:{SYMBOL}`` and
    ``condition_type:{TYPE}`` and to PostgreSQL ``user_alert_profiles.relevance_scores``.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from pipeline.messages import Feedback, FeedbackAction, TriggeredAlert
from pipeline.personalize.engagement import EngagementHistory

__all__ = [
    "CONDITION_TYPE",
    "EngagementPredictor",
    "DEFAULT_ALPHA",
    "DEFAULT_HALF_LIFE",
    "DEFAULT_IGNORE_AFTER",
    "DEFAULT_REMEMBERED_ALERTS",
    "ENGAGEMENT",
    "IGNORED",
    "NEUTRAL_SCORE",
    "REWARDS",
    "SYMBOL",
    "LearningConfig",
    "RelevanceModel",
    "RelevanceScore",
]

NEUTRAL_SCORE = 0.5
DEFAULT_ALPHA = 0.2
DEFAULT_HALF_LIFE = timedelta(days=14)
DEFAULT_IGNORE_AFTER = timedelta(hours=24)
DEFAULT_REMEMBERED_ALERTS = 1000

SYMBOL = "symbol"
CONDITION_TYPE = "condition_type"

IGNORED = "ignored"  # synthetic action: no engagement within ignore_after; never on the wire

REWARDS: dict[FeedbackAction | str, float | None] = {
    FeedbackAction.DELIVERED: None,  # delivery says nothing about interest
    FeedbackAction.OPENED: 0.7,
    FeedbackAction.ACTED: 1.0,
    FeedbackAction.SNOOZED: 0.3,
    FeedbackAction.DISMISSED: 0.1,
    FeedbackAction.MUTED: 0.0,
    FeedbackAction.UNMUTED: None,  # lifts a mute; not a judgement of the alert
    IGNORED: 0.2,
}

# Feedback that shows the user saw the alert: it stops the alert's "ignored" deadline.
ENGAGEMENT = frozenset(
    {
        FeedbackAction.OPENED,
        FeedbackAction.ACTED,
        FeedbackAction.DISMISSED,
        FeedbackAction.SNOOZED,
        FeedbackAction.MUTED,
    }
)

_KNOWN_ACTIONS = frozenset({*(action.value for action in FeedbackAction), IGNORED})
_EARLY_FEEDBACK_PER_ALERT = 8


class EngagementPredictor(Protocol):
    """A trained model (pipeline/personalize/relevance_model.py): features -> engagement."""

    def predict(self, features: Mapping[str, float]) -> float: ...


@dataclass(frozen=True)
class LearningConfig:
    """The learning engine's parameters (defaults in the module docstring).

    ``rewards`` maps an action (a ``FeedbackAction`` or ``"ignored"``) to its reward in [0, 1],
    or None for no signal; an action left out carries no signal.
    """

    alpha: float = DEFAULT_ALPHA
    half_life: timedelta = DEFAULT_HALF_LIFE
    ignore_after: timedelta = DEFAULT_IGNORE_AFTER
    rewards: dict[FeedbackAction | str, float | None] = field(default_factory=lambda: dict(REWARDS))
    neutral: float = NEUTRAL_SCORE
    remembered_alerts: int = DEFAULT_REMEMBERED_ALERTS
    predictor: EngagementPredictor | None = None  # set: relevance is its predicted engagement

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {self.alpha!r}")
        if self.half_life <= timedelta(0):
            raise ValueError(f"half_life must be positive, not {self.half_life!r}")
        if self.ignore_after <= timedelta(0):
            raise ValueError(f"ignore_after must be positive, not {self.ignore_after!r}")
        if not 0 <= self.neutral <= 1:
            raise ValueError(f"neutral must be in [0, 1], not {self.neutral!r}")
        if self.remembered_alerts < 1:
            raise ValueError(f"remembered_alerts must be >= 1, not {self.remembered_alerts!r}")
        for action, reward in self.rewards.items():
            if str(action) not in _KNOWN_ACTIONS:
                raise ValueError(f"reward for unknown action {action!r}")
            if reward is not None and not 0 <= reward <= 1:
                raise ValueError(f"reward for {action!s} must be in [0, 1] or None: {reward!r}")

    def reward(self, action: FeedbackAction | str) -> float | None:
        return self.rewards.get(action)


@dataclass(frozen=True, slots=True)
class RelevanceScore:
    """One changed score, as published: ``dimension`` is ``symbol`` or ``condition_type``.

    ``score`` is the value as of ``updated_at`` (the event time of the update); it decays
    toward neutral after that (module docstring).
    """

    user_id: str
    dimension: str
    key: str
    score: float
    updated_at: datetime


class _Seen(NamedTuple):
    """What the model remembers of an alert it observed."""

    rule_id: str
    symbol: str
    condition_types: tuple[str, ...]
    triggered_at: datetime


class _Score(NamedTuple):
    value: float
    updated_at: datetime


class RelevanceModel:
    """The relevance scores, remembered alerts, engagement deadlines and mutes of one user.

    All state is plain containers, so the model pickles (the engine snapshots it) and behaves
    the same after a round trip.
    """

    _history: EngagementHistory | None = None  # the trained model's features; class default
    # so that models pickled before the switch existed load

    def __init__(self, user_id: str, config: LearningConfig | None = None) -> None:
        self.user_id = user_id
        self.config = config if config is not None else LearningConfig()
        self._scores: dict[str, dict[str, _Score]] = {SYMBOL: {}, CONDITION_TYPE: {}}
        self._alerts: OrderedDict[str, _Seen] = OrderedDict()  # oldest first, bounded
        self._waiting: dict[str, datetime] = {}  # alert id -> deadline; a subset of _alerts
        self._deadlines: list[tuple[datetime, int, str]] = []  # heap; stale entries skipped
        self._sequence = 0
        self._clock: datetime | None = None  # the latest time expire() was given
        self._early: OrderedDict[str, list[Feedback]] = OrderedDict()  # feedback before alert
        self._muted_rules: dict[str, datetime] = {}
        self._muted_symbols: dict[str, datetime] = {}
        self._mute_sources: dict[str, _Seen] = {}  # alerts behind active mutes, kept unbounded
        if self.config.predictor is not None:
            self._history = EngagementHistory(
                self.config.ignore_after, self.config.half_life, self.config.remembered_alerts
            )

    # ------------------------------------------------------------------ reading

    def score(self, symbol: str, condition_types: Iterable[str], at: datetime) -> float:
        """Relevance of an alert at ``at``: the mean of the decayed symbol score and the decayed
        score of each distinct condition type (neutral for keys without feedback)."""
        values = [self.dimension_score(SYMBOL, symbol, at)]
        values.extend(
            self.dimension_score(CONDITION_TYPE, condition, at)
            for condition in dict.fromkeys(condition_types)
        )
        return math.fsum(values) / len(values)

    def relevance(self, alert: TriggeredAlert, at: datetime, timezone: str) -> float:
        """The relevance the job decides with: the trained model's predicted engagement when
        one is configured, else ``score`` (``timezone``: the user's, for the local hour)."""
        predictor, history = self.config.predictor, self._history
        if predictor is None or history is None:
            return self.score(alert.symbol, alert.condition_types, at)
        return predictor.predict(history.features(alert, at, timezone))

    def dimension_score(self, dimension: str, key: str, at: datetime) -> float:
        """One decayed score: ``dimension`` is ``"symbol"`` or ``"condition_type"``."""
        current = self._scores[dimension].get(key)
        if current is None:
            return self.config.neutral
        return self._decayed(current, at)

    def is_muted(self, rule_id: str, symbol: str, at: datetime | None = None) -> bool:
        """True when the user muted this rule or this symbol (and has not unmuted it); with
        ``at``, only by a mute given at or before ``at`` (a mute learnt before the alert it
        names, as a replay may bring it, does not silence that alert itself)."""
        muted = (self._muted_rules.get(rule_id), self._muted_symbols.get(symbol))
        return any(since is not None and (at is None or since <= at) for since in muted)

    # ------------------------------------------------------------------ input

    def observe_alert(self, alert: TriggeredAlert) -> list[RelevanceScore]:
        """Remember an alert and start its engagement deadline. Observing an alert again does
        nothing. Returns the scores changed by feedback that arrived before the alert (usually
        none)."""
        if alert.alert_id in self._alerts:
            return []
        conditions = tuple(dict.fromkeys(alert.condition_types))
        seen = _Seen(alert.rule_id, alert.symbol, conditions, alert.triggered_at)
        self._alerts[alert.alert_id] = seen
        if self._history is not None:
            self._history.observe_alert(alert)
        if alert.alert_id in self._mute_sources:
            self._mute_sources[alert.alert_id] = seen
        deadline = alert.triggered_at + self.config.ignore_after
        if not self.is_muted(alert.rule_id, alert.symbol, alert.triggered_at) and (
            self._clock is None or deadline >= self._clock
        ):
            self._waiting[alert.alert_id] = deadline
            heapq.heappush(self._deadlines, (deadline, self._sequence, alert.alert_id))
            self._sequence += 1
        out = [score for fb in self._early.pop(alert.alert_id, []) for score in self._late(fb)]
        self._forget_beyond_bound()
        return out

    def learn(self, feedback: Feedback) -> list[RelevanceScore]:
        """Apply one feedback: first the ``ignored`` deadlines before its time (``expire``), then
        its reward to the symbol and condition-type scores, its mute or unmute, and the end of
        its alert's deadline if it is engagement."""
        out = self.expire(feedback.ts)
        if self._history is not None:
            self._history.learn(feedback)
        action = feedback.action
        seen = self._find(feedback.alert_id)
        if action in ENGAGEMENT:
            self._waiting.pop(feedback.alert_id, None)
        if seen is None and action is not FeedbackAction.DELIVERED:
            self._remember_early(feedback)
        symbol = feedback.symbol
        if symbol is None and seen is not None:
            symbol = seen.symbol
        rule_id = seen.rule_id if seen is not None else None
        if action is FeedbackAction.MUTED:
            self._mute(feedback.alert_id, seen, rule_id, symbol, feedback.ts)
        elif action is FeedbackAction.UNMUTED:
            self._unmute(rule_id, symbol)
        conditions: tuple[str, ...] = ()
        if feedback.condition_type is not None:
            conditions = (feedback.condition_type,)
        elif seen is not None:
            conditions = seen.condition_types
        out.extend(self._reward(action, symbol, conditions, feedback.ts))
        return out

    def expire(self, now: datetime) -> list[RelevanceScore]:
        """Apply ``ignored`` to the alerts whose deadline is strictly before ``now`` and that got
        no engagement; call it with the user's event-time watermark."""
        if self._clock is None or now > self._clock:
            self._clock = now
        out: list[RelevanceScore] = []
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, _, alert_id = heapq.heappop(self._deadlines)
            if self._waiting.get(alert_id) != deadline:
                continue  # engaged, forgotten, or superseded
            del self._waiting[alert_id]
            seen = self._alerts[alert_id]
            out.extend(self._reward(IGNORED, seen.symbol, seen.condition_types, deadline))
        return out

    def next_expiry(self) -> datetime | None:
        """The watermark past which ``expire`` may have work (an earliest unengaged deadline)."""
        return self._deadlines[0][0] if self._deadlines else None

    # ------------------------------------------------------------------ internals

    def _decayed(self, current: _Score, at: datetime) -> float:
        neutral = self.config.neutral
        elapsed = max(at - current.updated_at, timedelta(0))
        return neutral + (current.value - neutral) * 0.5 ** (elapsed / self.config.half_life)

    def _update(self, dimension: str, key: str, reward: float, at: datetime) -> RelevanceScore:
        scores = self._scores[dimension]
        current = scores.get(key)
        if current is None:
            before, updated_at = self.config.neutral, at
        else:
            before, updated_at = self._decayed(current, at), max(current.updated_at, at)
        alpha = self.config.alpha
        value = (1 - alpha) * before + alpha * reward
        scores[key] = _Score(value, updated_at)
        return RelevanceScore(self.user_id, dimension, key, value, updated_at)

    def _reward(
        self,
        action: FeedbackAction | str,
        symbol: str | None,
        conditions: Iterable[str],
        at: datetime,
    ) -> list[RelevanceScore]:
        reward = self.config.reward(action)
        if reward is None:
            return []
        out = []
        if symbol is not None:
            out.append(self._update(SYMBOL, symbol, reward, at))
        for condition in dict.fromkeys(conditions):
            out.append(self._update(CONDITION_TYPE, condition, reward, at))
        return out

    def _find(self, alert_id: str) -> _Seen | None:
        seen = self._alerts.get(alert_id)
        return seen if seen is not None else self._mute_sources.get(alert_id)

    def _mute(
        self,
        alert_id: str,
        seen: _Seen | None,
        rule_id: str | None,
        symbol: str | None,
        at: datetime,
    ) -> None:
        if rule_id is not None:
            self._muted_rules.setdefault(rule_id, at)
        if symbol is not None:
            self._muted_symbols.setdefault(symbol, at)
        if seen is not None and (rule_id is not None or symbol is not None):
            self._mute_sources[alert_id] = seen

    def _unmute(self, rule_id: str | None, symbol: str | None) -> None:
        if rule_id is not None:
            self._muted_rules.pop(rule_id, None)
        if symbol is not None:
            self._muted_symbols.pop(symbol, None)
        for alert_id, seen in list(self._mute_sources.items()):
            if seen.rule_id not in self._muted_rules and seen.symbol not in self._muted_symbols:
                del self._mute_sources[alert_id]

    def _remember_early(self, feedback: Feedback) -> None:
        kept = self._early.setdefault(feedback.alert_id, [])
        kept.append(feedback)
        del kept[:-_EARLY_FEEDBACK_PER_ALERT]
        self._early.move_to_end(feedback.alert_id)
        while len(self._early) > self.config.remembered_alerts:
            self._early.popitem(last=False)

    def _late(self, feedback: Feedback) -> list[RelevanceScore]:
        """What a feedback that came before its alert could not do then: the alert is known."""
        seen = self._alerts[feedback.alert_id]
        if feedback.action in ENGAGEMENT:
            self._waiting.pop(feedback.alert_id, None)
        symbol = seen.symbol if feedback.symbol is None else None  # named ones are done
        if feedback.action is FeedbackAction.MUTED:
            self._mute(feedback.alert_id, seen, seen.rule_id, symbol, feedback.ts)
        elif feedback.action is FeedbackAction.UNMUTED:
            self._unmute(seen.rule_id, symbol)
        conditions = seen.condition_types if feedback.condition_type is None else ()
        return self._reward(feedback.action, symbol, conditions, feedback.ts)

    def _forget_beyond_bound(self) -> None:
        while len(self._alerts) > self.config.remembered_alerts:
            alert_id, _ = self._alerts.popitem(last=False)
            self._waiting.pop(alert_id, None)  # its heap entry is skipped when it comes up
        if len(self._deadlines) > 2 * self.config.remembered_alerts + 64:
            self._deadlines = [entry for entry in self._deadlines if entry[2] in self._waiting]
            heapq.heapify(self._deadlines)
