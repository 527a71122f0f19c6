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
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.integration

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
ROW = re.compile(r"^(\S.*?)\s{2,}(\d+\.\d{4})\s+(\d+\.\d{4})$", re.M)


def smart_alerts(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_ALERTS_")}
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


def test_train_then_evaluate_prints_both_models_scores(archive: Path, model: Path) -> None:
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["trained_on"]["days"] == ["2026-01-05", "2026-01-06", "2026-01-07"]
    assert metadata["trained_on"]["users"] == 4
    assert json.loads((model / "features.json").read_text())  # the feature list

    done = smart_alerts("learn", "evaluate", "--archive", archive, "--model", model)
    assert done.returncode == 0, done.stderr
    assert "tested on 2026-01-08..2026-01-08 (1 day)" in done.stdout
    rows = {name: (float(loss), float(auc)) for name, loss, auc in ROW.findall(done.stdout)}
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
