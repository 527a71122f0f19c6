"""``smart-alerts learn``: simulate engagement, train the relevance model, evaluate it.

    learn simulate --out ROOT [--users N] [--days N] [--seed N]
    learn train    --archive ROOT --out MODEL_DIR [--until DATE] [--profiles FILE]
    learn evaluate --archive ROOT --model MODEL_DIR [--profiles FILE]

The archive is the one ``smart-alerts archive`` writes (docs/contracts.md, "Archive"): a folder or
an ``s3://`` URL (``[archive] s3_endpoint`` and ``s3_region``, credentials from the environment),
read through connectors/archive.py as ``backtest --archive`` reads it. ``simulate`` writes a
folder in that layout with the archiver's own schema (topics rules, triggered, notifications and
feedback, partition 0, offsets in event order) and ``ROOT/profiles.json``. ``train`` and
``evaluate`` read the triggered, notifications and feedback topics, and the users' time zones
from ``--profiles`` (a JSON list or JSON lines of ``users.profiles`` messages; default
``ROOT/profiles.json`` when there is one; users without a profile are in UTC, as in the job).
docs/personalization.md tells the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from connectors.archive import (
    KAFKA_COLUMNS,
    ArchiveError,
    ArchiveStore,
    arrow_schema,
    read_archive,
)
from pipeline.cli.archive import archive_store
from pipeline.cli.commands import CommandError
from pipeline.config import Settings
from pipeline.messages import Feedback, Notification, Profile, TriggeredAlert
from pipeline.personalize.learning import LearningConfig
from pipeline.personalize.relevance_model import (
    ArtifactError,
    Example,
    TrainedRelevance,
    examples,
    fit,
    scores,
)
from pipeline.personalize.simulator import SimulatorConfig

M = TypeVar("M", bound=BaseModel)

ROW_COLUMNS = {"rules": ("deleted",)}  # archive columns that are not message fields
PROFILES_FILE = "profiles.json"


def learning_config(settings: Settings) -> LearningConfig:
    p = settings.personalization
    return LearningConfig(
        alpha=p.learning_alpha,
        half_life=timedelta(days=p.learning_half_life_days),
        ignore_after=timedelta(hours=p.ignore_after_hours),
    )


# ---------------------------------------------------------------- the archive


def write_topic(
    root: Path, topic: str, messages: Sequence[BaseModel], times: Sequence[datetime]
) -> None:
    """Messages in the archive's layout, one file per UTC date of their event ``times``,
    offsets counted from 0 on partition 0 in the given order."""
    by_day: dict[date, list[dict[str, Any]]] = {}
    for offset, (message, when) in enumerate(zip(messages, times, strict=True)):
        row: dict[str, Any] = {}
        plain = message.model_dump(mode="json")
        for name, value in plain.items():
            native = getattr(message, name, None)
            if isinstance(native, datetime):
                row[name] = native.astimezone(UTC)
            elif isinstance(value, dict) or (
                isinstance(value, list) and any(isinstance(v, list | dict) for v in value)
            ):
                row[name] = json.dumps(value, separators=(",", ":"))
            else:
                row[name] = value
        at = when.astimezone(UTC)
        row.update(kafka_partition=0, kafka_offset=offset, kafka_timestamp=at)
        by_day.setdefault(at.date(), []).append(row)
    schema = arrow_schema(topic)  # the archiver's own columns and types
    for day, rows in sorted(by_day.items()):
        folder = root / f"topic={topic}" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        first, last = rows[0]["kafka_offset"], rows[-1]["kafka_offset"]
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, folder / f"part-0-{first}-{last}.parquet")


def read_topic(
    store: ArchiveStore, topic: str, model: type[M], nested: tuple[str, ...] = ()
) -> list[M]:
    """Every message of a topic in the archive (none when it has no file), in partition and
    offset order, read as ``backtest --archive`` reads it."""
    try:
        days = sorted({part.day for part in store.parts(topic)})
        if not days:
            return []
        table = read_archive(
            store, topic, date.fromisoformat(days[0]), date.fromisoformat(days[-1])
        )
    except ArchiveError as exc:
        raise CommandError(str(exc)) from None
    rows = table.drop_columns([*KAFKA_COLUMNS, *ROW_COLUMNS.get(topic, ())]).to_pylist()
    root = store.root
    out = []
    for number, row in enumerate(rows):
        for name in nested:
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
        try:
            out.append(model.model_validate({k: v for k, v in row.items() if v is not None}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise CommandError(
                f"archive {root}, topic={topic}, row {number}: {where}: {first['msg']}"
            ) from None
    return out


def read_profiles(path: Path) -> dict[str, str]:
    """User id -> time zone, from a JSON list or JSON lines of profiles."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CommandError(f"profiles {path}: {exc.strerror or exc}") from None
    try:
        loaded = json.loads(text)
        items = loaded if isinstance(loaded, list) else [loaded]
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise CommandError(f"profiles {path}: not JSON or JSON lines ({exc})") from None
    try:
        profiles = [Profile.model_validate(item) for item in items]
    except ValidationError as exc:
        raise CommandError(f"profiles {path}: {exc.errors()[0]['msg']}") from None
    return {profile.user_id: profile.timezone for profile in profiles}


def _timezones(store: ArchiveStore, profiles: Path | None) -> dict[str, str]:
    if profiles is None and store.local and (Path(store.base) / PROFILES_FILE).is_file():
        profiles = Path(store.base) / PROFILES_FILE
    return read_profiles(profiles) if profiles is not None else {}


def training_examples(
    settings: Settings, archive: str, profiles: Path | None, config: LearningConfig
) -> list[Example]:
    store = archive_store(settings, archive)
    alerts = read_topic(store, "triggered", TriggeredAlert, ("values",))
    notifications = read_topic(store, "notifications", Notification)
    feedback = read_topic(store, "feedback", Feedback)
    found = examples(alerts, notifications, feedback, _timezones(store, profiles), config)
    if not found:
        raise CommandError(
            f"archive {archive}: no notified alert (topics triggered and notifications)"
        )
    return found


def _end_of(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)


def _days(found: Sequence[date]) -> str:
    days = sorted(set(found))
    return f"{days[0]}..{days[-1]} ({len(days)} day{'s' if len(days) != 1 else ''})"


# ---------------------------------------------------------------- verbs


def simulate_command(out: Path, *, users: int, days: int, seed: int) -> None:
    from pipeline.cli.learning_scenario import simulate

    if users < 1 or days < 1:
        raise CommandError("--users and --days must be at least 1")
    scenario = simulate(users, days, SimulatorConfig(seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("topic=*")):
        raise CommandError(f"{out} holds an archive already: choose an empty folder")
    published = min(a.triggered_at for a in scenario.alerts)  # the rules came before
    write_topic(out, "rules", scenario.rules, [published] * len(scenario.rules))
    write_topic(out, "triggered", scenario.alerts, [a.triggered_at for a in scenario.alerts])
    write_topic(
        out,
        "notifications",
        scenario.notifications,
        [n.window_start for n in scenario.notifications],
    )
    write_topic(out, "feedback", scenario.feedback, [f.ts for f in scenario.feedback])
    (out / PROFILES_FILE).write_text(
        json.dumps([p.model_dump(mode="json") for p in scenario.profiles], indent=1) + "\n"
    )
    print(
        f"simulated {users} users over {days} trading days (seed {seed}): "
        f"{len(scenario.alerts)} alerts, {len(scenario.notifications)} notifications, "
        f"{len(scenario.feedback)} feedback events in {out}"
    )


def train_command(
    settings: Settings,
    *,
    archive: str,
    out: Path,
    until: date | None = None,
    profiles: Path | None = None,
) -> TrainedRelevance:
    config = learning_config(settings)
    found = training_examples(settings, archive, profiles, config)
    training = [e for e in found if until is None or e.day <= until]
    if not training:
        raise CommandError(f"archive {archive}: no notified alert on or before {until}")
    last_day = max(e.day for e in training)
    try:
        model = fit(training, config, known_by=_end_of(last_day))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    model.save(out)
    trained = model.metadata["trained_on"]
    print(
        f"trained on {_days([e.day for e in training])}: {trained['alerts']} notified alerts, "
        f"{trained['engaged']} engaged, {trained['users']} users; model in {out}"
    )
    return model


def evaluate_command(
    settings: Settings, *, archive: str, model_dir: Path, profiles: Path | None = None
) -> list[tuple[str, float, float]]:
    """Print the comparison table; returns its rows (name, log loss, ROC AUC)."""
    try:
        model = TrainedRelevance.load(model_dir)
    except ArtifactError as exc:
        raise CommandError(str(exc)) from None
    config = learning_config(settings)
    found = training_examples(settings, archive, profiles, config)
    trained_on = model.metadata["trained_on"]
    last_day = date.fromisoformat(trained_on["last_day"])
    train_days = {date.fromisoformat(day) for day in trained_on["days"]}
    test = [e for e in found if e.day > last_day]
    if not test:
        raise CommandError(
            f"archive {archive}: no notified alert after {last_day}, the model's last training "
            "day: train it with --until an earlier day"
        )
    known_by = _end_of(last_day)
    train = [e for e in found if e.day in train_days]
    labels = [e.label() for e in test]
    rate = sum(e.label(known_by) for e in train) / len(train) if train else 0.5
    candidates: list[tuple[str, Callable[[], list[float]]]] = [
        (
            "trained model (logistic regression)",
            lambda: model.predict_many([e.features for e in test]),
        ),
        ("EMA scores (learning.py, as the job)", lambda: [e.ema for e in test]),
        ("EMA, calibrated on the training days", lambda: _calibrated(train, test, known_by)),
        ("constant: training engagement rate", lambda: [rate] * len(test)),
    ]
    rows = []
    try:
        for name, predict in candidates:
            loss, auc = scores(labels, predict())
            rows.append((name, loss, auc))
    except ValueError as exc:
        raise CommandError(f"archive {archive}: {exc}") from None
    print(f"trained on {_days(list(train_days))}, tested on {_days([e.day for e in test])}")
    hours = config.ignore_after / timedelta(hours=1)
    print(
        f"test alerts: {len(test)} notified, {sum(labels) / len(labels):.1%} opened or acted "
        f"on within {hours:g} h"
    )
    width = max(len(name) for name, _, _ in rows)
    print(f"{'relevance':<{width}}  log loss  ROC AUC")
    for name, loss, auc in rows:
        print(f"{name:<{width}}  {loss:8.4f}  {auc:7.4f}")
    return rows


def _calibrated(
    train: Sequence[Example], test: Sequence[Example], known_by: datetime
) -> list[float]:
    """The EMA score mapped to a probability by a logistic fit on the training days (Platt
    scaling): the same order as the EMA, so the same ROC AUC, and a fair log loss."""
    from sklearn.linear_model import LogisticRegression

    def logit(p: float) -> list[float]:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return [math.log(p / (1 - p))]

    labels = [e.label(known_by) for e in train]
    if len(set(labels)) < 2:
        raise ValueError("the training days need both engaged and not engaged alerts")
    scaler = LogisticRegression().fit([logit(e.ema) for e in train], labels)
    return [float(p) for p in scaler.predict_proba([logit(e.ema) for e in test])[:, 1]]
