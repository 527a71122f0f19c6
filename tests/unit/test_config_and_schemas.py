import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_settings
from pipeline.schemas import TOPIC_MODELS, export, stale


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "postgresql://file"\n[engine]\nwindow_seconds = 30\n')
    monkeypatch.setenv("DATABASE_URL", "postgresql://env")
    monkeypatch.setenv("SMART_ALERTS_ENGINE__SHARD_COUNT", "8")
    settings = load_settings(config)
    assert settings.database_url == "postgresql://env"
    assert (settings.engine.window_seconds, settings.engine.shard_count) == (30, 8)


def test_bad_configuration_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[engine]\nwindow_seconds = 0\n")
    with pytest.raises(ConfigError, match="engine.window_seconds"):
        load_settings(config)
    config.write_text("[engin]\n")
    with pytest.raises(ConfigError, match="engin: Extra inputs"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_documented_and_deployed_configurations_load(tmp_path: Path) -> None:
    """The TOML in docs/operations.md and in the Kubernetes ConfigMap are valid settings."""
    root = Path(__file__).resolve().parents[2]
    operations = (root / "docs" / "operations.md").read_text()
    (example,) = re.findall(r"```toml\n(.*?)```", operations, re.DOTALL)
    manifests = yaml.safe_load_all((root / "deploy/kubernetes/config.yaml").read_text())
    (config_map,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    for name, text in (("operations", example), ("k8s", config_map["data"]["config.toml"])):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        settings = load_settings(path)
        assert settings.delivery.threads_per_channel == 4


def test_missing_servers_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL"):
        load_settings().require_servers()


def test_checked_in_schemas_match_the_models(tmp_path: Path) -> None:
    assert stale() == [], "run `smart-alerts schemas export` and commit docs/schemas/"
    export(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{topic}.schema.json" for topic in TOPIC_MODELS
    )
    (tmp_path / "market.ticks.schema.json").write_text("{}")
    assert stale(tmp_path) == ["market.ticks"]


def test_settings_as_environment_start_a_job_with_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        None,
        kafka_bootstrap_servers="127.0.0.1:9092",
        database_url="postgresql://db",
        redis_url="redis://cache",
        topics={"ticks": "t.ticks"},
        engine={"shard_count": 4, "addresses": ["a:1", "b:2"], "process_id": 1},
        recovery={"directory": str(tmp_path), "snapshot_seconds": 0.5},
        dependencies={"retry_for_seconds": 3.0},
    )
    env = settings.as_environment()
    assert env["SMART_ALERTS_ENGINE__SHARD_COUNT"] == "4"
    assert "SMART_ALERTS_ENGINE__USER_SHARD_COUNT" not in env  # defaults are left out
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(None) == settings
