"""The demo over the bundled sample on the real stack, and the CLI's contract with operators."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from connectors.embedded import StackUrls
from connectors.mail_catcher import MailCatcher
from pipeline.cli.demo import SAMPLE_PUSH_AGE_LIMITS, run_demo_on, with_mail_catcher
from pipeline.config import load_settings

pytestmark = pytest.mark.integration


def test_demo_summary_shows_alerts_notifications_deliveries_and_dead_letters(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(
        None,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=database_url,
        redis_url=stack.redis_url,
        engine={"window_seconds": 300},
        personalization=SAMPLE_PUSH_AGE_LIMITS,
    )
    printed: list[str] = []
    with MailCatcher(tmp_path / "mail") as catcher:
        summary = run_demo_on(with_mail_catcher(settings, catcher.port), printed.append, catcher)
    rows = {what: count for what, count, _ in summary.rows}
    assert int(rows["alerts triggered"]) >= 1
    assert int(rows["notifications"]) >= 1
    assert rows["dead letters"] == "3"
    assert rows["read from market.ticks"] == "9000 + 2 invalid"
    assert rows["alerts on topic"] == rows["alerts triggered"]
    assert rows["in-app feed entries"] == rows["notifications"]
    assert rows["deliveries in_app DELIVERED"] == rows["notifications"]
    emails = int(rows["deliveries email DELIVERED"])
    assert emails >= 1 and rows["e-mails caught"] == str(emails)
    assert len(list((tmp_path / "mail").glob("*.eml"))) == emails
    assert rows["deliveries sms FAILED (no sms provider configured)"] == "1"
    assert "| dead letters" in printed[-1]
    with psycopg.connect(database_url) as conn:
        (scores,) = conn.execute(
            "SELECT relevance_scores FROM user_alert_profiles WHERE user_external_id = 'u-alice'"
        ).fetchone()
    assert scores["symbol"]["AAPL"] == pytest.approx(
        float(rows["relevance u-alice symbol:AAPL"]), abs=1e-3
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_explains_every_verb() -> None:
    out = cli("--help").stdout
    for verb in ("run", "demo", "dev", "migrate", "topics", "rules", "replay", "schemas"):
        assert f"    {verb}" in out


def test_configuration_errors_exit_2_with_the_reason(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", "REDIS_URL": ""}
    result = cli("migrate", env=env)
    assert result.returncode == 2
    assert "missing server configuration: KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    bad = tmp_path / "c.toml"
    bad.write_text("[engine]\nshard_count = 'many'\n")
    result = cli("--config", str(bad), "migrate")
    assert result.returncode == 2 and "engine.shard_count" in result.stderr


def test_replay_validates_rows_and_names_the_bad_one(stack: StackUrls, tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap, "DATABASE_URL": "x", "REDIS_URL": "x"}
    data = tmp_path / "ticks.csv"
    data.write_text(
        "symbol,ts,price\nAAPL,2026-01-05T14:30:00Z,1.5\nAAPL,2026-01-05T14:30:01Z,-2\n"
    )
    topic = f"replay-{os.getpid()}.ticks"
    assert cli("topics", "create", env={**env, "SMART_ALERTS_TOPICS__TICKS": topic}).returncode == 0
    result = cli(
        "replay", str(data), "--topic", "ticks", env={**env, "SMART_ALERTS_TOPICS__TICKS": topic}
    )
    assert result.returncode == 2
    assert "row 2 is not a valid Tick: price: Input should be greater than 0" in result.stderr
