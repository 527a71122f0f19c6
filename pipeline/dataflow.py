"""The Bytewax wiring: the only module that imports bytewax.

    kafka_in -> parse --(bad)--> alerts.dlq
                  |-- rules -> route_rules (by rule id) --+
                  |-- ticks, flow, positions (by shard) --+--> evaluate -> alerts
                  |-- profiles, feedback (by user) -------+
                                        alerts (by user) --+--> personalize
                                                              -> notifications, scores

Every step's logic is a plain class from this package; the operators here only key, route and
hand batches to it. Sources and sinks are adapters around the plain readers and writers in
``connectors/`` and ``sinks/``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from connectors.kafka import PartitionReader, SourceRecord, list_partitions
from pipeline import metrics
from pipeline.config import Settings, Topics
from pipeline.learning import LearningConfig, RelevanceScore
from pipeline.messages import (
    DeadLetter,
    Feedback,
    Notification,
    OptionsFlow,
    Position,
    PositionClosed,
    Priority,
    Profile,
    ProfileReset,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)
from pipeline.parsing import ParsedItem, ParsedRecord, RawRecord, parse_record
from pipeline.personalize import (
    AlertOutcome,
    PersonalizationConfig,
    UserDesk,
    UserInput,
    UserOutput,
)
from pipeline.routing import RuleRouter, shard_of
from pipeline.rule_engine import ShardEngine, ShardInput
from sinks.channels.configure import build_delivery, build_senders
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.notify import Dispatch, NotificationSink
from sinks.postgres import HistoryWriter
from sinks.redis_store import InAppFeed, RelevanceStore

FILE_BATCH = 2000
T = TypeVar("T")


class Closeable(Protocol):
    def close(self) -> None: ...


W = TypeVar("W", bound=Closeable)


# ---------------------------------------------------------------- input


@dataclass
class ReferenceGate:
    """Holds market data back until this process has read the reference topics to their end.

    Rules, profiles and positions present at start-up then apply before the first market event
    (deterministic replays). The gate is per process: see docs/operations.md on scaling.
    """

    reference_topics: frozenset[str]
    _pending: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, part: str) -> None:
        with self._lock:
            self._pending.add(part)

    def reached_end(self, part: str) -> None:
        with self._lock:
            self._pending.discard(part)

    @property
    def open(self) -> bool:
        with self._lock:
            return not self._pending


class _KafkaPartition(StatefulSourcePartition[SourceRecord, int]):
    def __init__(self, reader: PartitionReader, gate: ReferenceGate, part: str, bounded: bool):
        self._reader = reader
        self._gate = gate
        self._part = part
        self._bounded = bounded
        self._reference = reader.topic in gate.reference_topics
        self._idle_until = 0.0
        if self._reference:
            gate.register(part)

    def next_batch(self) -> list[SourceRecord]:
        if not self._reference and not self._gate.open:
            self._idle_until = time.monotonic() + 0.02
            return []
        batch = self._reader.next_batch()
        if self._reader.at_end:
            if self._reference:
                self._gate.reached_end(self._part)
            if self._bounded and not batch:
                raise StopIteration
        self._idle_until = 0.0 if batch else time.monotonic() + 0.01
        return batch

    def next_awake(self) -> datetime | None:
        if self._idle_until <= time.monotonic():
            return None
        return datetime.now().astimezone() + timedelta(seconds=self._idle_until - time.monotonic())

    def snapshot(self) -> int:
        return self._reader.next_offset

    def close(self) -> None:
        self._reader.close()


class KafkaInput(FixedPartitionedSource[SourceRecord, int]):
    """Every partition of the input topics; offsets are kept in Bytewax recovery snapshots."""

    def __init__(self, settings: Settings, *, bounded: bool) -> None:
        self._bootstrap = settings.require_servers()[0]
        self._topics = settings.topics.inputs()
        self._batch_size = settings.engine.batch_size
        self._bounded = bounded
        self._gate = ReferenceGate(frozenset(settings.topics.reference()))

    def list_parts(self) -> list[str]:
        return [f"{topic}#{p}" for topic, p in list_partitions(self._bootstrap, self._topics)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        topic, _, partition = for_part.rpartition("#")
        reader = PartitionReader(
            self._bootstrap, topic, int(partition), resume_state, batch_size=self._batch_size
        )
        return _KafkaPartition(reader, self._gate, for_part, self._bounded)


class _ListPartition(StatefulSourcePartition[SourceRecord, int]):
    """Records from a list, in order; a market partition waits for the reference ones."""

    def __init__(
        self,
        records: Iterator[SourceRecord],
        resume: int | None,
        gate: ReferenceGate,
        part: str,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._records = records
        self._position = 0
        self._gate = gate
        self._part = part
        self._progress = progress
        self._reference = part == "reference"
        if self._reference:
            gate.register(part)
        for _ in range(resume or 0):
            next(self._records, None)
            self._position += 1

    def next_batch(self) -> list[SourceRecord]:
        if not self._reference and not self._gate.open:
            return []
        batch = list(itertools.islice(self._records, FILE_BATCH))
        self._position += len(batch)
        if self._progress is not None and not self._reference:
            self._progress(self._position)
        if not batch:
            self._gate.reached_end(self._part)
            raise StopIteration
        return batch

    def snapshot(self) -> int:
        return self._position


class FileInput(FixedPartitionedSource[SourceRecord, int]):
    """A backtest's input: reference records (rules) first, then market records in time order."""

    def __init__(
        self,
        reference: Callable[[], Iterator[SourceRecord]],
        market: Callable[[], Iterator[SourceRecord]],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._factories = {"reference": reference, "market": market}
        self._progress = progress
        self._gate = ReferenceGate(frozenset())

    def list_parts(self) -> list[str]:
        return ["reference", "market"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ListPartition:
        records = self._factories[for_part]()
        return _ListPartition(records, resume_state, self._gate, for_part, self._progress)


# ---------------------------------------------------------------- output


class _WriterPartition(StatelessSinkPartition[T], Generic[W, T]):
    def __init__(self, writer: W, write: Callable[[W, list[T]], None]) -> None:
        self._writer = writer
        self._write = write

    def write_batch(self, items: list[T]) -> None:
        if items:
            self._write(self._writer, items)

    def close(self) -> None:
        self._writer.close()


class WriterSink(DynamicSink[T], Generic[W, T]):
    """Adapts a plain writer (built once per worker) to a Bytewax sink."""

    def __init__(self, build: Callable[[], W], write: Callable[[W, list[T]], None]) -> None:
        self._build = build
        self._write = write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WriterPartition[W, T]:
        return _WriterPartition(self._build(), self._write)


# ---------------------------------------------------------------- stateful steps


class _ShardLogic(op.StatefulBatchLogic[ShardInput, TriggeredAlert, ShardEngine]):
    """At the end of a bounded input, the last open bars close (their end is the watermark)."""

    def __init__(self, engine: ShardEngine) -> None:
        self.engine = engine

    def on_batch(self, values: list[ShardInput]) -> tuple[Iterable[TriggeredAlert], bool]:
        return self.engine.process(values), op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[TriggeredAlert], bool]:
        return self.engine.flush(), op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> ShardEngine:
        return self.engine


DeskOutput = Dispatch | RelevanceScore | AlertOutcome


class _DeskLogic(op.StatefulBatchLogic[UserInput, DeskOutput, UserDesk]):
    """Bounded runs close windows by event time and at EOF; live runs also by wall clock.

    Notifications leave with the destinations of the user's profile at that moment, which only
    this step knows (delivery needs them; the notification message does not carry them).
    """

    def __init__(self, desk: UserDesk, bounded: bool) -> None:
        self.desk = desk
        self.bounded = bounded

    def _dispatch(self, outputs: list[UserOutput]) -> list[DeskOutput]:
        destinations = self.desk.profile.destinations if self.desk.profile is not None else None
        return [Dispatch(o, destinations) if isinstance(o, Notification) else o for o in outputs]

    def on_batch(self, values: list[UserInput]) -> tuple[Iterable[DeskOutput], bool]:
        now = None if self.bounded else time.time()
        return self._dispatch(self.desk.process(values, now)), op.StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[DeskOutput], bool]:
        return self._dispatch(self.desk.close_due(time.time())), op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[DeskOutput], bool]:
        return self._dispatch(self.desk.close_all()), op.StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        deadline = None if self.bounded else self.desk.next_deadline()
        return None if deadline is None else datetime.fromtimestamp(deadline, tz=UTC)

    def snapshot(self) -> UserDesk:
        return self.desk


# ---------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Writers:
    """Factories of the plain writers; each worker builds its own (own connections).

    ``records`` takes every Kafka output record; a backtest passes a collector there and
    leaves the stores out (None).
    """

    records: Callable[[], RecordWriter]
    history: Callable[[], HistoryWriter] | None = None
    notifications: Callable[[], NotificationSink] | None = None
    relevance: Callable[[], RelevanceStore] | None = None


class RecordWriter(Protocol):
    def write_batch(self, records: list[OutgoingRecord]) -> None: ...
    def close(self) -> None: ...


def build_flow(
    settings: Settings,
    writers: Writers,
    *,
    bounded: bool,
    source: FixedPartitionedSource[Any, int] | None = None,
) -> Dataflow:
    """The whole job. ``bounded`` reads every input to its current end and then stops.

    The input is every partition of the Kafka input topics unless ``source`` gives records of
    the same shape (a backtest's files): everything after it is the same dataflow.
    """
    topics = settings.topics
    shards = settings.engine.shard_count
    desk_config = personalization_config(settings)
    flow = Dataflow("smart_alerts")

    raw = op.input("input", flow, source or KafkaInput(settings, bounded=bounded))

    def parse(record: RawRecord) -> ParsedRecord:
        return _counted(parse_record(record, topics), record)

    parsed = op.map("parse", raw, parse)
    good: Stream[ParsedItem] = op.filter_map("valid", parsed, _valid)
    dead = op.filter_map("invalid", parsed, _invalid)

    # EVALUATE, keyed by shard: rules go to the shards of their symbols (all, for wildcards).
    rule_changes: Stream[Rule | RuleTombstone] = op.filter_map("rule_changes", good, _rule_change)
    by_rule_id = op.key_on("key_by_rule", rule_changes, _rule_id)

    def route(router: RuleRouter | None, change: Rule | RuleTombstone) -> tuple[RuleRouter, list]:
        router = router or RuleRouter(shards)
        rule = change if isinstance(change, Rule) else None
        return router, router.route(_rule_id(change), rule)

    routed = op.stateful_map("route_rules", by_rule_id, route)
    rules_per_shard = op.flat_map("rules_to_shards", routed, lambda kv: kv[1])
    market = op.filter_map("key_by_shard", good, lambda item: _shard_keyed(item, shards))
    engine_in = op.merge("evaluate_in", rules_per_shard, market)
    evaluated = op.stateful_batch(
        "evaluate", engine_in, lambda resume: _ShardLogic(resume or ShardEngine())
    )
    alerts: Stream[TriggeredAlert] = op.map("alerts", evaluated, lambda kv: _counted_alert(kv[1]))

    # PERSONALIZE, keyed by user: profiles, feedback and alerts meet in one UserDesk.
    user_items: Stream[UserInput] = op.filter_map("user_items", good, _user_item)
    desk_in = op.key_on("key_by_user", op.merge("desk_in", user_items, alerts), _user_id)
    desk_out = op.stateful_batch(
        "personalize",
        desk_in,
        lambda resume: _DeskLogic(resume or UserDesk(desk_config), bounded),
    )
    personalized: Stream[DeskOutput] = op.map(
        "desk_out", desk_out, lambda kv: _counted_output(kv[1])
    )
    dispatches = op.filter_map("dispatches", personalized, _only(Dispatch))
    notifications = op.map("notifications", dispatches, lambda d: d.notification)
    scores = op.filter_map("scores", personalized, _only(RelevanceScore))
    outcomes = op.filter_map("outcomes", personalized, _only(AlertOutcome))

    # Outputs: each writer is idempotent, so a replay after recovery rewrites the same rows.
    kafka_items = op.merge("kafka_items", alerts, notifications, dead)
    op.output(
        "kafka_out",
        op.map("to_records", kafka_items, lambda item: _to_record(item, topics)),
        WriterSink(writers.records, _write_records),
    )
    if writers.history is not None:
        history_items = op.merge(
            "history_items",
            rule_changes,
            op.filter_map("profiles", good, _only(Profile)),
            alerts,
            scores,
            outcomes,
        )
        op.output("history", history_items, WriterSink(writers.history, _write_history))
    if writers.notifications is not None:
        op.output(
            "notify", dispatches, WriterSink(writers.notifications, NotificationSink.write_batch)
        )
    if writers.relevance is not None:
        op.output("relevance", scores, WriterSink(writers.relevance, RelevanceStore.write_batch))
    return flow


def _valid(parsed: ParsedRecord) -> ParsedItem | None:
    return parsed.item


def _invalid(parsed: ParsedRecord) -> DeadLetter | None:
    return parsed.dead_letter


def _only(kind: type[T]) -> Callable[[object], T | None]:
    return lambda item: item if isinstance(item, kind) else None


def _rule_change(item: ParsedItem) -> Rule | RuleTombstone | None:
    return item if isinstance(item, Rule | RuleTombstone) else None


def _user_item(item: ParsedItem) -> Profile | ProfileReset | Feedback | None:
    return item if isinstance(item, Profile | ProfileReset | Feedback) else None


def _rule_id(change: Rule | RuleTombstone) -> str:
    return change.id if isinstance(change, Rule) else change.rule_id


def _user_id(item: UserInput) -> str:
    return item.user_id


def _shard_keyed(item: ParsedItem, shards: int) -> tuple[str, ShardInput] | None:
    if isinstance(item, Tick | Position | PositionClosed):
        return shard_of(item.symbol, shards), item
    if isinstance(item, OptionsFlow):
        return shard_of(item.underlying, shards), item
    return None


def _to_record(item: TriggeredAlert | Notification | DeadLetter, topics: Topics) -> OutgoingRecord:
    if isinstance(item, TriggeredAlert):
        return OutgoingRecord(topics.triggered, item.user_id.encode(), item.to_json())
    if isinstance(item, Notification):
        return OutgoingRecord(topics.notifications, item.user_id.encode(), item.to_json())
    key = item.key.encode() if item.key is not None else None
    return OutgoingRecord(topics.dlq, key, item.to_json())


def _write_records(writer: RecordWriter, batch: list[OutgoingRecord]) -> None:
    writer.write_batch(batch)


def _write_history(writer: HistoryWriter, batch: list[Any]) -> None:
    # The last change of a rule id in the batch is its state; earlier ones are superseded.
    latest_rule_change = {_rule_id(i): i for i in batch if isinstance(i, Rule | RuleTombstone)}
    rules = [i for i in latest_rule_change.values() if isinstance(i, Rule)]
    tombstones = [i.rule_id for i in latest_rule_change.values() if isinstance(i, RuleTombstone)]
    profiles = [i for i in batch if isinstance(i, Profile)]
    alerts = [i for i in batch if isinstance(i, TriggeredAlert)]
    scores = [i for i in batch if isinstance(i, RelevanceScore)]
    outcomes = [i for i in batch if isinstance(i, AlertOutcome)]
    if rules:
        writer.write_rules(rules)
    if tombstones:
        writer.delete_rules(tombstones)
    if profiles:
        writer.write_profiles(profiles)
    if alerts:
        writer.write_alerts(alerts)
    if scores:
        writer.write_relevance(scores)
    if outcomes:
        writer.write_outcomes(outcomes)


def _counted(parsed: ParsedRecord, record: RawRecord) -> ParsedRecord:
    outcome = "ok" if parsed.dead_letter is None else "dead_letter"
    metrics.EVENTS.labels(topic=record.topic, outcome=outcome).inc()
    return parsed


def _counted_alert(alert: TriggeredAlert) -> TriggeredAlert:
    metrics.ALERTS.labels(priority=alert.priority.value).inc()
    return alert


def _counted_output(output: DeskOutput) -> DeskOutput:
    if isinstance(output, Dispatch):
        metrics.NOTIFICATIONS.labels(priority=output.notification.highest_priority.value).inc()
    elif isinstance(output, RelevanceScore):
        metrics.SCORES.inc()
    else:
        metrics.OUTCOMES.labels(status=output.status).inc()
    return output


def personalization_config(settings: Settings) -> PersonalizationConfig:
    p, engine = settings.personalization, settings.engine
    return PersonalizationConfig(
        window=timedelta(seconds=engine.window_seconds),
        grace=timedelta(seconds=engine.allowed_lateness_seconds),
        stale_after={
            Priority.LOW: timedelta(seconds=p.stale_low_seconds),
            Priority.MEDIUM: timedelta(seconds=p.stale_medium_seconds),
            Priority.HIGH: timedelta(seconds=p.stale_high_seconds),
        },
        learning=LearningConfig(
            alpha=p.learning_alpha,
            half_life=timedelta(days=p.learning_half_life_days),
            ignore_after=timedelta(hours=p.ignore_after_hours),
        ),
    )


# ---------------------------------------------------------------- running


def writers_for(settings: Settings) -> Writers:
    bootstrap, database_url, redis_url = settings.require_servers()
    maxlen = settings.in_app.stream_maxlen
    for sender in build_senders(settings.delivery).values():  # a ConfigError now, not per worker
        sender.close()
    return Writers(
        records=lambda: CheckedProducer(bootstrap),
        history=lambda: HistoryWriter(database_url),
        notifications=lambda: NotificationSink(
            HistoryWriter(database_url),
            InAppFeed(redis_url, maxlen=maxlen),
            build_delivery(settings.delivery, database_url),
        ),
        relevance=lambda: RelevanceStore(redis_url),
    )


def run(settings: Settings, *, bounded: bool = False) -> None:
    """Run the job in this process (one of ``engine.addresses`` when scaled out)."""
    flow = build_flow(settings, writers_for(settings), bounded=bounded)
    engine, recovery = settings.engine, settings.recovery
    epoch = timedelta(milliseconds=engine.epoch_ms)
    recovery_config = None
    if recovery.directory is not None:
        _ensure_recovery_partitions(recovery.directory, recovery.partitions)
        recovery_config = RecoveryConfig(
            recovery.directory, timedelta(seconds=recovery.backup_seconds)
        )
        epoch = timedelta(seconds=recovery.snapshot_seconds)
    cli_main(
        flow,
        workers_per_process=engine.workers_per_process,
        process_id=engine.process_id,
        addresses=engine.addresses,
        epoch_interval=epoch,
        recovery_config=recovery_config,
    )


def _ensure_recovery_partitions(directory: Path, count: int) -> None:
    """Create the recovery partitions on first use, as ``python -m bytewax.recovery`` would."""
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, count)
