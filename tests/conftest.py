"""Shared pytest fixtures.

``stack`` gives the URLs of a Kafka broker, PostgreSQL and Redis for the whole session: the
servers named by ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` / ``REDIS_URL`` where set,
embedded servers (connectors/embedded.py) for the others. Nothing starts unless a test asks
for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from connectors.embedded import StackUrls, free_ports, stack_from_env_or_embedded
from pipeline.config import Settings

if TYPE_CHECKING:
    from tests.fakes.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    """Kafka, PostgreSQL and Redis URLs, shared by the whole test session."""
    with stack_from_env_or_embedded(tmp_path_factory.mktemp("stack")) as urls:
        yield urls


@pytest.fixture(scope="module")
def database_url(stack: StackUrls, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for one test module, on the stack's PostgreSQL server."""
    with fresh_database(stack, request.module.__name__.rsplit(".", 1)[-1]) as url:
        yield url


@contextmanager
def fresh_database(stack: StackUrls, label: str) -> Iterator[str]:
    """A database made with CREATE DATABASE next to the stack's, migrated with
    ``sinks.migrations.migrate``, dropped at the end."""
    import re
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg.conninfo import make_conninfo

    from sinks.migrations import migrate

    name = f"t_{re.sub(r'[^a-z0-9]+', '_', label.lower())[:40]}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(stack.database_url)
    if parts.scheme in ("postgres", "postgresql"):  # keep the URL form for URL readers
        url = urlunsplit(parts._replace(path=f"/{name}"))
    else:
        url = make_conninfo(stack.database_url, dbname=name)
    try:
        migrate(url, log=lambda _line: None)
        yield url
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The tests replay fixed dates in the past; the job does not push alerts that old (their age by
# the wall clock), unless the limits are raised like this.
PUSH_OLD_ALERTS = {
    f"stale_{priority}_seconds": 100 * 365 * 86400
    for priority in ("low", "medium", "high", "critical")
}


WEBHOOK_SECRET_REF = "VS9_TEST_WEBHOOK_SECRET"  # profiles name it; the job reads it from the env


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 that verifies every signature; the secret it expects is
    in the environment under WEBHOOK_SECRET_REF, where the job (and its child processes) find
    it."""
    from tests.fakes.webhook_receiver import WebhookReceiver, new_secret

    secret = new_secret(b"tests")
    monkeypatch.setenv(WEBHOOK_SECRET_REF, secret)
    with WebhookReceiver([secret]) as server:
        yield server


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def job_settings(stack: StackUrls, database_url: str, **sections: Any) -> Settings:
    """Settings for one test's run of the job: topics of its own (a unique prefix, created),
    the module's database, the session's Redis; ``sections`` override config sections."""
    import uuid

    from pipeline.cli.commands import topics_create
    from pipeline.config import Topics, load_settings

    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = Topics.prefixed(prefix)
    settings = load_settings(
        None,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=database_url,
        redis_url=stack.redis_url,
        topics=topics,
        **sections,
    )
    topics_create(settings, echo=lambda _: None)
    return settings


# ---------------------------------------------------------------- the job in processes

CHILD = """
import sys
from pipeline.config import Settings
from pipeline.dataflow import run
sys.exit(run(Settings.model_validate_json(sys.stdin.read()), bounded=True))
"""


def start_processes(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes of one bounded job (a Bytewax cluster when more than one)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)] if count > 1 else None
    children = []
    for index in range(count):
        engine = settings.engine.model_copy(
            update={"process_id": index if addresses else None, "addresses": addresses}
        )
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert child.stdin is not None
        child.stdin.write(settings.model_copy(update={"engine": engine}).model_dump_json().encode())
        child.stdin.close()
        children.append(child)
    return children


def wait_all(children: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    return [child.wait(max(0.1, end - time.monotonic())) for child in children]


# ---------------------------------------------------------------- a real browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The flags this machine's closed network needs (no background fetches, no QUIC), headless.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Skipped only where the set-up could not install the browser (`make test` installs it when run
# as root, as CI does): there a missing browser is a broken set-up, and the test fails.
needs_chromium = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)) and os.geteuid() != 0,
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
    "`make test` installs them when run as root, or apt-get install chromium chromium-driver",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by selenium, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
