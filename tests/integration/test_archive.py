"""The Parquet archive (``smart-alerts archive``, connectors/archive.py), for real: the console
script as a subprocess against the embedded broker, killed with SIGKILL mid-run and restarted
(every offset exactly once), stopped with SIGTERM (everything read is written and committed),
a roll left incomplete by a crash (completed at start), an S3-compatible server (moto, run from
PyPI on 127.0.0.1), a backtest read from the archive (the same alerts as from the same ticks in
a file), and the queries docs/contracts.md documents, run by polars and DuckDB.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.fs as pafs
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.archive import ArchiveError, ArchiveStore, read_archive
from connectors.embedded import StackUrls, free_ports
from connectors.files import read_rows
from pipeline.config import Settings
from tests.conftest import job_settings, wait_for

pytestmark = pytest.mark.integration

ROOT_DIR = Path(__file__).resolve().parents[2]
SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
SAMPLES = ROOT_DIR / "pipeline" / "cli" / "samples"
DAY = date(2026, 1, 5)
PART_NAME = re.compile(r"^part-(\d+)-(\d+)-(\d+)\.parquet$")


# ---------------------------------------------------------------- helpers


def environment(settings: Settings, root: str | Path, **archive: Any) -> dict[str, str]:
    variables = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))
    }
    variables.update(settings.as_environment())
    variables["SMART_ALERTS_ARCHIVE__ROOT"] = str(root)
    variables["SMART_ALERTS_LOGGING__FORMAT"] = "text"
    for key, value in archive.items():
        text = value if isinstance(value, str) else json.dumps(value)
        variables[f"SMART_ALERTS_ARCHIVE__{key.upper()}"] = text
    return variables


def archive(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [SMART_ALERTS, "archive", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SMART_ALERTS, "archive", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def produce(bootstrap: str, topic: str, records: list[tuple[str | None, Any]]) -> None:
    """Records of (key, value): a dict is sent as JSON, bytes as they are, None as a tombstone."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in records:
        payload = json.dumps(value).encode() if isinstance(value, dict) else value
        producer.produce(topic, payload, key=key.encode() if key is not None else None)
        producer.poll(0)
    assert producer.flush(30) == 0


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset, read to the end (Tansu's listed offsets are not ends)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "t-archive-ends", "enable.partition.eof": True}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends = {p: 0 for p in partitions}
        done: set[int] = set()
        deadline = time.monotonic() + 30
        while len(done) < len(partitions) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is not None:
                    done.add(message.partition())
                else:
                    ends[message.partition()] = message.offset() + 1
        assert len(done) == len(partitions), "partitions not read to their end"
        return ends
    finally:
        consumer.close()


def part_files(root: Path, key: str) -> list[Path]:
    return sorted((root / f"topic={key}").glob("date=*/part-*.parquet"))


def rows(root: Path, key: str) -> pl.DataFrame:
    return pl.scan_parquet(
        root / f"topic={key}" / "**" / "*.parquet", hive_partitioning=True
    ).collect()


def tick(symbol: str, ts: datetime, price: float) -> dict[str, Any]:
    return {
        "v": 1,
        "symbol": symbol,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "price": price,
        "size": 100,
    }


# ---------------------------------------------------------------- kill -9 and restart


def test_kill_9_mid_run_and_restart_leave_every_offset_exactly_once(
    stack: StackUrls, tmp_path: Path
) -> None:
    settings = job_settings(stack, stack.database_url, partitions={"market": 4})
    bootstrap = stack.kafka_bootstrap
    start_time = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    # Three dates interleaved, so that every roll is three files: a kill can fall between them.
    symbols = ("AAPL", "MSFT", "NVDA", "TSLA", "SPY", "QQQ")
    records: list[tuple[str | None, Any]] = []
    for i in range(24_000):
        symbol = symbols[i % len(symbols)]
        when = start_time + timedelta(days=i % 3, seconds=i)
        records.append((symbol, tick(symbol, when, 100 + (i % 50) / 10)))
    bad = [("AAPL", b"{not json"), ("MSFT", {"v": 1, "symbol": "MSFT", "price": -1})]
    produce(bootstrap, settings.topics.ticks, records[:12_000] + bad + records[12_000:])
    root = tmp_path / "archive"
    env = environment(settings, root, topics=["ticks"], max_rows=700, progress_seconds=0.5)

    for files_before_kill in (15, 45):
        process = start(env)
        try:
            wait_for(
                lambda n=files_before_kill: len(part_files(root, "ticks")) >= n,
                60,
                f"{files_before_kill} archive files",
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert process.stdout and process.stderr
            process.stdout.close()
            process.stderr.close()
    archive(env, "--bounded")

    archived = rows(root, "ticks")
    ends = end_offsets(bootstrap, settings.topics.ticks)
    assert sum(ends.values()) == len(records) + len(bad)
    assert archived.height == len(records)
    assert archived.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == len(
        records
    )
    # Every offset of every partition, but the two bad records (not valid ticks), exactly once.
    for partition, end in ends.items():
        offsets = archived.filter(pl.col("kafka_partition") == partition)["kafka_offset"]
        assert offsets.n_unique() == offsets.len()
        assert set(offsets) <= set(range(end))
    missing = sum(ends.values()) - archived.height
    assert missing == len(bad)
    # Each row is in its event time's date folder.
    assert (archived["date"].cast(pl.String) == archived["ts"].dt.date().cast(pl.String)).all()
    # The offsets are committed (for lag tools) up to each partition's end.
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": "smart-alerts-archive"})
    try:
        committed = committer.committed(
            [TopicPartition(settings.topics.ticks, p) for p in ends], timeout=10
        )
    finally:
        committer.close()
    # (a partition with nothing to archive has nothing committed: -1001)
    assert {tp.partition: max(tp.offset, 0) for tp in committed} == ends


def test_a_roll_a_crash_left_incomplete_is_completed_at_start(
    stack: StackUrls, tmp_path: Path
) -> None:
    settings = job_settings(stack, stack.database_url, partitions={"market": 1})
    start_time = datetime(2026, 1, 5, 23, 59, 0, tzinfo=UTC)
    records: list[tuple[str | None, Any]] = [
        ("AAPL", tick("AAPL", start_time + timedelta(seconds=i), 200 + i / 100)) for i in range(300)
    ]
    produce(stack.kafka_bootstrap, settings.topics.ticks, records)
    root = tmp_path / "archive"
    env = environment(settings, root, topics=["ticks"], max_rows=1000)
    archive(env, "--bounded")
    files = part_files(root, "ticks")
    # One roll of 300 rows on two dates: a file in each date folder, with the same name.
    assert [(f.parent.name, f.name) for f in files] == [
        ("date=2026-01-05", "part-0-0-299.parquet"),
        ("date=2026-01-06", "part-0-0-299.parquet"),
    ]
    before = {f: f.read_bytes() for f in files}
    # A crash between the two renames: the second file never appeared; and a temporary file
    # of the killed run is left behind.
    files[1].unlink()
    leftover = files[0].parent / ".part-0-300-310.parquet.0123456789ab.tmp"
    leftover.write_bytes(b"half a file")
    produce(stack.kafka_bootstrap, settings.topics.ticks, records[:10])
    archive(env, "--bounded")
    assert not leftover.exists()
    after = part_files(root, "ticks")
    assert [f.name for f in after] == [
        "part-0-0-299.parquet",
        "part-0-300-309.parquet",
        "part-0-0-299.parquet",
    ]
    assert pl.read_parquet(files[1]).equals(pl.read_parquet(io_bytes(before[files[1]])))
    archived = rows(root, "ticks")
    assert sorted(archived["kafka_offset"]) == list(range(310))


def io_bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# ---------------------------------------------------------------- every topic, SIGTERM


def test_every_topic_archived_and_sigterm_writes_what_was_read(
    stack: StackUrls, tmp_path: Path
) -> None:
    settings = job_settings(stack, stack.database_url)
    topics = settings.topics
    bootstrap = stack.kafka_bootstrap
    ts = "2026-01-05T14:30:00.125Z"
    rule = {
        "v": 1,
        "id": "r-1",
        "user_id": "u-1",
        "name": "AAPL breakout",
        "symbol": "AAPL",
        "priority": "HIGH",
        "conditions": {"all": [{"type": "price_crosses_above", "threshold": 200}]},
    }
    alert = {
        "v": 1,
        "alert_id": "a-1",
        "rule_id": "r-1",
        "rule_version": 1,
        "user_id": "u-1",
        "symbol": "AAPL",
        "priority": "HIGH",
        "title": "AAPL: breakout",
        "message": "price 200.5 crossed above 200",
        "triggered_at": ts,
        "condition_types": ["price_crosses_above"],
        "values": {"price": 200.5, "threshold": 200.0},
    }
    notification = {
        "v": 1,
        "notification_id": "n-1",
        "user_id": "u-1",
        "alert_ids": ["a-1"],
        "title": "1 alert: AAPL",
        "message": "AAPL: breakout",
        "highest_priority": "HIGH",
        "channels": ["in_app", "push"],
        "window_start": "2026-01-05T14:30:00.000Z",
        "window_end": "2026-01-05T14:31:00.000Z",
    }
    flow = {
        "v": 1,
        "id": "f-1",
        "ts": ts,
        "underlying": "AAPL",
        "contract": "AAPL  260117C00200000",
        "right": "C",
        "strike": 200,
        "expiry": "2026-01-17",
        "price": 2.5,
        "size": 500,
        "side": "ask",
        "trade_type": "sweep",
    }
    feedback = {"v": 1, "user_id": "u-1", "alert_id": "a-1", "action": "opened", "ts": ts}
    letter = {
        "v": 1,
        "source_topic": topics.ticks,
        "partition": 0,
        "offset": 7,
        "key": "AAPL",
        "value": "{not json",
        "error": "not JSON",
        "ts": ts,
    }
    produce(bootstrap, topics.rules, [("r-1", rule), ("r-2", rule | {"id": "r-2"}), ("r-2", None)])
    produce(bootstrap, topics.ticks, [("AAPL", tick("AAPL", DAY_TIME, 200.5))] * 5)
    produce(bootstrap, topics.options_flow, [("AAPL", flow), ("AAPL", flow | {"size": -1})])
    produce(bootstrap, topics.feedback, [("u-1", feedback)])
    produce(bootstrap, topics.triggered, [("u-1", alert)])
    produce(bootstrap, topics.notifications, [("u-1", notification)])
    produce(bootstrap, topics.dlq, [("AAPL", letter)])

    root = tmp_path / "archive"
    env = environment(settings, root, progress_seconds=0.2)
    process = start(env)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        # Nothing is written before the roll (600 s by default): the progress line shows the
        # messages read, then SIGTERM must write them all.
        for line in process.stderr:
            lines.append(line)
            if "archive: 14 messages read" in line:
                break
        assert part_files(root, "ticks") == []
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, "".join(lines) + err
    assert "SIGTERM" in err
    assert "rows archived" in out

    ticks = rows(root, "ticks")
    assert ticks.height == 5 and set(ticks["date"].cast(pl.String)) == {"2026-01-05"}
    flows = rows(root, "options_flow")
    assert flows.height == 1 and flows["size"].to_list() == [500]  # the bad print is not kept
    rules = rows(root, "rules").sort("kafka_offset")
    assert rules["id"].to_list() == ["r-1", "r-2", "r-2"]
    assert rules["deleted"].to_list() == [False, False, True]
    assert rules["name"].to_list()[2] is None
    assert json.loads(rules["conditions"][0]) == rule["conditions"]
    alerts = rows(root, "triggered")
    assert alerts["condition_types"].to_list() == [["price_crosses_above"]]
    assert json.loads(alerts["values"][0]) == alert["values"]
    assert alerts["triggered_at"][0] == datetime(2026, 1, 5, 14, 30, 0, 125000, tzinfo=UTC)
    notes = rows(root, "notifications")
    assert notes["channels"].to_list() == [["in_app", "push"]]
    assert notes["follow_up_of"].to_list() == [None]
    assert rows(root, "feedback")["action"].to_list() == ["opened"]
    assert rows(root, "dlq")["value"].to_list() == ["{not json"]
    # SIGTERM committed what it wrote.
    ends = end_offsets(bootstrap, topics.options_flow)
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": "smart-alerts-archive"})
    try:
        committed = committer.committed(
            [TopicPartition(topics.options_flow, p) for p in ends], timeout=10
        )
    finally:
        committer.close()
    assert {tp.partition: max(tp.offset, 0) for tp in committed} == ends


DAY_TIME = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


# ---------------------------------------------------------------- S3


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[str]:
    """moto's S3-compatible server (from PyPI) on 127.0.0.1; its endpoint URL."""
    port = free_ports(1)[0]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "moto.log").open("wb"),
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 30, "moto_server to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def test_archive_on_an_s3_compatible_server(
    stack: StackUrls, tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = {
        "AWS_ACCESS_KEY_ID": "archive-test",
        "AWS_SECRET_ACCESS_KEY": "archive-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    scheme, _, address = s3_server.partition("://")
    bucket = pafs.S3FileSystem(
        endpoint_override=address, scheme=scheme, region="us-east-1", allow_bucket_creation=True
    )
    bucket.create_dir("lake")

    settings = job_settings(stack, stack.database_url, partitions={"market": 2})
    records: list[tuple[str | None, Any]] = [
        (sym, tick(sym, DAY_TIME + timedelta(hours=i), 50 + i))
        for i in range(40)
        for sym in ("AAPL", "MSFT")
    ]
    produce(stack.kafka_bootstrap, settings.topics.ticks, records)
    env = environment(
        settings,
        "s3://lake/archive",
        topics=["ticks"],
        s3_endpoint=s3_server,
        s3_region="us-east-1",
        max_rows=30,
    )
    env.update(credentials)
    archive(env, "--bounded")
    archive(env, "--bounded")  # resumes from the objects: nothing is written twice

    store = ArchiveStore("s3://lake/archive", s3_endpoint=s3_server, s3_region="us-east-1")
    names = [p.path for p in store.parts("ticks")]
    assert names and all(re.search(r"/topic=ticks/date=2026-01-0[567]/part-", n) for n in names)
    table = read_archive(store, "ticks", date(2026, 1, 5), date(2026, 1, 7))
    assert table.num_rows == len(records)
    pairs = zip(
        table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist(), strict=True
    )
    assert len(set(pairs)) == len(records)
    assert sorted(table["price"].to_pylist()) == sorted(r[1]["price"] for r in records)


# ---------------------------------------------------------------- backtest and queries


@pytest.fixture(scope="module")
def archived_market(stack: StackUrls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three days of the sample's ticks (the first 20 minutes, shifted by a day each) and a
    few sweeps a day, published, archived, and the same rows kept as files."""
    folder = tmp_path_factory.mktemp("archived-market")
    sample = [row for row in read_rows(SAMPLES / "ticks.csv") if row["ts"] < "2026-01-05T14:50"]
    ticks, flow = [], []
    for day in range(3):
        for row in sample:
            when = datetime.fromisoformat(row["ts"]) + timedelta(days=day)
            ticks.append(row | {"v": 1, "ts": when.isoformat().replace("+00:00", "Z")})
        for n in range(4):
            when = datetime(2026, 1, 5 + day, 14, 31 + 4 * n, tzinfo=UTC)
            flow.append(
                {
                    "v": 1,
                    "id": f"f-{day}-{n}",
                    "ts": when.isoformat().replace("+00:00", "Z"),
                    "underlying": "AAPL",
                    "contract": "AAPL  260220C00200000",
                    "right": "C",
                    "strike": 200.0,
                    "expiry": "2026-02-20",
                    "price": 3.1 + n,
                    "size": 400 + 100 * n,
                    "side": "ask",
                    "trade_type": "sweep" if n % 2 == 0 else "block",
                }
            )
    settings = job_settings(stack, stack.database_url, partitions={"market": 3})
    produce(stack.kafka_bootstrap, settings.topics.ticks, [(t["symbol"], t) for t in ticks])
    produce(stack.kafka_bootstrap, settings.topics.options_flow, [("AAPL", f) for f in flow])
    root = folder / "archive"
    archive(environment(settings, root, topics=["ticks", "options_flow"]), "--bounded")
    later = [t for t in ticks if t["ts"] >= "2026-01-06"]
    pl.DataFrame(later).write_parquet(folder / "ticks-6-7.parquet")
    pl.DataFrame([f for f in flow if f["ts"] >= "2026-01-06"]).write_parquet(
        folder / "flow-6-7.parquet"
    )
    return {"root": root, "folder": folder, "ticks": ticks, "flow": flow, "settings": settings}


def test_backtest_from_the_archive_gives_the_alerts_of_the_same_ticks_in_a_file(
    archived_market: dict[str, Any],
) -> None:
    folder: Path = archived_market["folder"]
    rules = json.loads((SAMPLES / "rules.json").read_text())
    rules.append(
        {
            "id": "r-sweeps",
            "user_id": "u-flow",
            "name": "AAPL call sweeps",
            "symbol": "AAPL",
            "cooldown_seconds": 0,
            "conditions": {"type": "flow_sweep", "min_premium": 10000},
        }
    )
    (folder / "rules.json").write_text(json.dumps(rules))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))}

    def backtest(*args: str | Path, out: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [
                SMART_ALERTS,
                "backtest",
                "--rules",
                folder / "rules.json",
                *args,
                "--out",
                folder / out,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in (folder / out).read_text().splitlines()]

    from_archive = backtest(
        "--archive",
        archived_market["root"],
        "--from",
        "2026-01-06",
        "--to",
        "2026-01-07",
        out="from-archive.jsonl",
    )
    from_files = backtest(
        "--ticks",
        folder / "ticks-6-7.parquet",
        "--flow",
        folder / "flow-6-7.parquet",
        out="from-files.jsonl",
    )
    assert len(from_archive) > 10
    assert {a["rule_id"] for a in from_archive} >= {"r-sweeps", "r-aapl-breakout"}
    assert {a["triggered_at"][:10] for a in from_archive} == {"2026-01-06", "2026-01-07"}
    assert from_archive == from_files


def documented(language: str) -> str:
    """The archive section's code block of ``language`` in docs/contracts.md."""
    text = (ROOT_DIR / "docs" / "contracts.md").read_text()
    section = text.split("\n## Archive", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert blocks, f"no {language} block in the Archive section of docs/contracts.md"
    return str(blocks[0])


def test_the_documented_queries_read_the_archive_with_polars_and_duckdb(
    archived_market: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root: Path = archived_market["root"]
    expected = (
        pl.DataFrame(archived_market["ticks"])
        .filter(pl.col("ts") >= "2026-01-06")
        .group_by("symbol")
        .agg(pl.len().alias("ticks"), pl.col("price").max().alias("high"))
        .sort("symbol")
    )
    monkeypatch.chdir(root.parent)
    namespace: dict[str, Any] = {}
    exec(documented("python"), namespace)  # the polars query, as documented
    by_polars = namespace["result"]
    assert (
        by_polars.select("symbol", "ticks", "high")
        .sort("symbol")
        .equals(expected.cast({"ticks": pl.UInt32}))
    )
    # Fenced duckdb, not sql: tests/integration/test_docs_sql.py runs sql blocks on PostgreSQL.
    by_duckdb = duckdb.sql(documented("duckdb")).pl()
    assert (
        by_duckdb.select("symbol", "ticks", "high")
        .sort("symbol")
        .equals(expected.cast({"ticks": pl.Int64}))
    )


# ---------------------------------------------------------------- failures


def test_failures_are_one_line_with_the_documented_status(stack: StackUrls, tmp_path: Path) -> None:
    import fcntl

    settings = job_settings(stack, stack.database_url, partitions={"market": 1})
    env = environment(settings, tmp_path / "archive", topics=["ticks"])

    def failing(variables: dict[str, str], status: int) -> str:
        done = subprocess.run(
            [SMART_ALERTS, "archive", "--bounded"],
            env=variables,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == status, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("smart-alerts:")]
        assert errors and "Traceback" not in done.stderr
        return errors[0]

    no_root = {k: v for k, v in env.items() if k != "SMART_ALERTS_ARCHIVE__ROOT"}
    assert "no archive root" in failing(no_root, 2)
    (tmp_path / "archive").mkdir()
    with open(tmp_path / "archive" / ".archive.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "another archiver is writing to" in failing(env, 2)
    # A root that is a file: refused before anything is read (the CLI's exit 2, as above).
    (tmp_path / "file").write_text("not a folder")
    with (
        pytest.raises(ArchiveError, match="is not writable"),
        ArchiveStore(str(tmp_path / "file")).exclusive(),
    ):
        pass


def test_backtest_archive_options_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    from pipeline.cli.backtest import backtest_command, from_archive
    from pipeline.cli.commands import CommandError
    from pipeline.config import load_settings

    settings = load_settings(None)
    root = str(tmp_path / "archive")
    with pytest.raises(CommandError, match="needs the dates"):
        from_archive(settings, root, date(2026, 1, 5), None)
    with pytest.raises(CommandError, match="add --archive ROOT"):
        from_archive(settings, None, date(2026, 1, 5), date(2026, 1, 6))
    with pytest.raises(CommandError, match="is after --to"):
        from_archive(settings, root, date(2026, 1, 6), date(2026, 1, 5))
    chosen = from_archive(settings, root, date(2026, 1, 5), date(2026, 1, 6))
    common: dict[str, Any] = {"rules": SAMPLES / "rules.json", "flow": None, "positions": None}
    with pytest.raises(CommandError, match="leave out --ticks"):
        backtest_command(
            settings,
            ticks=SAMPLES / "ticks.csv",
            out=tmp_path / "a.jsonl",
            archive=chosen,
            **common,
        )
    with pytest.raises(CommandError, match="has no ticks or flow dated 2026-01-05 to 2026-01-06"):
        backtest_command(settings, ticks=None, out=tmp_path / "a.jsonl", archive=chosen, **common)
