"""Expected failures of every verb end in one or two lines naming the cause, with the documented
exit status (docs/operations.md, "Verbs"): 2 for configuration and input, 3 for a server that
did not answer. Each case runs the real ``smart-alerts`` console script; a closed port on
127.0.0.1 stands for a server that is down. Start-up waiting: a PostgreSQL that starts listening
late is waited for; one that never does is given up on after the configured budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jsonschema_rs
import pytest

from connectors.embedded import StackUrls, free_ports
from pipeline.messages import DeadLetter
from pipeline.schemas import SCHEMA_DIR

pytestmark = pytest.mark.integration

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
SAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "cli" / "samples"
EXIT_INPUT, EXIT_UNAVAILABLE = 2, 3
CLOSED = free_ports(1)[0]  # nothing listens here
DOWN = {
    "kafka": f"127.0.0.1:{CLOSED}",
    "postgres": f"postgresql://postgres@127.0.0.1:{CLOSED}/smart_alerts",
    "redis": f"redis://127.0.0.1:{CLOSED}/0",
}
PROGRESS = re.compile(r"waiting for (the Kafka broker|PostgreSQL|Redis) at ")


def is_log_record(line: str) -> bool:
    """A JSON log line below ERROR (stderr is no terminal here): start-up progress and the
    like, which the job logs on its way; the failure itself must be in the lines besides."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("level") in ("DEBUG", "INFO", "WARNING")


def smart_alerts(
    *args: str | Path, env: dict[str, str], timeout: float = 90, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    variables = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))
    }
    variables.update({"SMART_ALERTS_DEPENDENCIES__STARTUP_WAIT_SECONDS": "0", **env})
    return subprocess.run(
        [SMART_ALERTS, *map(str, args)],
        env=variables,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def servers(kafka: str, postgres: str, redis: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka, "DATABASE_URL": postgres, "REDIS_URL": redis}


def assert_failure(result: subprocess.CompletedProcess[str], code: int, *names: str) -> list[str]:
    """The exit status, at most two lines on stderr besides log records (no traceback, no panic,
    no librdkafka chatter) naming the cause."""
    err = result.stderr
    lines = [line for line in err.splitlines() if not is_log_record(line)]
    assert result.returncode == code, err
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in err and "panicked" not in err, err
    for name in names:
        assert name in lines[0], err
    return lines


# ---------------------------------------------------------------- unreachable servers


@pytest.mark.parametrize(
    "verb",
    [
        ["run"],
        ["migrate"],
        ["topics", "create"],
        ["replay", SAMPLES / "ticks.csv", "--topic", "ticks"],
        ["rules", "apply", SAMPLES / "rules.json"],
        [
            "rules",
            "from-template",
            "breakout_above_resistance",
            "--symbol",
            "AAPL",
            "--user",
            "u-1",
            "--param",
            "level=200",
            "--publish",
        ],
        ["api"],
    ],
    ids=lambda verb: " ".join(map(str, verb[:2])),
)
def test_an_unreachable_server_is_one_line_and_exit_3(verb: list[str]) -> None:
    result = smart_alerts(*verb, env=servers(DOWN["kafka"], DOWN["postgres"], DOWN["redis"]))
    server = "PostgreSQL" if verb == ["migrate"] else "Kafka broker"
    lines = assert_failure(result, EXIT_UNAVAILABLE, server, f"127.0.0.1:{CLOSED}")
    assert "DATABASE_URL" in lines[0] or "KAFKA_BOOTSTRAP_SERVERS" in lines[0]


def test_run_names_postgres_then_redis_when_the_broker_is_up(stack: StackUrls) -> None:
    result = smart_alerts("run", env=servers(stack.kafka_bootstrap, DOWN["postgres"], ""))
    # Without REDIS_URL nothing is waited for: the missing setting is named first.
    assert_failure(result, EXIT_INPUT, "REDIS_URL")
    result = smart_alerts(
        "run", env=servers(stack.kafka_bootstrap, DOWN["postgres"], stack.redis_url)
    )
    assert_failure(result, EXIT_UNAVAILABLE, "PostgreSQL", f"127.0.0.1:{CLOSED}", "DATABASE_URL")
    result = smart_alerts(
        "run", env=servers(stack.kafka_bootstrap, stack.database_url, DOWN["redis"])
    )
    assert_failure(result, EXIT_UNAVAILABLE, "Redis", f"127.0.0.1:{CLOSED}", "REDIS_URL")


def test_a_wrong_postgres_login_is_a_configuration_error(stack: StackUrls) -> None:
    parts = urlsplit(stack.database_url)
    wrong_db = urlunsplit(parts._replace(path="/no_such_database"))
    result = smart_alerts(
        "migrate",
        env={
            **servers(stack.kafka_bootstrap, wrong_db, stack.redis_url),
            "SMART_ALERTS_DEPENDENCIES__STARTUP_WAIT_SECONDS": "30",
        },
    )
    # Not waited for: no amount of waiting creates the database.
    assert_failure(result, EXIT_INPUT, "PostgreSQL", "refused", "no_such_database")
    assert not PROGRESS.search(result.stderr)


def test_an_unwritable_recovery_directory_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = smart_alerts(
        "run",
        env={
            **servers(DOWN["kafka"], DOWN["postgres"], DOWN["redis"]),
            "SMART_ALERTS_RECOVERY__DIRECTORY": str(a_file / "recovery"),
        },
    )
    lines = assert_failure(result, EXIT_INPUT, "recovery directory", str(a_file / "recovery"))
    assert "writable" in lines[0]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (None, "not found"),
        ("this is not [toml", "not valid TOML"),
        ("[engine]\nshard_cuont = 3\n", "engine.shard_cuont"),
        ("[engine]\nshard_count = -1\n", "engine.shard_count"),
    ],
    ids=["missing", "not-toml", "unknown-key", "bad-value"],
)
def test_a_bad_config_file_is_named_with_exit_2(
    tmp_path: Path, content: str | None, named: str
) -> None:
    config = tmp_path / "smart-alerts.toml"
    if content is not None:
        config.write_text(content)
    result = smart_alerts("--config", config, "migrate", env={})
    lines = assert_failure(result, EXIT_INPUT, named)
    assert "docs/operations.md" in lines[-1]


# ---------------------------------------------------------------- input files


def test_missing_input_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.csv"
    env = servers(DOWN["kafka"], DOWN["postgres"], DOWN["redis"])
    for args in (
        ["replay", missing, "--topic", "ticks"],
        ["rules", "apply", tmp_path / "nothing-here.json"],
        [
            "backtest",
            "--rules",
            SAMPLES / "rules.json",
            "--ticks",
            missing,
            "--out",
            tmp_path / "out.jsonl",
        ],
        [
            "backtest",
            "--rules",
            tmp_path / "nothing-here.json",
            "--ticks",
            SAMPLES / "ticks.csv",
            "--out",
            tmp_path / "out.jsonl",
        ],
    ):
        result = smart_alerts(*args, env=env)
        assert_failure(result, EXIT_INPUT, "nothing-here", "no such file")


def test_malformed_input_files_are_named(tmp_path: Path, stack: StackUrls) -> None:
    bad_csv = tmp_path / "ticks.csv"
    bad_csv.write_text('ts,symbol,price\n"2026-01-05T14:30:00Z,AAPL\n1,2,3,4\n')
    bad_parquet = tmp_path / "ticks.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    bad_json = tmp_path / "rules.json"
    bad_json.write_text('[{"id": "r-1",')
    env = servers(stack.kafka_bootstrap, stack.database_url, stack.redis_url)
    out = tmp_path / "out.jsonl"
    cases = [
        (
            ["backtest", "--rules", SAMPLES / "rules.json", "--ticks", bad_csv, "--out", out],
            "cannot read as CSV",
        ),
        (
            ["backtest", "--rules", SAMPLES / "rules.json", "--ticks", bad_parquet, "--out", out],
            "cannot read as Parquet",
        ),
        (["replay", bad_csv, "--topic", "ticks"], "cannot read as CSV"),
        (["rules", "apply", bad_json], "not JSON"),
    ]
    for args, named in cases:
        assert_failure(smart_alerts(*args, env=env), EXIT_INPUT, named)
    assert not out.exists()


@pytest.mark.parametrize("missing", ["ts", "symbol"])
def test_a_backtest_file_without_ts_or_symbol_names_the_column(
    tmp_path: Path, missing: str
) -> None:
    columns = [c for c in ("ts", "symbol", "price") if c != missing]
    row = {"ts": "2026-01-05T14:30:00Z", "symbol": "AAPL", "price": "201"}
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(",".join(columns) + "\n" + ",".join(row[c] for c in columns) + "\n")
    result = smart_alerts(
        "backtest",
        "--rules",
        SAMPLES / "rules.json",
        "--ticks",
        ticks,
        "--out",
        tmp_path / "out.jsonl",
        env={},
    )
    lines = assert_failure(result, EXIT_INPUT, str(ticks), f"no '{missing}' column")
    assert "DeadLetter" not in result.stderr, lines


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = smart_alerts(
        "--debug",
        "backtest",
        "--rules",
        SAMPLES / "rules.json",
        "--ticks",
        tmp_path / "nothing-here.csv",
        "--out",
        tmp_path / "out.jsonl",
        env={},
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileFormatError" in result.stderr


# ---------------------------------------------------------------- dead letters without a key


def test_a_dead_letter_without_key_has_key_null_per_its_schema(tmp_path: Path) -> None:
    schema = json.loads((SCHEMA_DIR / "alerts.dlq.schema.json").read_text())
    letter = DeadLetter(
        source_topic="market.ticks",
        partition=0,
        offset=7,
        key=None,
        value=None,
        error="symbol: Field required",
        ts="2026-01-05T14:30:00Z",
    )
    document = json.loads(letter.to_json())
    assert document["key"] is None and document["value"] is None
    jsonschema_rs.validator_for(schema).validate(document)
    # End to end: a backtest row with an empty symbol becomes a dead letter (keyless) and the
    # run goes on, where it used to stop on "DeadLetter key Field required".
    ticks = tmp_path / "ticks.csv"
    ticks.write_text("ts,symbol,price\n2026-01-05T14:30:00Z,,201\n2026-01-05T14:30:01Z,AAPL,202\n")
    result = smart_alerts(
        "backtest",
        "--rules",
        SAMPLES / "rules.json",
        "--ticks",
        ticks,
        "--out",
        tmp_path / "out.jsonl",
        env={},
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"rows rejected\s*\|\s*1 ", result.stdout), result.stdout


# ---------------------------------------------------------------- waiting at start-up


class LateProxy:
    """A TCP port that starts listening ``delay_s`` after it is made, then forwards each
    connection to ``target``: a PostgreSQL that comes up late."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.port = free_ports(1)[0]
        self.target = target
        self._stop = threading.Event()
        self._timer = threading.Timer(delay_s, self._listen)
        self._timer.start()
        self._server: socket.socket | None = None

    def _listen(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        self._server = server
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()
        self._stop.set()
        if self._server is not None:
            time.sleep(0.3)
            self._server.close()


@pytest.fixture
def late_postgres(stack: StackUrls) -> Iterator[tuple[LateProxy, str]]:
    parts = urlsplit(stack.database_url)
    assert parts.hostname and parts.port
    proxy = LateProxy((parts.hostname, parts.port), delay_s=3.0)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        proxy.close()


def test_start_up_waits_for_a_late_postgres(
    stack: StackUrls, late_postgres: tuple[LateProxy, str]
) -> None:
    proxy, url = late_postgres
    result = smart_alerts(
        "migrate",
        env={
            **servers(stack.kafka_bootstrap, url, stack.redis_url),
            "SMART_ALERTS_DEPENDENCIES__STARTUP_WAIT_SECONDS": "60",
        },
    )
    assert result.returncode == 0, result.stderr
    assert f"waiting for PostgreSQL at 127.0.0.1:{proxy.port} (attempt 1, next in 1 s)" in (
        result.stderr
    )
    assert "migration(s) applied" in result.stdout or "up to date" in result.stdout


def test_start_up_gives_up_after_the_configured_wait() -> None:
    started = time.monotonic()
    result = smart_alerts(
        "migrate",
        env={
            **servers(DOWN["kafka"], DOWN["postgres"], DOWN["redis"]),
            "SMART_ALERTS_DEPENDENCIES__STARTUP_WAIT_SECONDS": "3",
        },
    )
    took = time.monotonic() - started
    lines = assert_failure(result, EXIT_UNAVAILABLE, "PostgreSQL", "after 3 attempts")
    progress = [line for line in result.stderr.splitlines() if PROGRESS.search(line)]
    assert len(progress) == 2, result.stderr  # after attempts 1 and 2 (1 s, then 2 s)
    assert "attempt 2, next in 2 s" in progress[1]
    assert 3.0 <= took < 30, (took, lines)
