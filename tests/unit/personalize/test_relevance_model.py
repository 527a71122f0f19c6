"""The trained relevance model (pipeline/personalize/relevance_model.py), its features
(engagement.py) and the switch that makes the job decide with it (learning.py, the desk)."""

from __future__ import annotations

import json
import math
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import ConfigError, Settings
from pipeline.dataflow import personalization_config
from pipeline.messages import Feedback, FeedbackAction, Notification, Profile, TriggeredAlert
from pipeline.personalize.desk import Dispatch, PersonalizationConfig, UserDesk
from pipeline.personalize.engagement import EngagementHistory
from pipeline.personalize.learning import LearningConfig, RelevanceModel
from pipeline.personalize.relevance_model import (
    ARTIFACT_VERSION,
    ArtifactError,
    Example,
    TrainedRelevance,
    examples,
    fit,
)
from pipeline.personalize.simulator import EngagementSimulator, SimulatorConfig
from tests.unit.personalize.test_simulator import START, stream, user

DAY = timedelta(days=1)
CONFIG = LearningConfig()


def make_alert(i: int, symbol: str, at: datetime, user_id: str = "u-1") -> TriggeredAlert:
    return TriggeredAlert(
        alert_id=f"a{i}",
        rule_id=f"r-{symbol}",
        rule_version=1,
        user_id=user_id,
        symbol=symbol,
        priority="MEDIUM",
        title="t",
        message="m",
        triggered_at=at,
        condition_types=["price_above"],
        values={},
    )


def note(alerts: list[TriggeredAlert], at: datetime) -> Notification:
    return Notification(
        notification_id=f"n-{alerts[0].alert_id}",
        user_id=alerts[0].user_id,
        alert_ids=[a.alert_id for a in alerts],
        title="t",
        message="m",
        highest_priority="MEDIUM",
        channels=["in_app", "push"],
        window_start=at,
        window_end=at,
    )


def opened(alert: TriggeredAlert, after: timedelta, action: str = "opened") -> Feedback:
    return Feedback(
        user_id=alert.user_id, alert_id=alert.alert_id, action=action, ts=alert.triggered_at + after
    )


def simulated(count: int = 1500) -> tuple[list[TriggeredAlert], list[Notification], list[Feedback]]:
    notes = stream(count)
    simulator = EngagementSimulator([user()], SimulatorConfig(seed=15))
    feedback = [fb for n, alerts in notes for fb in simulator.react(n, alerts)]
    return [a for _, alerts in notes for a in alerts], [n for n, _ in notes], feedback


@pytest.fixture(scope="module")
def symbol_model() -> TrainedRelevance:
    """A model trained where AAPL alerts are opened and MSFT alerts are not."""
    alerts = [
        make_alert(i, ("AAPL", "MSFT")[i % 2], START + i * timedelta(minutes=30))
        for i in range(300)
    ]
    feedback = [opened(a, timedelta(minutes=2)) for a in alerts if a.symbol == "AAPL"]
    notes = [note([a], a.triggered_at) for a in alerts]
    return fit(examples(alerts, notes, feedback, {}, CONFIG), CONFIG)


# ---------------------------------------------------------------- features


def test_an_outcome_counts_once_known_opened_at_once_ignored_at_its_deadline() -> None:
    history = EngagementHistory(timedelta(hours=24), timedelta(days=14))
    first = make_alert(1, "AAPL", START)
    later = make_alert(2, "AAPL", START + timedelta(hours=1))
    history.observe_alert(first)
    neutral = history.features(later, START + timedelta(hours=1), "UTC")["engagement_symbol"]
    assert neutral == pytest.approx(0.0)  # log-odds of 0.5: nothing known yet
    assert history.features(later, START + timedelta(hours=23), "UTC")["engagement_user"] == 0.0
    after = history.features(later, START + timedelta(hours=25), "UTC")
    assert after["engagement_user"] < 0 and after["engagement_symbol"] < 0  # ignored: 0

    engaged = EngagementHistory(timedelta(hours=24), timedelta(days=14))
    engaged.observe_alert(first)
    engaged.learn(opened(first, timedelta(minutes=5)))
    assert engaged.features(later, START + timedelta(minutes=6), "UTC")["engagement_user"] > 0


def test_alert_rate_local_hour_and_session_features() -> None:
    history = EngagementHistory(timedelta(hours=24), timedelta(days=14))
    at = datetime(2026, 1, 6, 15, 0, tzinfo=UTC)  # 10:00 New York, 00:00 Tokyo (next day)
    for i in range(5):
        history.observe_alert(make_alert(i, "AAPL", at - timedelta(minutes=10 * i)))
    history.observe_alert(make_alert(9, "AAPL", at - timedelta(hours=3)))
    alert = make_alert(10, "AAPL", at)
    new_york = history.features(alert, at, "America/New_York")
    assert new_york["alerts_last_hour"] == pytest.approx(math.log1p(5))
    assert new_york["hour=10"] == 1 and new_york["session=regular"] == 1
    assert history.features(alert, at, "Asia/Tokyo")["hour=0"] == 1


def test_the_training_set_has_no_lookahead() -> None:
    """Each example's features and EMA score are the same when the data stops at its decision
    time: nothing after it was used."""
    alerts, notes, feedback = simulated(600)
    full = {
        e.alert_id: e
        for e in examples(alerts, notes, feedback, {"u-1": "America/New_York"}, CONFIG)
    }
    cut = START + timedelta(days=4)
    early = examples(
        [a for a in alerts if a.triggered_at <= cut],
        [n for n in notes if n.window_end <= cut],
        [f for f in feedback if f.ts <= cut],
        {"u-1": "America/New_York"},
        CONFIG,
    )
    assert len(early) > 100
    for example in early:
        assert example.features == full[example.alert_id].features
        assert example.ema == full[example.alert_id].ema


def test_the_label_is_opened_or_acted_within_the_no_engagement_time() -> None:
    alerts = [make_alert(i, "AAPL", START + i * timedelta(hours=1)) for i in range(4)]
    feedback = [
        opened(alerts[0], timedelta(hours=2)),
        opened(alerts[1], timedelta(hours=25)),  # past ignore_after (24 h)
        opened(alerts[2], timedelta(hours=1), "dismissed"),
        opened(alerts[3], timedelta(hours=3), "acted"),
    ]
    found = examples(alerts, [note([a], a.triggered_at) for a in alerts], feedback, {}, CONFIG)
    assert [e.label() for e in found] == [1, 0, 0, 1]
    assert [e.label(known_by=START + timedelta(hours=4)) for e in found] == [1, 0, 0, 0]


def test_only_notified_alerts_are_examples_decided_at_their_first_notification() -> None:
    alerts = [make_alert(i, "AAPL", START + i * timedelta(minutes=1)) for i in range(3)]
    later = START + timedelta(minutes=10)
    notes = [note(alerts[:2], later), note([alerts[1]], later + timedelta(hours=8))]
    found = examples(alerts, notes, [], {}, CONFIG)
    assert [(e.alert_id, e.decided_at) for e in found] == [("a0", later), ("a1", later)]


# ---------------------------------------------------------------- the model and its artifact


def test_predict_is_scikit_learns_probability(symbol_model: TrainedRelevance) -> None:
    alerts, notes, feedback = simulated(400)
    rows = [e.features for e in examples(alerts, notes, feedback, {}, CONFIG)]
    assert [symbol_model.predict(r) for r in rows] == pytest.approx(
        symbol_model.predict_many(rows), abs=1e-9
    )


def test_the_artifact_round_trips_with_its_metadata(
    symbol_model: TrainedRelevance, tmp_path: Path
) -> None:
    symbol_model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "features.json",
        "metadata.json",
        "model.joblib",
    ]
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["version"] == ARTIFACT_VERSION
    assert meta["trained_on"]["first_day"] == "2026-01-05" and meta["trained_on"]["alerts"] == 300
    assert set(meta["libraries"]) == {"python", "scikit-learn", "numpy", "joblib"}
    loaded = TrainedRelevance.load(tmp_path / "m")
    row = {"symbol=AAPL": 1.0, "engagement_user": 0.3}
    assert loaded.predict(row) == symbol_model.predict(row)
    assert loaded.feature_names == json.loads((tmp_path / "m" / "features.json").read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.joblib").unlink(), "model.joblib is missing"),
        (lambda d: (d / "features.json").unlink(), "features.json is missing"),
        (lambda d: _edit(d, version=99), "version 99, this build reads version 1"),
        (lambda d: _edit(d, feature_set=7), "feature set 7"),
        (
            lambda d: _edit(d, libraries={"scikit-learn": "0.24.2"}),
            "trained with scikit-learn 0.24.2",
        ),
        (lambda d: (d / "features.json").write_text('["x"]'), "features.json does not match"),
        (lambda d: (d / "model.joblib").write_bytes(b"not a pickle"), "model.joblib does not load"),
        (lambda d: (d / "metadata.json").write_text("{"), "unreadable JSON"),
    ],
)
def test_a_damaged_artifact_is_a_one_line_error(
    symbol_model: TrainedRelevance,
    tmp_path: Path,
    damage,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    directory = tmp_path / "m"
    symbol_model.save(directory)
    damage(directory)
    with pytest.raises(ArtifactError) as caught:
        TrainedRelevance.load(directory)
    text = str(caught.value)
    assert message in text and str(directory) in text and "\n" not in text
    with pytest.raises(ArtifactError, match="no such directory"):
        TrainedRelevance.load(tmp_path / "absent")


def _edit(directory: Path, **changes: object) -> None:
    path = directory / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_fit_refuses_a_training_set_of_one_class() -> None:
    alerts = [make_alert(i, "AAPL", START + i * timedelta(hours=1)) for i in range(5)]
    found = examples(alerts, [note([a], a.triggered_at) for a in alerts], [], {}, CONFIG)
    with pytest.raises(ValueError, match="both engaged and not engaged"):
        fit(found, CONFIG)


# ---------------------------------------------------------------- the switch


def test_with_a_predictor_relevance_is_the_models_prediction(
    symbol_model: TrainedRelevance,
) -> None:
    ema = RelevanceModel("u-1")
    trained = RelevanceModel("u-1", LearningConfig(predictor=symbol_model))
    aapl, msft = make_alert(1, "AAPL", START), make_alert(2, "MSFT", START)
    for model in (ema, trained):
        model.observe_alert(aapl)
        model.observe_alert(msft)
    assert ema.relevance(aapl, START, "UTC") == ema.relevance(msft, START, "UTC") == 0.5
    high, low = trained.relevance(aapl, START, "UTC"), trained.relevance(msft, START, "UTC")
    assert high > 0.7 and low < 0.3
    history = EngagementHistory(CONFIG.ignore_after, CONFIG.half_life)
    history.observe_alert(aapl)
    history.observe_alert(msft)
    assert high == symbol_model.predict(history.features(aapl, START, "UTC"))
    # The job snapshots the model with its predictor and features; they survive the round trip.
    again = pickle.loads(pickle.dumps(trained))
    assert again.relevance(aapl, START, "UTC") == high


def test_the_desk_orders_and_filters_by_the_trained_model(symbol_model: TrainedRelevance) -> None:
    """The MSFT alert comes first in time; the trained model puts AAPL first and keeps MSFT off
    the push channels (min_relevance 0.5), where the EMA (no feedback: neutral) does neither."""
    profile = Profile.model_validate(
        {
            "user_id": "u-1",
            "channels": {"LOW": ["in_app"], "MEDIUM": ["in_app", "push"]},
            "min_relevance": 0.5,
        }
    )
    msft, aapl = make_alert(1, "MSFT", START), make_alert(2, "AAPL", START + timedelta(seconds=5))

    def notified(config: LearningConfig, *alerts: TriggeredAlert) -> list[Notification]:
        desk = UserDesk(PersonalizationConfig(learning=config))
        out = desk.process([profile, *alerts]) + desk.close_all()
        return [o.notification for o in out if isinstance(o, Dispatch)]

    (ema,) = notified(CONFIG, msft, aapl)
    (trained,) = notified(LearningConfig(predictor=symbol_model), msft, aapl)
    assert ema.alert_ids == ["a1", "a2"] and trained.alert_ids == ["a2", "a1"]
    (alone,) = notified(LearningConfig(predictor=symbol_model), msft)
    assert alone.channels == ["in_app"]
    (ema_alone,) = notified(CONFIG, msft)
    assert "push" in ema_alone.channels


def test_the_configuration_switch_loads_the_artifact(
    symbol_model: TrainedRelevance, tmp_path: Path
) -> None:
    assert personalization_config(Settings()).learning.predictor is None  # EMA by default
    symbol_model.save(tmp_path / "m")
    on = Settings.model_validate(
        {
            "personalization": {
                "relevance_model": "trained",
                "relevance_model_path": str(tmp_path / "m"),
            }
        }
    )
    predictor = personalization_config(on).learning.predictor
    assert isinstance(predictor, TrainedRelevance)
    assert predictor.feature_names == symbol_model.feature_names
    with pytest.raises(ConfigError, match="needs relevance_model_path"):
        personalization_config(
            Settings.model_validate({"personalization": {"relevance_model": "trained"}})
        )
    (tmp_path / "m" / "model.joblib").unlink()
    with pytest.raises(
        ConfigError, match=r"relevance_model_path: relevance model .* model.joblib is missing"
    ):
        personalization_config(on)


def test_examples_are_in_decision_order() -> None:
    alerts, notes, feedback = simulated(300)
    found: list[Example] = examples(alerts, notes, feedback, {}, CONFIG)
    assert [e.decided_at for e in found] == sorted(e.decided_at for e in found)
    assert {e.day for e in found} == {(START + DAY * d).date() for d in range(6)}
    assert FeedbackAction.OPENED in {f.action for f in feedback}
