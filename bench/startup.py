"""Where the start-up of a job with many rules goes, and what storing the rules costs.

    python bench/startup.py                      # 10k and 100k rules
    python bench/startup.py --rules 10000        # some sizes only
    python bench/startup.py --no-kafka           # skip reading the rules back from Kafka
    python bench/startup.py --gc-threshold 50000 # the collector's first threshold raised

Starts an embedded Kafka broker and PostgreSQL (or uses KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL), and for each size:

1. **Stages**: the rule records go through what the job does with them at start-up, one stage
   after the other, without Bytewax: read from a one-partition topic (``PartitionReader``,
   batches of ``engine.batch_size``), parsed and keyed (``PartitionIngest.records``), routed to
   shards (``RuleRouter``), loaded into the evaluation shards (``EvaluateShard.process``, which
   calls ``ShardEngine.upsert``) and stored (``HistoryWriter.write_rules``, in the batches the
   reader made). Each stage is timed on its own.
2. **write_rules**: the rules stored in one call into an empty database, then the same call
   again (a replay: nothing changes), by ``HistoryWriter.write_rules`` and by the baseline (a),
   the method it replaced, kept here: one upsert per rule (``executemany``, which psycopg
   pipelines), then the conditions of the changed rules one insert each. Both write into
   databases of their own, and the rows they leave are compared.

Each line gives the wall time and the CPU time, per rule: of this process, and of its
PostgreSQL backend where one works (a server on this machine; the Kafka broker's is not
counted). On a shared machine the wall time includes waiting for a core; the CPU time is what
compares between runs. The rule mix is bench/evaluate.py's, with watchlists, channel overrides,
expiries and ``once`` rules mixed in, so that every column is written.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate import SYMBOLS, base_prices, make_rule  # noqa: E402

from connectors.embedded import EmbeddedStack  # noqa: E402
from connectors.kafka import PartitionReader, SourceRecord  # noqa: E402
from connectors.topics import TopicSpec, create_topics  # noqa: E402
from pipeline.config import Topics  # noqa: E402
from pipeline.evaluate.engine import EvaluateShard  # noqa: E402
from pipeline.evaluate.routing import RuleRouter  # noqa: E402
from pipeline.evaluate.specs import iter_conditions  # noqa: E402
from pipeline.event_time import Progress  # noqa: E402
from pipeline.ids import NAMESPACE  # noqa: E402
from pipeline.ingest import Partitioning, PartitionIngest, Route, part_name  # noqa: E402
from pipeline.messages import Rule  # noqa: E402
from pipeline.safety import SafetyNet  # noqa: E402
from sinks.kafka import CheckedProducer, OutgoingRecord  # noqa: E402
from sinks.migrations import migrate  # noqa: E402
from sinks.postgres import (  # noqa: E402
    APPLICATION_NAME,
    MAX_THRESHOLD,
    RULE_UPSERT_ON_CONFLICT,
    HistoryWriter,
    _key,  # the memoized storage_uuid the baseline used
    comparison_of,
)

SHARDS = 64  # engine.shard_count
USER_SHARDS = 16  # engine.user_shard_count
BATCH = 2000  # engine.batch_size: records per read, so per batch down the flow
R = TypeVar("R")


# ---------------------------------------------------------------- rules


def rule_records(count: int) -> list[bytes]:
    """JSON of ``count`` rules, as published on alerts.rules."""
    prices = base_prices(random.Random(0))
    rng = random.Random(1)
    records = []
    for index in range(count):
        rule = make_rule(index, rng, prices)
        if index % 10 == 1:
            del rule["symbol"]
            rule["symbols"] = rng.sample(SYMBOLS, 3)
        if index % 7 == 2:
            rule["channels"] = rng.choice([["push", "in_app"], ["email"], []])
        if index % 5 == 3:
            rule["expires_at"] = "2027-01-01T00:00:00Z"
        if index % 11 == 4:
            rule["mode"] = "once"
        records.append(json.dumps(rule).encode())
    return records


# ---------------------------------------------------------------- the baseline (a)

# HistoryWriter.write_rules as it was: one statement per rule, and per condition.
BASELINE_UPSERT_RULE = f"""
INSERT INTO alert_rules AS r (
    id, external_id, user_id, user_external_id, name, symbol, symbols, priority, is_active,
    cooldown_minutes, cooldown_seconds, expires_at, version, mode, channels, conditions)
VALUES (%s, %s, %s, %s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s::text[], %s)
{RULE_UPSERT_ON_CONFLICT}RETURNING r.id
"""

BASELINE_DELETE_CONDITIONS = "DELETE FROM alert_conditions WHERE rule_id = ANY(%s)"
BASELINE_INSERT_CONDITION = """
INSERT INTO alert_conditions (
    id, rule_id, position, condition_type, threshold, comparison, time_window_minutes, params)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


def baseline_write_rules(conn: psycopg.Connection[Any], rules: list[Rule]) -> None:
    latest: dict[str, Rule] = {}
    for rule in rules:
        latest.pop(rule.id, None)
        latest[rule.id] = rule
    rows = sorted((_baseline_rule_row(rule) for rule in latest.values()), key=lambda r: r[0])
    by_uuid = {_key("rule", rule.id): rule for rule in latest.values()}
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(BASELINE_UPSERT_RULE, rows, returning=True)
        changed: list[uuid.UUID] = []
        while True:
            changed.extend(row[0] for row in cur.fetchall())
            if not cur.nextset():
                break
        if not changed:
            return
        cur.execute(BASELINE_DELETE_CONDITIONS, (changed,))
        conditions = [row for key in changed for row in _baseline_condition_rows(by_uuid[key])]
        if conditions:
            cur.executemany(BASELINE_INSERT_CONDITION, conditions)


def _baseline_rule_row(rule: Rule) -> tuple[Any, ...]:
    return (
        _key("rule", rule.id),
        rule.id,
        _key("user", rule.user_id),
        rule.user_id,
        rule.name,
        rule.symbol,
        rule.symbols,
        rule.priority.value,
        rule.active,
        math.ceil(rule.cooldown_seconds / 60),
        rule.cooldown_seconds,
        rule.expires_at,
        rule.version,
        rule.mode,
        [channel.value for channel in rule.channels] if rule.channels is not None else None,
        Jsonb(rule.conditions.model_dump(mode="json", exclude_none=True)),
    )


def _baseline_condition_rows(rule: Rule) -> list[tuple[Any, ...]]:
    rows = []
    rule_key = _key("rule", rule.id)
    for position, leaf in enumerate(iter_conditions(rule.conditions)):
        params = leaf.model_dump(mode="json", exclude_none=True)
        condition_type = str(params.get("type", ""))
        threshold = params.get("threshold")
        if not isinstance(threshold, int | float) or abs(threshold) >= MAX_THRESHOLD:
            threshold = None
        window = params.get("window_seconds")
        window_minutes = math.ceil(window / 60) if isinstance(window, int | float) else None
        rows.append(
            (
                uuid.uuid5(NAMESPACE, f"condition|{rule.id}|{position}"),
                rule_key,
                position,
                condition_type[:50],
                threshold,
                comparison_of(condition_type),
                window_minutes,
                Jsonb(params),
            )
        )
    return rows


# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class Servers:
    kafka: str  # "" without Kafka
    database: str


@contextmanager
def servers(kafka: bool) -> Iterator[Servers]:
    """The servers the environment names, embedded ones for the others."""
    given_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "") if kafka else ""
    given_database = os.environ.get("DATABASE_URL", "")
    start_kafka = kafka and not given_kafka
    if not start_kafka and given_database:
        yield Servers(given_kafka, given_database)
        return
    with (
        tempfile.TemporaryDirectory() as state,
        EmbeddedStack(
            Path(state), kafka=start_kafka, postgres=not given_database, redis=False
        ) as urls,
    ):
        yield Servers(given_kafka or urls.kafka_bootstrap, given_database or urls.database_url)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"bench_startup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
        migrate(url, log=lambda _line: None)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- stages


@dataclass(frozen=True)
class Cost:
    wall: float  # seconds
    cpu: float  # seconds of CPU of this process and of its PostgreSQL backend

    def best(self, other: Cost) -> Cost:
        return Cost(min(self.wall, other.wall), min(self.cpu, other.cpu))


def backend_cpu(pid: int) -> float:
    """CPU seconds of a PostgreSQL backend of this machine (0 for a server elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def costed(work: Callable[[], R], backend: int | None = None) -> tuple[Cost, R]:
    """What ``work`` cost: wall time, and CPU time of this process and of the PostgreSQL
    backend ``backend`` (the wall time counts waiting for a core, as on a loaded machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    server = backend_cpu(backend) if backend is not None else 0.0
    result = work()
    if backend is not None:
        server = backend_cpu(backend) - server
    return Cost(time.perf_counter() - wall, time.process_time() - cpu + server), result


def read_from_kafka(
    bootstrap: str, topic: str, values: list[bytes]
) -> tuple[Cost, list[SourceRecord]]:
    """Publish the records to a new topic of one partition, then time reading them back."""
    create_topics(bootstrap, [TopicSpec(topic, 1, compacted=True)])
    producer = CheckedProducer(bootstrap)
    try:
        for start in range(0, len(values), 10_000):
            producer.write_batch(
                [
                    OutgoingRecord(topic, json.loads(value)["id"].encode(), value)
                    for value in values[start : start + 10_000]
                ]
            )
    finally:
        producer.close()

    def read() -> list[SourceRecord]:
        records: list[SourceRecord] = []
        with PartitionReader(bootstrap, topic, 0, None, batch_size=BATCH) as reader:
            while not reader.at_end or not records:
                records.extend(reader.next_batch())
        return records

    return costed(read)


def stages(
    values: list[bytes], bootstrap: str, database_url: str, *, profile: bool
) -> tuple[list[tuple[str, Cost]], str]:
    """The cost of each stage, and with ``profile`` the profile of the load into the shards
    (the stage then runs under cProfile, which slows it down: its cost is measured again
    without)."""
    topics = Topics(rules=f"bench.rules.{uuid.uuid4().hex[:8]}")
    part = part_name(topics.rules, 0)
    out: list[tuple[str, Cost]] = []
    if bootstrap:
        cost, records = read_from_kafka(bootstrap, topics.rules, values)
        assert len(records) == len(values), (len(records), len(values))
        out.append(("read from Kafka (PartitionReader)", cost))
    else:
        records = [
            SourceRecord(topics.rules, 0, offset, json.loads(value)["id"].encode(), value, None)
            for offset, value in enumerate(values)
        ]
    batches = [records[start : start + BATCH] for start in range(0, len(records), BATCH)]

    ingest = PartitionIngest(part, Route.RULES, topics, Partitioning(SHARDS, USER_SHARDS))
    cost, keyed = costed(lambda: [ingest.records(batch)[0] for batch in batches])
    out.append(("parse and key (PartitionIngest.records)", cost))
    rules: list[list[Rule]] = [
        [item[1] for item in batch if isinstance(item, tuple)] for batch in keyed
    ]
    assert sum(map(len, rules)) == len(values), "a rule became a dead letter"

    router = RuleRouter(SHARDS)
    cost, routed = costed(
        lambda: [[pair for rule in batch for pair in router.route(rule)] for batch in rules]
    )
    out.append(("route to shards (RuleRouter.route)", cost))

    net = SafetyNet("evaluate", topics, True)

    def fresh(_key: str) -> EvaluateShard:
        return EvaluateShard(frozenset({"ticks#0"}), frozenset({part}), timedelta(seconds=5), net)

    evaluate = {key: fresh(key) for key in Partitioning(SHARDS, USER_SHARDS).shards()}

    def load() -> None:
        for batch in routed:
            per_shard: dict[str, list[Any]] = defaultdict(list)
            for shard, change in batch:
                per_shard[shard].append(change)
            for shard, changes in per_shard.items():
                evaluate[shard].process(changes, time.time())
        # The partition's marker behind its rules: it opens every shard's start-up gate.
        for shard, marker in router.broadcast(Progress(part, None, caught_up=True, idle=False)):
            evaluate[shard].process([marker], time.time())

    report = io.StringIO()
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(load)
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(15)
        evaluate = {key: fresh(key) for key in evaluate}
    cost, _ = costed(load)
    out.append(("load into shards (EvaluateShard, ShardEngine.upsert)", cost))
    assert all(state.gate.is_open for state in evaluate.values())

    with HistoryWriter(database_url) as writer:

        def store() -> None:
            for batch in rules:
                writer.write_rules(batch)

        cost, _ = costed(store, writer_backend(database_url))
    out.append((f"store (HistoryWriter.write_rules, batches of {BATCH})", cost))
    return out, report.getvalue()


# ---------------------------------------------------------------- write_rules, new and old


def table_rows(database_url: str) -> list[tuple[Any, ...]]:
    """Every column of both tables but the write times."""
    with psycopg.connect(database_url) as conn:
        rules = conn.execute(
            "SELECT id, external_id, user_id, user_external_id, name, symbol, symbols, priority,"
            " is_active, cooldown_minutes, cooldown_seconds, expires_at, version, mode, channels,"
            " conditions, deleted_at FROM alert_rules ORDER BY id"
        ).fetchall()
        conditions = conn.execute(
            "SELECT id, rule_id, position, condition_type, threshold, comparison,"
            " time_window_minutes, params FROM alert_conditions ORDER BY id"
        ).fetchall()
    return rules + conditions


def writer_backend(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def write_rules_runs(
    server_url: str, rules: list[Rule], rounds: int
) -> tuple[dict[str, tuple[Cost, Cost]], bool]:
    """The best (first write, replay) per method over ``rounds`` rounds, the methods taking
    turns (this machine's load changes by the minute); whether both left the same rows."""
    best: dict[str, tuple[Cost, Cost]] = {}
    rows: dict[str, list[tuple[Any, ...]]] = {}
    worst = Cost(math.inf, math.inf)

    def keep(method: str, first: Cost, replay: Cost, url: str) -> None:
        old_first, old_replay = best.get(method, (worst, worst))
        best[method] = (first.best(old_first), replay.best(old_replay))
        rows[method] = table_rows(url)

    for _round in range(rounds):
        with fresh_database(server_url) as url, psycopg.connect(url) as conn:
            pid = conn.info.backend_pid
            first, _ = costed(lambda: baseline_write_rules(conn, rules), pid)
            replay, _ = costed(lambda: baseline_write_rules(conn, rules), pid)
            keep("baseline (a)", first, replay, url)
        with fresh_database(server_url) as url, HistoryWriter(url) as writer:
            pid = writer_backend(url)
            first, _ = costed(lambda: writer.write_rules(rules), pid)
            replay, _ = costed(lambda: writer.write_rules(rules), pid)
            keep("write_rules", first, replay, url)
    return best, rows["baseline (a)"] == rows["write_rules"]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka read")
    parser.add_argument("--rounds", type=int, default=2, help="write_rules rounds (best kept)")
    parser.add_argument("--profile", action="store_true", help="print the load's profile")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="the garbage collector's first threshold (Python's default: 700), as a job could set",
    )
    args = parser.parse_args()
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])

    stage_lines: list[str] = []
    write_lines: list[str] = []
    with servers(kafka=not args.no_kafka) as urls:
        for count in args.rules:
            values = rule_records(count)
            with fresh_database(urls.database) as url:
                measured, profile = stages(values, urls.kafka, url, profile=args.profile)
            total = Cost(sum(c.wall for _s, c in measured), sum(c.cpu for _s, c in measured))
            for stage, cost in [*measured, ("total", total)]:
                per_rule = f"{1e6 * cost.wall / count:>7.1f} | {1e6 * cost.cpu / count:>7.1f}"
                stage_lines.append(
                    f"{count:>9,} | {stage:<55} | {cost.wall:>6.2f} | {per_rule}"
                    f" | {cost.cpu / total.cpu:>5.0%}"
                )
            if args.profile:
                print(f"load into shards, {count:,} rules:\n{profile}")

            rules = [Rule.model_validate_json(value) for value in values]
            seconds, same = write_rules_runs(urls.database, rules, args.rounds)
            base = seconds["baseline (a)"]
            for method, costs in seconds.items():
                cells = []
                for cost, base_cost in zip(costs, base, strict=True):
                    cells += [
                        f"{1e6 * cost.wall / count:>7.1f}",
                        f"{base_cost.wall / cost.wall:>5.1f}x",
                        f"{1e6 * cost.cpu / count:>7.1f}",
                        f"{base_cost.cpu / cost.cpu:>5.1f}x",
                    ]
                write_lines.append(
                    f"{count:>9,} | {method:<13} | {' | '.join(cells)} | {'yes' if same else 'NO'}"
                )

    header = (
        f"{'rules':>9} | {'start-up stage':<55} | {'wall s':>6} | {'wall µs':>7} | {'CPU µs':>7}"
        " | share of CPU"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(stage_lines))
    print()
    first, replay = "first write into an empty table", "replay (nothing changes)"
    print(f"{'':>9} | {'':<13} | {first:^45} | {replay:^45} |")
    columns = ["wall µs", "vs (a)", "CPU µs", "vs (a)"] * 2
    header = (
        f"{'rules':>9} | {'method':<13} | "
        + " | ".join(f"{name:>7}" if "µs" in name else f"{name:>6}" for name in columns)
        + " | same rows"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(write_lines))


if __name__ == "__main__":
    main()
