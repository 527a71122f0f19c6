"""The learning engine (pipeline/personalize/learning.py).

Expected values are computed here from the formulas documented in the module docstring, not
from the implementation:

    update: s <- (1 - alpha) * decay(s, t) + alpha * reward
    decay:  decay(s, t) = 0.5 + (s - 0.5) * 0.5 ** ((t - updated_at) / half_life)
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import pytest

from pipeline.messages import Feedback, FeedbackAction, TriggeredAlert
from pipeline.personalize.learning import (
    IGNORED,
    REWARDS,
    LearningConfig,
    RelevanceModel,
    RelevanceScore,
)
from tests.unit.helpers import T0

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
ALPHA = 0.2
NEUTRAL = 0.5
HALF_LIFE_DAYS = 14.0


def ema(before: float, reward: float, alpha: float = ALPHA) -> float:
    return (1 - alpha) * before + alpha * reward


def decay(score: float, days: float, half_life_days: float = HALF_LIFE_DAYS) -> float:
    return NEUTRAL + (score - NEUTRAL) * 0.5 ** (days / half_life_days)


def make_alert(
    alert_id: str = "a-1",
    *,
    rule_id: str = "r-1",
    symbol: str = "AAPL",
    conditions: tuple[str, ...] = ("price_crosses_above", "rsi_above"),
    at: datetime = T0,
) -> TriggeredAlert:
    return TriggeredAlert(
        alert_id=alert_id,
        rule_id=rule_id,
        rule_version=1,
        user_id="u-1",
        symbol=symbol,
        priority="MEDIUM",
        title=f"{symbol}: {rule_id}",
        message="something happened",
        triggered_at=at,
        condition_types=list(conditions),
        values={},
    )


def fb(
    action: str,
    at: datetime,
    alert_id: str = "a-1",
    *,
    symbol: str | None = None,
    condition_type: str | None = None,
) -> Feedback:
    return Feedback(
        user_id="u-1",
        alert_id=alert_id,
        action=action,
        ts=at,
        symbol=symbol,
        condition_type=condition_type,
    )


def keyed(scores: list[RelevanceScore]) -> dict[tuple[str, str], float]:
    return {(s.dimension, s.key): s.score for s in scores}


def described(scores: list[RelevanceScore]) -> list[tuple[object, ...]]:
    return [(s.user_id, s.dimension, s.key, s.score, s.updated_at) for s in scores]


def model_with_alert(**alert_fields: object) -> RelevanceModel:
    model = RelevanceModel("u-1")
    assert model.observe_alert(make_alert(**alert_fields)) == []  # type: ignore[arg-type]
    return model


# ---------------------------------------------------------------- rewards and the EMA


def test_documented_rewards_and_defaults() -> None:
    assert REWARDS == {
        "acted": 1.0,
        "opened": 0.7,
        "snoozed": 0.3,
        "ignored": 0.2,
        "dismissed": 0.1,
        "muted": 0.0,
        "delivered": None,
        "unmuted": None,
    }
    config = LearningConfig()
    assert (config.alpha, config.half_life, config.ignore_after) == (0.2, 14 * DAY, 24 * HOUR)
    assert (config.neutral, config.remembered_alerts) == (0.5, 1000)
    assert config.rewards == REWARDS and config.rewards is not REWARDS


def test_one_feedback_updates_the_symbol_and_each_condition_type_of_its_alert() -> None:
    model = model_with_alert()
    scores = model.learn(fb("acted", T0 + HOUR))
    first = ema(NEUTRAL, 1.0)
    assert first == pytest.approx(0.6)
    assert described(scores) == [
        ("u-1", "symbol", "AAPL", pytest.approx(first), T0 + HOUR),
        ("u-1", "condition_type", "price_crosses_above", pytest.approx(first), T0 + HOUR),
        ("u-1", "condition_type", "rsi_above", pytest.approx(first), T0 + HOUR),
    ]


def test_two_feedbacks_three_days_apart_decay_before_the_second_update() -> None:
    model = model_with_alert()
    model.observe_alert(make_alert("a-2", conditions=("rsi_above",), at=T0 + 3 * DAY))
    model.learn(fb("acted", T0))
    scores = keyed(model.learn(fb("dismissed", T0 + 3 * DAY, "a-2")))
    after_acted = ema(NEUTRAL, 1.0)
    expected = ema(decay(after_acted, 3), 0.1)
    assert expected == pytest.approx(0.8 * (0.5 + 0.1 * 0.5 ** (3 / 14)) + 0.2 * 0.1)
    assert scores == {
        ("symbol", "AAPL"): pytest.approx(expected),
        ("condition_type", "rsi_above"): pytest.approx(expected),
    }
    # price_crosses_above was not in a-2: it keeps its first value, decaying from T0.
    at = T0 + 10 * DAY
    assert model.dimension_score("condition_type", "price_crosses_above", at) == pytest.approx(
        decay(after_acted, 10)
    )
    assert model.dimension_score("symbol", "AAPL", at) == pytest.approx(decay(expected, 7))


def test_a_read_decays_toward_neutral_with_the_half_life() -> None:
    model = model_with_alert()
    model.learn(fb("acted", T0))
    assert model.dimension_score("symbol", "AAPL", T0) == pytest.approx(0.6)
    assert model.dimension_score("symbol", "AAPL", T0 + 14 * DAY) == pytest.approx(0.55)
    assert model.dimension_score("symbol", "AAPL", T0 + 28 * DAY) == pytest.approx(0.525)
    assert model.dimension_score("symbol", "AAPL", T0 - DAY) == pytest.approx(0.6)  # no "undecay"
    assert model.dimension_score("symbol", "never-seen", T0) == NEUTRAL
    # Below neutral it rises toward it the same way.
    model.learn(fb("muted", T0, symbol="TSLA"))
    low = ema(NEUTRAL, 0.0)  # 0.4
    assert model.dimension_score("symbol", "TSLA", T0 + 14 * DAY) == pytest.approx(0.45)
    assert decay(low, 14) == pytest.approx(0.45)


def test_alpha_and_half_life_are_configurable() -> None:
    model = RelevanceModel("u-1", LearningConfig(alpha=0.5, half_life=2 * DAY))
    model.learn(fb("acted", T0, symbol="AAPL"))
    (second,) = model.learn(fb("opened", T0 + DAY, symbol="AAPL"))
    expected = ema(decay(ema(NEUTRAL, 1.0, 0.5), 1, 2), 0.7, 0.5)
    assert second.score == pytest.approx(expected)


def test_late_feedback_is_applied_without_decay_and_keeps_the_latest_time() -> None:
    model = RelevanceModel("u-1")
    model.learn(fb("acted", T0 + 5 * DAY, symbol="AAPL"))
    (late,) = model.learn(fb("dismissed", T0, symbol="AAPL"))
    assert late.score == pytest.approx(ema(ema(NEUTRAL, 1.0), 0.1))
    assert late.updated_at == T0 + 5 * DAY


# ---------------------------------------------------------------- relevance of an alert


def test_relevance_is_the_mean_of_symbol_and_condition_type_scores() -> None:
    model = RelevanceModel("u-1")
    model.learn(fb("acted", T0, symbol="AAPL"))  # symbol only: 0.6
    model.learn(fb("dismissed", T0, "a-9", condition_type="rsi_above"))  # 0.42
    symbol, rsi = ema(NEUTRAL, 1.0), ema(NEUTRAL, 0.1)
    assert model.score("AAPL", ["rsi_above"], T0) == pytest.approx((symbol + rsi) / 2)
    assert model.score("AAPL", ["rsi_above", "price_above"], T0) == pytest.approx(
        (symbol + rsi + NEUTRAL) / 3
    )
    assert model.score("AAPL", ["rsi_above", "rsi_above"], T0) == pytest.approx(
        (symbol + rsi) / 2
    )  # a type counts once
    assert model.score("AAPL", [], T0) == pytest.approx(symbol)
    assert model.score("MSFT", [], T0) == NEUTRAL
    later = T0 + 3 * DAY
    assert model.score("AAPL", ["rsi_above"], later) == pytest.approx(
        (decay(symbol, 3) + decay(rsi, 3)) / 2
    )


def test_fields_named_in_the_feedback_win_over_the_alert() -> None:
    model = model_with_alert()
    scores = model.learn(fb("opened", T0, symbol="MSFT", condition_type="volume_spike"))
    assert keyed(scores) == {
        ("symbol", "MSFT"): pytest.approx(ema(NEUTRAL, 0.7)),
        ("condition_type", "volume_spike"): pytest.approx(ema(NEUTRAL, 0.7)),
    }
    assert model.dimension_score("symbol", "AAPL", T0) == NEUTRAL


def test_feedback_for_an_unknown_alert_without_fields_changes_nothing_yet() -> None:
    model = RelevanceModel("u-1")
    assert model.learn(fb("acted", T0, "unknown")) == []
    assert model.score("AAPL", ["price_crosses_above"], T0) == NEUTRAL


# ---------------------------------------------------------------- delivered and ignored


def test_delivered_does_nothing() -> None:
    model = model_with_alert()
    assert model.learn(fb("delivered", T0 + HOUR)) == []
    assert model.score("AAPL", ["price_crosses_above", "rsi_above"], T0 + HOUR) == NEUTRAL
    # ... and is not engagement: the alert is still ignored after the deadline.
    assert len(model.expire(T0 + 25 * HOUR)) == 3


def test_ignored_after_the_deadline_and_not_before() -> None:
    model = model_with_alert()
    assert model.expire(T0 + 23 * HOUR) == []
    assert model.expire(T0 + 24 * HOUR) == []  # at the deadline: still within 24 h
    scores = model.expire(T0 + 24 * HOUR + timedelta(seconds=1))
    ignored = ema(NEUTRAL, 0.2)
    assert ignored == pytest.approx(0.44)
    assert described(scores) == [  # as of the deadline, T0 + 24 h
        ("u-1", "symbol", "AAPL", pytest.approx(ignored), T0 + DAY),
        ("u-1", "condition_type", "price_crosses_above", pytest.approx(ignored), T0 + DAY),
        ("u-1", "condition_type", "rsi_above", pytest.approx(ignored), T0 + DAY),
    ]
    assert model.expire(T0 + 30 * DAY) == []  # once only


@pytest.mark.parametrize("action", ["opened", "acted", "dismissed", "snoozed", "muted"])
def test_engagement_cancels_the_ignore(action: str) -> None:
    model = model_with_alert()
    model.learn(fb(action, T0 + HOUR))
    assert model.expire(T0 + 30 * DAY) == []


def test_unmuted_is_not_engagement() -> None:
    model = model_with_alert()
    assert model.learn(fb("unmuted", T0 + HOUR)) == []
    assert len(model.expire(T0 + 2 * DAY)) == 3


def test_ignore_deadline_is_configurable() -> None:
    model = RelevanceModel("u-1", LearningConfig(ignore_after=HOUR))
    model.observe_alert(make_alert(conditions=()))
    assert model.expire(T0 + HOUR) == []
    (score,) = model.expire(T0 + HOUR + timedelta(milliseconds=1))
    assert (score.key, score.updated_at) == ("AAPL", T0 + HOUR)


def test_ignores_apply_in_event_time_order_before_later_feedback() -> None:
    model = model_with_alert(conditions=())
    model.observe_alert(make_alert("a-2", conditions=(), at=T0 + DAY))
    # No expire() call in between: learn applies the due deadline (T0 + 24 h) first.
    scores = model.learn(fb("opened", T0 + 2 * DAY, "a-2"))
    ignored = ema(NEUTRAL, 0.2)
    opened = ema(decay(ignored, 1), 0.7)
    assert [(s.key, s.updated_at) for s in scores] == [("AAPL", T0 + DAY), ("AAPL", T0 + 2 * DAY)]
    assert [s.score for s in scores] == [pytest.approx(ignored), pytest.approx(opened)]


def test_engagement_after_the_deadline_still_counts() -> None:
    model = model_with_alert(conditions=())
    model.expire(T0 + 2 * DAY)
    (score,) = model.learn(fb("acted", T0 + 2 * DAY))
    assert score.score == pytest.approx(ema(decay(ema(NEUTRAL, 0.2), 1), 1.0))


def test_observing_an_alert_twice_starts_one_deadline() -> None:
    model = model_with_alert(conditions=())
    model.observe_alert(make_alert(conditions=()))
    assert len(model.expire(T0 + 2 * DAY)) == 1
    model.observe_alert(make_alert(conditions=()))  # a replayed alert, already ignored
    assert model.expire(T0 + 4 * DAY) == []


def test_an_alert_seen_after_its_deadline_starts_none() -> None:
    model = RelevanceModel("u-1")
    model.expire(T0 + 3 * DAY)
    model.observe_alert(make_alert(at=T0))  # two days late
    assert model.expire(T0 + 4 * DAY) == []


def test_no_ignored_reward_when_configured_off() -> None:
    rewards = {action: reward for action, reward in REWARDS.items() if action != IGNORED}
    model = RelevanceModel("u-1", LearningConfig(rewards=rewards))
    model.observe_alert(make_alert())
    assert model.expire(T0 + 2 * DAY) == []


# ---------------------------------------------------------------- mutes


def test_muted_silences_the_rule_and_the_symbol_until_unmuted() -> None:
    model = model_with_alert()
    assert not model.is_muted("r-1", "AAPL")
    scores = keyed(model.learn(fb("muted", T0 + HOUR)))
    assert scores == {
        ("symbol", "AAPL"): pytest.approx(0.4),
        ("condition_type", "price_crosses_above"): pytest.approx(0.4),
        ("condition_type", "rsi_above"): pytest.approx(0.4),
    }
    assert model.is_muted("r-1", "AAPL")
    assert model.is_muted("r-1", "MSFT")  # the rule, on any symbol
    assert model.is_muted("r-2", "AAPL")  # the symbol, from any rule
    assert not model.is_muted("r-2", "MSFT")
    assert model.learn(fb("unmuted", T0 + 2 * HOUR)) == []  # no reward
    assert not model.is_muted("r-1", "AAPL")
    assert not model.is_muted("r-2", "AAPL")
    assert model.score("AAPL", [], T0 + 2 * HOUR) == pytest.approx(decay(0.4, 1 / 24))


def test_unmuted_with_a_symbol_lifts_only_that_symbol() -> None:
    model = model_with_alert()
    model.learn(fb("muted", T0))
    model.learn(fb("unmuted", T0 + HOUR, "a-other", symbol="AAPL"))
    assert not model.is_muted("r-2", "AAPL")
    assert model.is_muted("r-1", "MSFT")  # the rule stays muted
    model.learn(fb("unmuted", T0 + 2 * HOUR))  # naming the alert lifts the rule too
    assert not model.is_muted("r-1", "MSFT")


def test_muted_with_a_symbol_and_no_known_alert_mutes_the_symbol() -> None:
    model = RelevanceModel("u-1")
    model.learn(fb("muted", T0, "a-unknown", symbol="TSLA"))
    assert model.is_muted("any-rule", "TSLA")
    assert not model.is_muted("any-rule", "AAPL")


def test_an_alert_muted_when_observed_is_never_ignored() -> None:
    model = model_with_alert()
    model.learn(fb("muted", T0))
    model.observe_alert(make_alert("a-2", at=T0 + HOUR))  # silenced: the user never sees it
    assert model.expire(T0 + 30 * DAY) == []


def test_unmute_works_after_the_muting_alert_left_the_bounded_memory() -> None:
    model = model_with_alert()
    model.learn(fb("muted", T0))
    for n in range(1500):
        model.observe_alert(make_alert(f"b-{n}", rule_id="r-9", symbol="MSFT", at=T0 + HOUR))
    model.learn(fb("unmuted", T0 + DAY))
    assert not model.is_muted("r-1", "AAPL")


# ---------------------------------------------------------------- feedback before its alert


def test_feedback_before_its_alert_applies_when_the_alert_arrives() -> None:
    model = RelevanceModel("u-1")
    assert model.learn(fb("opened", T0 + HOUR)) == []  # nothing named, alert not seen yet
    scores = model.observe_alert(make_alert(at=T0))
    opened = ema(NEUTRAL, 0.7)
    assert [(s.dimension, s.key, s.updated_at) for s in scores] == [
        ("symbol", "AAPL", T0 + HOUR),
        ("condition_type", "price_crosses_above", T0 + HOUR),
        ("condition_type", "rsi_above", T0 + HOUR),
    ]
    assert all(s.score == pytest.approx(opened) for s in scores)
    assert model.expire(T0 + 30 * DAY) == []  # it was engagement


def test_early_feedback_is_not_applied_twice_to_what_it_named() -> None:
    model = RelevanceModel("u-1")
    (symbol,) = model.learn(fb("muted", T0, symbol="AAPL"))
    assert model.is_muted("x", "AAPL") and not model.is_muted("r-1", "MSFT")
    scores = model.observe_alert(make_alert())
    assert [s.key for s in scores] == ["price_crosses_above", "rsi_above"]
    assert model.dimension_score("symbol", "AAPL", T0) == symbol.score
    assert model.is_muted("r-1", "MSFT")  # the rule, once the alert is known


# ---------------------------------------------------------------- bounded memory, pickling


def test_the_1001st_alert_forgets_the_first() -> None:
    model = RelevanceModel("u-1")
    for n in range(1001):
        model.observe_alert(make_alert(f"a-{n}", symbol=f"S{n}", conditions=(), at=T0))
    assert model.learn(fb("acted", T0 + HOUR, "a-0")) == []  # forgotten: symbol unknown
    (second,) = model.learn(fb("acted", T0 + HOUR, "a-1"))
    assert second.key == "S1"
    ignored = model.expire(T0 + 2 * DAY)
    assert {s.key for s in ignored} == {f"S{n}" for n in range(2, 1001)}  # not S0 (forgotten)


def test_remembered_alerts_is_configurable() -> None:
    model = RelevanceModel("u-1", LearningConfig(remembered_alerts=2))
    for n in range(3):
        model.observe_alert(make_alert(f"a-{n}", symbol=f"S{n}", conditions=()))
    assert model.learn(fb("acted", T0, "a-0")) == []
    assert [s.key for s in model.learn(fb("acted", T0, "a-1"))] == ["S1"]


def test_pickle_round_trip_keeps_every_part_of_the_state() -> None:
    model = model_with_alert()
    model.observe_alert(make_alert("a-2", rule_id="r-2", symbol="MSFT", at=T0 + HOUR))
    model.learn(fb("acted", T0 + HOUR))
    model.learn(fb("muted", T0 + 2 * HOUR, "a-2"))
    model.learn(fb("opened", T0 + 3 * HOUR, "a-early"))
    model.observe_alert(make_alert("a-3", symbol="NVDA", at=T0 + 3 * HOUR))
    copy = pickle.loads(pickle.dumps(model))

    def script(m: RelevanceModel) -> list[object]:
        return [
            m.is_muted("r-2", "X"),
            m.is_muted("r-1", "AAPL"),
            m.score("AAPL", ["rsi_above"], T0 + DAY),
            m.observe_alert(make_alert("a-early", symbol="AMD", at=T0 + 2 * HOUR)),
            m.expire(T0 + 2 * DAY),
            m.learn(fb("unmuted", T0 + 3 * DAY, "a-2")),
            m.is_muted("r-2", "MSFT"),
            m.learn(fb("dismissed", T0 + 4 * DAY)),
        ]

    expected = script(model)
    assert script(copy) == expected
    assert expected[4] != []  # the script exercised the ignore deadlines


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "changes",
    [
        {"alpha": 0},
        {"alpha": 1.5},
        {"half_life": timedelta(0)},
        {"ignore_after": -HOUR},
        {"neutral": 2},
        {"remembered_alerts": 0},
        {"rewards": {"clicked": 1.0}},
        {"rewards": {FeedbackAction.ACTED: 1.5}},
    ],
)
def test_bad_configuration_is_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LearningConfig(**changes)  # type: ignore[arg-type]
