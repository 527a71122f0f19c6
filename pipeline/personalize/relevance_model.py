"""The trained relevance model: training set, fit, versioned artifact, prediction, scores.

Plain Python around scikit-learn (no Bytewax). docs/personalization.md ("The trained relevance
model") describes it for users; in short:

Training set (``examples``)
    Every notified alert (named by a notification), replayed with the triggered alerts and the
    feedback in event order through the job's own classes: the EMA scores
    (``RelevanceModel``, learning.py) and the features (``EngagementHistory``, engagement.py),
    both read at the alert's decision time, the end of the window of the first notification
    that names it (the moment the job orders and filters it by relevance). No lookahead: a
    decision at time t sees the alerts and feedback at or before t. Label: 1 when an ``opened``
    or ``acted`` feedback came within ``ignore_after`` of the trigger (and, for training, before
    the end of the training period: what a training run then could know), else 0.

Model (``fit``)
    scikit-learn: ``DictVectorizer`` then ``LogisticRegression``; predicted engagement is the
    probability of the positive class, in (0, 1).

Artifact (a directory; ``save`` / ``load``)
    ``model.joblib`` (the fitted pipeline), ``features.json`` (the vectorizer's feature names,
    in column order) and ``metadata.json`` (``version`` = ``ARTIFACT_VERSION``, ``feature_set``,
    the training days and counts, the learning parameters the features used, the Python,
    scikit-learn, numpy and joblib versions). ``load`` refuses, in one line naming the directory,
    a missing directory or file, another version or feature set, another scikit-learn version
    (its pickles are not portable across versions), or features that disagree with the model.
    A joblib file is a pickle: load only artifacts you made.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.messages import Feedback, FeedbackAction, Notification, TriggeredAlert
from pipeline.personalize.engagement import FEATURE_SET, EngagementHistory, Features
from pipeline.personalize.learning import LearningConfig, RelevanceModel

__all__ = [
    "ARTIFACT_VERSION",
    "ArtifactError",
    "Example",
    "TrainedRelevance",
    "examples",
    "fit",
    "scores",
]

ARTIFACT_VERSION = 1
MODEL_FILE = "model.joblib"
FEATURES_FILE = "features.json"
METADATA_FILE = "metadata.json"
_EPSILON = 1e-6  # EMA scores of exactly 0 or 1 would give an infinite log loss


class ArtifactError(ValueError):
    """An artifact that cannot be used, in one line naming its directory."""


@dataclass(frozen=True, slots=True)
class Example:
    """One notified alert: its features and EMA score at its decision time, and its outcome."""

    alert_id: str
    user_id: str
    day: date  # the UTC date of the trigger (the archive's date partition)
    decided_at: datetime
    features: Features
    ema: float
    deadline: datetime  # triggered_at + ignore_after
    engaged_at: datetime | None  # the first opened/acted feedback, if any

    def label(self, known_by: datetime | None = None) -> int:
        """1 when opened or acted on within ``ignore_after`` (and by ``known_by``, if given)."""
        if self.engaged_at is None or self.engaged_at > self.deadline:
            return 0
        return int(known_by is None or self.engaged_at <= known_by)


def examples(
    alerts: Iterable[TriggeredAlert],
    notifications: Iterable[Notification],
    feedback: Iterable[Feedback],
    timezones: Mapping[str, str],
    config: LearningConfig,
) -> list[Example]:
    """The training set of the module docstring, in decision order. Users missing from
    ``timezones`` are in UTC, as the job treats a user without a profile."""
    by_id: dict[str, TriggeredAlert] = {}
    for alert in alerts:
        by_id.setdefault(alert.alert_id, alert)
    decided: dict[str, datetime] = {}
    for note in sorted(notifications, key=lambda n: (n.window_end, n.notification_id)):
        for alert_id in note.alert_ids:
            named = by_id.get(alert_id)
            if named is not None and alert_id not in decided:
                decided[alert_id] = max(note.window_end, named.triggered_at)
    feedback = list(feedback)
    engaged: dict[str, datetime] = {}
    for fb in feedback:
        if fb.action in (FeedbackAction.OPENED, FeedbackAction.ACTED):
            first = engaged.get(fb.alert_id)
            engaged[fb.alert_id] = fb.ts if first is None else min(first, fb.ts)

    # At one instant: alerts, then feedback, then decisions (which see both).
    events: list[tuple[datetime, int, str, TriggeredAlert | Feedback | None]] = []
    events += [(a.triggered_at, 0, a.alert_id, a) for a in by_id.values()]
    events += [(fb.ts, 1, fb.alert_id, fb) for fb in feedback]
    events += [(at, 2, alert_id, None) for alert_id, at in decided.items()]
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    users: dict[str, tuple[RelevanceModel, EngagementHistory]] = {}

    def state(user_id: str) -> tuple[RelevanceModel, EngagementHistory]:
        found = users.get(user_id)
        if found is None:
            history = EngagementHistory(
                config.ignore_after, config.half_life, config.remembered_alerts
            )
            found = users[user_id] = (RelevanceModel(user_id, config), history)
        return found

    out: list[Example] = []
    for at, _kind, alert_id, item in events:
        if isinstance(item, TriggeredAlert):
            model, history = state(item.user_id)
            model.observe_alert(item)
            history.observe_alert(item)
        elif isinstance(item, Feedback):
            model, history = state(item.user_id)
            model.learn(item)
            history.learn(item)
        else:
            alert = by_id[alert_id]
            model, history = state(alert.user_id)
            model.expire(at)  # as the job's desk does before closing a window
            out.append(
                Example(
                    alert_id=alert_id,
                    user_id=alert.user_id,
                    day=alert.triggered_at.date(),
                    decided_at=at,
                    features=history.features(alert, at, timezones.get(alert.user_id, "UTC")),
                    ema=model.score(alert.symbol, alert.condition_types, at),
                    deadline=alert.triggered_at + config.ignore_after,
                    engaged_at=engaged.get(alert_id),
                )
            )
    return out


def _library_versions() -> dict[str, str]:
    import joblib
    import numpy
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
    }


class TrainedRelevance:
    """A fitted model with its feature names and metadata; ``predict`` is the job's relevance.

    ``predict`` evaluates the logistic regression from its fitted coefficients in plain Python
    (the same number as scikit-learn's ``predict_proba``, a test checks), because the job scores
    alerts one at a time, where a scikit-learn call costs far more than the arithmetic.
    """

    def __init__(self, pipeline: Any, metadata: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.metadata = metadata
        vectorizer, regression = pipeline[0], pipeline[-1]
        self.feature_names: list[str] = [str(name) for name in vectorizer.feature_names_]
        coefficients = regression.coef_[0]
        self._weights = {
            name: float(coefficients[index]) for name, index in vectorizer.vocabulary_.items()
        }
        self._intercept = float(regression.intercept_[0])

    def predict(self, features: Mapping[str, float]) -> float:
        """Predicted engagement, in (0, 1); features the model was not fit on count nothing."""
        weights = self._weights
        z = self._intercept + math.fsum(
            weights[name] * value for name, value in features.items() if name in weights
        )
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> list[float]:
        return [float(p) for p in self.pipeline.predict_proba(list(rows))[:, 1]]

    def save(self, directory: Path) -> None:
        import joblib

        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline, directory / MODEL_FILE)
        (directory / FEATURES_FILE).write_text(json.dumps(self.feature_names, indent=1) + "\n")
        (directory / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> TrainedRelevance:
        def refuse(why: str) -> ArtifactError:
            return ArtifactError(f"relevance model {directory}: {why}")

        if not directory.is_dir():
            raise refuse("no such directory")
        for name in (METADATA_FILE, FEATURES_FILE, MODEL_FILE):
            if not (directory / name).is_file():
                raise refuse(f"{name} is missing")
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
            features = json.loads((directory / FEATURES_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise refuse(f"unreadable JSON ({exc})") from None
        if not isinstance(metadata, dict):
            raise refuse(f"{METADATA_FILE} is not an object")
        if metadata.get("version") != ARTIFACT_VERSION:
            raise refuse(
                f"version {metadata.get('version')!r}, this build reads version {ARTIFACT_VERSION}"
            )
        if metadata.get("feature_set") != FEATURE_SET:
            raise refuse(
                f"feature set {metadata.get('feature_set')!r}, this build computes feature set "
                f"{FEATURE_SET}: retrain it"
            )
        ours = _library_versions()["scikit-learn"]
        theirs = metadata.get("libraries", {}).get("scikit-learn")
        if theirs != ours:
            raise refuse(f"trained with scikit-learn {theirs}, this is {ours}: retrain it")
        import joblib

        try:
            pipeline = joblib.load(directory / MODEL_FILE)
            model = cls(pipeline, metadata)
        except Exception as exc:  # a damaged pickle can raise almost anything
            raise refuse(f"{MODEL_FILE} does not load ({type(exc).__name__}: {exc})") from None
        if features != model.feature_names:
            raise refuse(f"{FEATURES_FILE} does not match the model's features")
        return model


def fit(
    training: Sequence[Example],
    config: LearningConfig,
    known_by: datetime | None = None,
) -> TrainedRelevance:
    """Fit the model on ``training`` (labels as known by ``known_by``); ValueError when the
    labels are all one class."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    labels = [example.label(known_by) for example in training]
    if len(set(labels)) < 2:
        raise ValueError(
            f"the training set ({len(labels)} notified alerts) needs both engaged and "
            "not engaged alerts"
        )
    pipeline = make_pipeline(DictVectorizer(sparse=False), LogisticRegression(C=1.0, max_iter=2000))
    pipeline.fit([example.features for example in training], labels)
    days = sorted({example.day for example in training})
    metadata: dict[str, Any] = {
        "version": ARTIFACT_VERSION,
        "feature_set": FEATURE_SET,
        "model": "logistic regression (scikit-learn DictVectorizer + LogisticRegression)",
        "trained_on": {
            "first_day": days[0].isoformat(),
            "last_day": days[-1].isoformat(),
            "days": [day.isoformat() for day in days],
            "labels_known_by": known_by.isoformat() if known_by is not None else None,
            "alerts": len(labels),
            "engaged": sum(labels),
            "users": len({example.user_id for example in training}),
        },
        "learning": {
            "ignore_after_hours": config.ignore_after / timedelta(hours=1),
            "half_life_days": config.half_life / timedelta(days=1),
        },
        "libraries": _library_versions(),
    }
    return TrainedRelevance(pipeline, metadata)


def scores(labels: Sequence[int], predicted: Sequence[float]) -> tuple[float, float]:
    """(log loss, ROC AUC) of predicted engagement; ValueError without both classes."""
    from sklearn.metrics import log_loss, roc_auc_score

    if len(set(labels)) < 2:
        raise ValueError("the test alerts need both engaged and not engaged alerts")
    clipped = [min(max(p, _EPSILON), 1 - _EPSILON) for p in predicted]
    return float(log_loss(labels, clipped, labels=[0, 1])), float(roc_auc_score(labels, clipped))
