"""The features of an alert for the trained relevance model: what the user did with alerts like it.

Plain Python (no Bytewax), one ``EngagementHistory`` per user. The job keeps it beside the EMA
scores when the trained model is on (pipeline/personalize/learning.py), and training replays the
archive through the same class (pipeline/personalize/relevance_model.py), so the model is
trained on exactly the features it is served. Every time is event time.

Outcome of an alert (known at the earliest moment it is certain)
    engaged (1) at its first ``opened`` or ``acted`` feedback within ``ignore_after`` of its
    trigger; not engaged (0) at a ``dismissed`` or ``muted`` feedback before that, else at its
    deadline ``triggered_at + ignore_after``. Feedback for an alert the history has not seen
    (or has forgotten: it remembers the last ``remembered`` alerts) is not counted.

Engagement rates
    Resolved outcomes add to decayed counts (engaged, total) per key: the user, each symbol,
    each condition type and each UTC hour of the trigger (a user's hours, in whatever zone: the
    model sees the local hour separately). Counts halve every ``half_life``. A rate is smoothed
    toward its parent, ``(engaged + k·parent) / (total + k)`` with k = ``SMOOTHING``: the user's
    toward 0.5, the others toward the user's. Features carry rates as log-odds.

Features of an alert at decision time ``at`` (``features``)
    ``engagement_user``, ``engagement_symbol``, ``engagement_condition`` (mean over its condition
    types), ``engagement_hour``, ``history`` (log1p of the user's decayed outcome count),
    ``alerts_last_hour`` (log1p of the user's alerts triggered in the hour up to ``at``), and
    one-hot ``symbol=``, ``condition=`` (each type), ``priority=``, ``hour=`` (local hour of the
    trigger in the user's time zone) and ``session=`` (NYSE phase at the trigger: pre, regular,
    post, closed).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from pipeline.market_calendar import market_phase
from pipeline.messages import Feedback, FeedbackAction, TriggeredAlert

__all__ = ["FEATURE_SET", "SMOOTHING", "EngagementHistory", "Features"]

FEATURE_SET = 1  # bump when a feature changes meaning: artifacts record the set they were fit on
SMOOTHING = 3.0
RATE_WINDOW = timedelta(hours=1)

Features = dict[str, float]

_POSITIVE = frozenset({FeedbackAction.OPENED, FeedbackAction.ACTED})
_NEGATIVE = frozenset({FeedbackAction.DISMISSED, FeedbackAction.MUTED})
_USER = ("user", "")


@dataclass(frozen=True, slots=True)
class _Pending:
    symbol: str
    condition_types: tuple[str, ...]
    triggered_at: datetime
    deadline: datetime


@dataclass(slots=True)
class _Count:
    engaged: float
    total: float
    at: datetime


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class EngagementHistory:
    """One user's resolved outcomes (decayed counts) and pending alerts; it pickles."""

    def __init__(
        self, ignore_after: timedelta, half_life: timedelta, remembered: int = 1000
    ) -> None:
        self.ignore_after = ignore_after
        self.half_life = half_life
        self.remembered = remembered
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # oldest first, bounded
        self._deadlines: list[tuple[datetime, str]] = []  # heap; resolved entries skipped
        self._counts: dict[tuple[str, str], _Count] = {}
        self._triggers: list[datetime] = []  # sorted trigger times within RATE_WINDOW of newest

    def observe_alert(self, alert: TriggeredAlert) -> None:
        if alert.alert_id in self._pending:
            return
        deadline = alert.triggered_at + self.ignore_after
        self._pending[alert.alert_id] = _Pending(
            alert.symbol, tuple(dict.fromkeys(alert.condition_types)), alert.triggered_at, deadline
        )
        heapq.heappush(self._deadlines, (deadline, alert.alert_id))
        while len(self._pending) > self.remembered:
            self._pending.popitem(last=False)
        bisect.insort(self._triggers, alert.triggered_at)
        horizon = self._triggers[-1] - 2 * RATE_WINDOW
        del self._triggers[: bisect.bisect_left(self._triggers, horizon)]

    def learn(self, feedback: Feedback) -> None:
        self.expire(feedback.ts)
        pending = self._pending.get(feedback.alert_id)
        if pending is None:
            return
        if feedback.action in _POSITIVE and feedback.ts <= pending.deadline:
            self._resolve(feedback.alert_id, 1.0, feedback.ts)
        elif feedback.action in _NEGATIVE:
            self._resolve(feedback.alert_id, 0.0, feedback.ts)

    def expire(self, now: datetime) -> None:
        """Alerts whose deadline is strictly before ``now`` and that are unresolved count as not
        engaged, at their deadline, in deadline order."""
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, alert_id = heapq.heappop(self._deadlines)
            pending = self._pending.get(alert_id)
            if pending is not None and pending.deadline == deadline:
                self._resolve(alert_id, 0.0, deadline)

    def features(self, alert: TriggeredAlert, at: datetime, timezone: str) -> Features:
        """The alert's features as of ``at`` (its decision time), for a user in ``timezone``."""
        self.expire(at)
        user_rate = self._rate(_USER, 0.5, at)
        conditions = tuple(dict.fromkeys(alert.condition_types))
        condition_rates = [self._rate(("condition", c), user_rate, at) for c in conditions]
        utc_hour = str(alert.triggered_at.astimezone(_zone("UTC")).hour)
        recent = bisect.bisect_right(self._triggers, at) - bisect.bisect_right(
            self._triggers, at - RATE_WINDOW
        )
        user = self._counts.get(_USER)
        out: Features = {
            "engagement_user": _logit(user_rate),
            "engagement_symbol": _logit(self._rate(("symbol", alert.symbol), user_rate, at)),
            "engagement_condition": _logit(
                math.fsum(condition_rates) / len(condition_rates) if condition_rates else user_rate
            ),
            "engagement_hour": _logit(self._rate(("hour", utc_hour), user_rate, at)),
            "history": math.log1p(self._decayed(user, at)[1] if user is not None else 0.0),
            "alerts_last_hour": math.log1p(recent),
            f"symbol={alert.symbol}": 1.0,
            f"priority={alert.priority.value}": 1.0,
            f"hour={alert.triggered_at.astimezone(_zone(timezone)).hour}": 1.0,
            f"session={market_phase(alert.triggered_at)}": 1.0,
        }
        for condition in conditions:
            out[f"condition={condition}"] = 1.0
        return out

    # ------------------------------------------------------------------ internals

    def _resolve(self, alert_id: str, outcome: float, at: datetime) -> None:
        pending = self._pending.pop(alert_id)
        utc_hour = str(pending.triggered_at.astimezone(_zone("UTC")).hour)
        keys = [_USER, ("symbol", pending.symbol), ("hour", utc_hour)]
        keys += [("condition", c) for c in pending.condition_types]
        for key in keys:
            count = self._counts.get(key)
            engaged, total = self._decayed(count, at) if count is not None else (0.0, 0.0)
            moment = at if count is None else max(count.at, at)
            self._counts[key] = _Count(engaged + outcome, total + 1.0, moment)

    def _decayed(self, count: _Count, at: datetime) -> tuple[float, float]:
        factor = 0.5 ** (max(at - count.at, timedelta(0)) / self.half_life)
        return count.engaged * factor, count.total * factor

    def _rate(self, key: tuple[str, str], parent: float, at: datetime) -> float:
        count = self._counts.get(key)
        engaged, total = self._decayed(count, at) if count is not None else (0.0, 0.0)
        return (engaged + SMOOTHING * parent) / (total + SMOOTHING)
