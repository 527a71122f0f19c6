"""The built wheel, installed non-editable into a fresh venv, runs the verbs that read data files.

The fresh venv borrows the project venv's dependencies through a .pth line naming its
site-packages: .pth files inside a directory added that way are not processed, so the project's
editable install stays inactive, and `pipeline` can only come from the wheel (checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from connectors.embedded import StackUrls
from tests.conftest import fresh_database

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("api", "connectors", "pipeline", "sinks")
# Not copied into the build: the venv, build leftovers that setuptools would ship as they are,
# and caches.
SKIP = shutil.ignore_patterns(
    ".venv", ".git", ".state", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)
TIMEOUT = 120

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the working tree, built from a copy (an in-tree build/ keeps stale files)."""
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=SKIP)
    # No isolation: the project venv's setuptools builds it, offline.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(tree), "-w", str(work / "dist")],
        check=True,
        timeout=TIMEOUT,
    )
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel, non-editable; returns its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Installed before the .pth exists, so pip sees no other copy of the project to replace.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q"]
        + ["--no-warn-script-location", str(wheel)],
        check=True,
        timeout=TIMEOUT,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env_dir / "bin"


def smart_alerts(
    bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(bin_dir / "smart-alerts"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"smart-alerts {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def test_the_wheel_carries_every_source_file(wheel: Path) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in SOURCES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    expected |= {f"sinks/sql/{path.name}" for path in (ROOT / "sql").glob("*.sql")}
    missing = sorted(expected - shipped)
    assert not missing, (
        f"the wheel leaves out {missing}: list the package and its data files in "
        "pyproject.toml [tool.setuptools]"
    )


def test_installed_wheel_migrates_lists_templates_and_backtests(
    installed: Path, stack: StackUrls, tmp_path: Path
) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import pipeline, sinks.sql; print(pipeline.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where
    assert not Path(where).is_relative_to(ROOT), where

    with fresh_database(stack, "wheel") as url:
        # fresh_database migrated it already: drop the schema so the wheel's migrate applies all.
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        servers = {
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "REDIS_URL": stack.redis_url,
        }
        result = smart_alerts(installed, "migrate", cwd=tmp_path, env=servers)
        sql_files = sorted(path.name for path in (ROOT / "sql").glob("*.sql"))
        for name in sql_files:
            assert f"applied {name}" in result.stdout + result.stderr
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert row == (len(sql_files),)

    listed = smart_alerts(installed, "templates", "list", cwd=tmp_path).stdout
    templates = sorted(p.stem for p in (ROOT / "pipeline" / "rules" / "templates").glob("*.yaml"))
    for name in templates:
        assert name in listed

    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {
                    "id": "r-wheel",
                    "user_id": "u-wheel",
                    "name": "AAPL above 200",
                    "symbol": "AAPL",
                    "cooldown_seconds": 0,
                    "conditions": {"type": "price_crosses_above", "threshold": 200},
                }
            ]
        )
    )
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "symbol,ts,price,size\n"
        "AAPL,2026-01-05T14:30:00Z,199.50,100\n"
        "AAPL,2026-01-05T14:31:00Z,200.50,100\n"
        "AAPL,2026-01-05T14:32:00Z,199.00,100\n"
        "AAPL,2026-01-05T14:33:00Z,201.00,100\n"
    )
    out = tmp_path / "alerts.jsonl"
    smart_alerts(
        installed,
        "backtest",
        "--rules",
        str(rules),
        "--ticks",
        str(ticks),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["rule_id"], a["user_id"], a["symbol"]) for a in alerts] == [
        ("r-wheel", "u-wheel", "AAPL")
    ] * 2
