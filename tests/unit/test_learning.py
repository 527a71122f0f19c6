import pytest

from pipeline.learning import DEFAULT_ALPHA, NEUTRAL_SCORE, REWARDS, RelevanceModel
from pipeline.messages import Feedback, FeedbackAction
from pipeline.personalize import UserDesk
from tests.unit.helpers import alert, at


def feedback(action: str, seconds: float = 0, symbol: str | None = "AAPL") -> Feedback:
    return Feedback(user_id="u-1", alert_id="a-1", action=action, ts=at(seconds), symbol=symbol)


def test_score_is_an_exponential_moving_average_of_rewards() -> None:
    model = RelevanceModel("u-1")
    (first,) = model.learn(feedback("acted"))
    expected = (1 - DEFAULT_ALPHA) * NEUTRAL_SCORE + DEFAULT_ALPHA * REWARDS[FeedbackAction.ACTED]
    assert first.score == pytest.approx(expected)
    (second,) = model.learn(feedback("dismissed", 1))
    expected = (1 - DEFAULT_ALPHA) * expected + DEFAULT_ALPHA * 0.1
    assert second.score == pytest.approx(expected)
    assert (second.user_id, second.dimension, second.key, second.updated_at) == (
        "u-1",
        "symbol",
        "AAPL",
        at(1),
    )


def test_delivered_carries_no_signal() -> None:
    assert RelevanceModel("u-1").learn(feedback("delivered")) == []


def test_feedback_without_symbol_takes_it_from_the_alert_it_names() -> None:
    desk = UserDesk()
    known = alert(0, symbol="MSFT")
    unnamed = Feedback(user_id="u-1", alert_id=known.alert_id, action="opened", ts=at(5))
    (score,) = [o for o in desk.process([known, unnamed]) if hasattr(o, "score")]
    assert score.key == "MSFT"
    assert desk.relevance.score("MSFT") == pytest.approx(0.8 * 0.5 + 0.2 * 0.7)
