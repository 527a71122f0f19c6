"""``smart-alerts learn``: the real console script simulates a small archive of the learning
reference scenario, trains the relevance model on its first days and evaluates it and the EMA
scores on the last; a damaged artifact or an archive without later days is a one-line error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs
import pytest
from confluent_kafka import Producer

from connectors.archive import ArchiveStore
from connectors.embedded import StackUrls
from pipeline.cli.learn import read_topic
from pipeline.dataflow import run
from pipeline.messages import Feedback, Notification, TriggeredAlert
from pipeline.personalize.learning import LearningConfig
from pipeline.personalize.relevance_model import examples, fit
from tests.conftest import PUSH_OLD_ALERTS, job_settings
from tests.integration.test_archive import s3_server  # noqa: F401  (a fixture)
from tests.integration.test_personalization import (
    CHANNELS,
    T0,
    crossings,
    notifications_of,
    rule,
    send,
)
from tests.unit.personalize.test_relevance_model import make_alert, note, opened

pytestmark = pytest.mark.integration

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
ROW = re.compile(r"^(\S.*?)\s{2,}(\d+\.\d{4})\s+(\d+\.\d{4})$", re.M)


def smart_alerts(*args: str | Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_ALERTS_")}
    env.update(extra)
    return subprocess.run(
        [SMART_ALERTS, *map(str, args)], capture_output=True, text=True, timeout=180, env=env
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learn") / "archive"
    done = smart_alerts("learn", "simulate", "--out", root, "--users", "4", "--days", "4")
    assert done.returncode == 0, done.stderr
    assert re.match(r"simulated 4 users over 4 trading days \(seed 15\): \d+ alerts", done.stdout)
    return root


def test_the_simulated_archive_has_the_archive_layout(archive: Path) -> None:
    for topic in ("rules", "triggered", "notifications", "feedback"):
        assert list((archive / f"topic={topic}").glob("date=*/part-0-*-*.parquet")), topic
    feedback = pl.scan_parquet(
        f"{archive}/topic=feedback/**/*.parquet", hive_partitioning=True
    ).collect()
    assert {"kafka_partition", "kafka_offset", "kafka_timestamp", "date"} <= set(feedback.columns)
    assert feedback["kafka_offset"].sort().to_list() == list(range(feedback.height))
    actions = set(feedback["action"])
    assert {"opened", "acted", "dismissed", "delivered"} <= actions
    days = pl.scan_parquet(f"{archive}/topic=triggered/**/*.parquet", hive_partitioning=True)
    assert days.select(pl.col("date").n_unique()).collect().item() == 4
    assert len(json.loads((archive / "profiles.json").read_text())) == 4


@pytest.fixture(scope="module")
def model(archive: Path) -> Path:
    """Trained on the first three days; the fourth is for testing."""
    out = archive.parent / "model"
    trained = smart_alerts(
        "learn", "train", "--archive", archive, "--out", out, "--until", "2026-01-07"
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("trained on 2026-01-05..2026-01-07 (3 days): ")
    return out


@pytest.fixture(scope="module")
def evaluation(archive: Path, model: Path) -> str:
    done = smart_alerts("learn", "evaluate", "--archive", archive, "--model", model)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_then_evaluate_prints_both_models_scores(model: Path, evaluation: str) -> None:
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["trained_on"]["days"] == ["2026-01-05", "2026-01-06", "2026-01-07"]
    assert metadata["trained_on"]["users"] == 4
    assert json.loads((model / "features.json").read_text())  # the feature list

    assert "tested on 2026-01-08..2026-01-08 (1 day)" in evaluation
    rows = {name: (float(loss), float(auc)) for name, loss, auc in ROW.findall(evaluation)}
    assert set(rows) == {
        "trained model (logistic regression)",
        "EMA scores (learning.py, as the job)",
        "EMA, calibrated on the training days",
        "constant: training engagement rate",
    }
    trained_loss, trained_auc = rows["trained model (logistic regression)"]
    ema_loss, ema_auc = rows["EMA scores (learning.py, as the job)"]
    constant_loss, constant_auc = rows["constant: training engagement rate"]
    assert constant_auc == 0.5
    # Both learn something about the simulated users; the model more (as documented).
    assert ema_auc > 0.65 and trained_auc > ema_auc
    assert trained_loss < ema_loss and trained_loss < constant_loss
    assert rows["EMA, calibrated on the training days"][1] == ema_auc  # same order, same AUC


def test_artifact_and_archive_errors_are_one_line(
    archive: Path, model: Path, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(model, tmp_path / "model"))
    meta = model / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": 2}))
    wrong = smart_alerts("learn", "evaluate", "--archive", archive, "--model", model)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "version 2, this build reads version 1" in wrong.stderr

    (model / "model.joblib").unlink()
    missing = smart_alerts("learn", "evaluate", "--archive", archive, "--model", model)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "model.joblib is missing" in missing.stderr and "Traceback" not in missing.stderr

    empty = smart_alerts("learn", "train", "--archive", tmp_path / "none", "--out", model)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert "no notified alert" in empty.stderr


def test_learn_reads_what_the_archiver_writes_on_s3(
    stack: StackUrls,
    archive: Path,
    model: Path,
    evaluation: str,
    s3_server: str,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulated topics, published to Kafka and archived by ``smart-alerts archive`` to an
    S3-compatible server, read back as the same messages and evaluate to the same table."""
    credentials = {
        "AWS_ACCESS_KEY_ID": "learn-test",
        "AWS_SECRET_ACCESS_KEY": "learn-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    scheme, _, address = s3_server.partition("://")
    pafs.S3FileSystem(
        endpoint_override=address, scheme=scheme, region="us-east-1", allow_bucket_creation=True
    ).create_dir("lake")
    s3 = {
        "SMART_ALERTS_ARCHIVE__S3_ENDPOINT": s3_server,
        "SMART_ALERTS_ARCHIVE__S3_REGION": "us-east-1",
    }
    settings = job_settings(stack, stack.database_url)
    topics = settings.topics
    published = {
        "triggered": (topics.triggered, TriggeredAlert, ("values",)),
        "notifications": (topics.notifications, Notification, ()),
        "feedback": (topics.feedback, Feedback, ()),
    }
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
    for key, (topic, model_type, nested) in published.items():
        for message in read_topic(ArchiveStore(str(archive)), key, model_type, nested):
            value = message.model_dump_json(exclude_none=True).encode()
            producer.produce(topic, value, key=message.user_id.encode())  # type: ignore[attr-defined]
            producer.poll(0)
    assert producer.flush(30) == 0

    root = "s3://lake/learn"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))}
    env.update(settings.as_environment(), SMART_ALERTS_ARCHIVE__ROOT=root, **s3)
    done = subprocess.run(
        [SMART_ALERTS, "archive", "--bounded"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]

    for key, (_, model_type, nested) in published.items():
        ours = read_topic(ArchiveStore(str(archive)), key, model_type, nested)
        store = ArchiveStore(root, s3_endpoint=s3_server, s3_region="us-east-1")
        theirs = read_topic(store, key, model_type, nested)
        assert sorted(m.model_dump_json() for m in theirs) == sorted(
            m.model_dump_json() for m in ours
        )

    profiles = archive / "profiles.json"
    again = smart_alerts(
        "learn", "evaluate", "--archive", root, "--model", model, "--profiles", profiles, **s3
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == evaluation


def test_the_job_with_the_switch_on_decides_by_the_trained_model(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    """Through the real dataflow: a model that learnt AAPL alerts are opened and MSFT alerts
    are not puts AAPL first in a window where MSFT fired first, and keeps an MSFT alone off the
    push channels (min_relevance 0.5); the same input with the EMA (neutral 0.5) does neither."""
    config = LearningConfig()
    past = [
        make_alert(i, ("AAPL", "MSFT")[i % 2], T0 - timedelta(days=30) + i * timedelta(minutes=30))
        for i in range(200)
    ]
    notes = [note([a], a.triggered_at) for a in past]
    engaged = [opened(a, timedelta(minutes=2)) for a in past if a.symbol == "AAPL"]
    fit(examples(past, notes, engaged, {}, config), config).save(tmp_path / "model")

    decided = {}
    for name, switch in (
        ("ema", {}),
        (
            "trained",
            {"relevance_model": "trained", "relevance_model_path": str(tmp_path / "model")},
        ),
    ):
        settings = job_settings(
            stack,
            database_url,
            partitions={"market": 1, "reference": 1, "feedback": 1, "outputs": 1},
            engine={"shard_count": 2, "window_seconds": 60, "epoch_ms": 50},
            personalization={**PUSH_OLD_ALERTS, **switch},
        )
        user = f"u-{name}-{uuid.uuid4().hex[:6]}"
        topics = settings.topics
        rules = [
            rule("r-msft-" + name, user, "MSFT", 100),
            rule("r-aapl-" + name, user, "AAPL", 100),
        ]
        send(settings, topics.rules, [(r["id"], r) for r in rules])
        profile = {
            "user_id": user,
            "timezone": "America/New_York",
            "channels": CHANNELS,
            "min_relevance": 0.5,
        }
        send(settings, topics.profiles, [(user, profile)])
        ticks = crossings("MSFT", T0, [5, 70], 100) + crossings("AAPL", T0, [10], 100)
        ticks.sort(key=lambda tick: tick["ts"])
        send(settings, topics.ticks, [(tick["symbol"], tick) for tick in ticks])
        run(settings, bounded=True)
        decided[name] = sorted(notifications_of(settings, user), key=lambda n: n["window_start"])

    messages = {name: [n["message"] for n in found] for name, found in decided.items()}
    both_ema, alone_ema = decided["ema"]
    both_trained, alone_trained = decided["trained"]
    assert both_ema["message"].index("MSFT") < both_ema["message"].index("AAPL"), messages
    assert both_trained["message"].index("AAPL") < both_trained["message"].index("MSFT"), messages
    assert "push" in alone_ema["channels"] and alone_trained["channels"] == ["in_app"]


def test_run_with_a_bad_artifact_is_a_one_line_error(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    settings = job_settings(stack, database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))}
    env.update(
        settings.as_environment(),
        SMART_ALERTS_PERSONALIZATION__RELEVANCE_MODEL="trained",
        SMART_ALERTS_PERSONALIZATION__RELEVANCE_MODEL_PATH=str(tmp_path / "none"),
    )
    done = subprocess.run(
        [SMART_ALERTS, "run", "--bounded"], env=env, capture_output=True, text=True, timeout=120
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("smart-alerts:")]
    assert done.returncode == 2, done.stderr[-2000:]
    # The error and the configuration hint: the documented one or two lines.
    assert len(errors) <= 2 and errors[0].startswith("smart-alerts: error: [personalization]")
    assert "relevance_model_path" in errors[0] and "no such directory" in errors[0]
    assert "Traceback" not in done.stderr
