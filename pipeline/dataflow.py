"""The Bytewax wiring: the only module that imports bytewax.

    rules_in ──(rules partition)── route_rules ──(shard)──┐
    market_in: ticks, flow, positions ──────────(shard)───┴─ evaluate ─ alerts, shard watermarks
    users_in: profiles, feedback ──(user shard)──┐                │ (user shard)
                                                 └────────────────┴─ personalize
                                                        dispatches, relevance scores, outcomes
    bad input, and any item a step could not process ──────────────────────> alerts.dlq

Each input partition parses and keys its own records and follows them with progress markers
(pipeline/ingest.py, pipeline/event_time.py); each stateful step's state is a plain class
(``RuleRouter``, ``EvaluateShard``, ``DeskShard``); the operators here only key, route and
hand batches to them. Sources and sinks are adapters around the plain readers and writers in
``connectors/`` and ``sinks/``.
"""

from __future__ import annotations

import gc
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import run_main

from connectors.kafka import PartitionReader, SourceRecord, list_partitions
from pipeline import metrics
from pipeline.config import ConfigError, Personalization, Settings, Topics
from pipeline.evaluate.engine import EvaluateShard
from pipeline.evaluate.greeks import GreeksConfig, GreeksDeriver
from pipeline.evaluate.routing import RuleRouter, all_user_shards, user_shard_of
from pipeline.event_time import Progress, ProgressReporter, Watermark
from pipeline.ingest import Partitioning, PartitionIngest, Route, part_name, route_of
from pipeline.logs import Lifetime, alert_fields, lifetime, server_summary
from pipeline.messages import (
    Channel,
    DeadLetter,
    Feedback,
    Notification,
    OptionsFlow,
    Priority,
    Profile,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)
from pipeline.personalize.desk import (
    AlertOutcome,
    DeskShard,
    Dispatch,
    PersonalizationConfig,
)
from pipeline.personalize.learning import LearningConfig, RelevanceScore
from pipeline.personalize.relevance_model import ArtifactError, TrainedRelevance
from pipeline.safety import SafetyNet
from sinks.background import BackgroundWriter
from sinks.channels.configure import build_delivery, build_senders
from sinks.kafka import CheckedProducer, MessagePublisher, OutgoingRecord
from sinks.notify import NotificationSink
from sinks.postgres import HistoryWriter
from sinks.redis_store import InAppFeed, RelevanceStore

log = logging.getLogger("smart_alerts.job")

FILE_BATCH = 2000
GC_YOUNG_THRESHOLD = 50_000
T = TypeVar("T")

# Set by SIGTERM/SIGINT: every source partition of this process ends its input, the stateful
# steps keep their state (a live run's windows stay open for the next start) and the sinks
# drain and close. See ``run``.
STOP = threading.Event()


class _WriteFailures:
    """The background writers of this process that failed. Their threads cannot stop the
    worker, so every source partition raises the first failure at its next read."""

    def __init__(self) -> None:
        self._failed: list[BackgroundWriter[Any]] = []
        self._lock = threading.Lock()

    def report(self, writer: BackgroundWriter[Any]) -> None:
        with self._lock:
            self._failed.append(writer)

    def raise_first(self) -> None:
        if self._failed:
            self._failed[0].raise_error()

    def clear(self) -> None:
        with self._lock:
            self._failed.clear()


WRITE_FAILURES = _WriteFailures()


class PeerLostError(RuntimeError):
    """Another process of a scaled-out job stopped or became unreachable: this one cannot go
    on alone (Bytewax's processes exchange data), so it stops too, to be restarted with them."""


class Closeable(Protocol):
    def close(self) -> None: ...


W = TypeVar("W", bound=Closeable)


# ---------------------------------------------------------------- input


@dataclass
class _ReadGate:
    """Backpressure: this process reads no market or feedback partition before its reference
    partitions are at their end. Correctness across processes is the in-band gate's job
    (pipeline/event_time.py); this only keeps start-up from buffering market data."""

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


class Reader(Protocol):
    """What a source partition reads from: a Kafka partition, or a backtest's rows."""

    @property
    def at_end(self) -> bool: ...
    @property
    def next_offset(self) -> int: ...
    def next_batch(self) -> list[SourceRecord]: ...
    def close(self) -> None: ...


class _IngestPartition(StatefulSourcePartition[object, int]):
    """One input partition: its records parsed and keyed, then its progress marker."""

    def __init__(
        self,
        reader: Reader,
        ingest: PartitionIngest,
        gate: _ReadGate,
        *,
        reference: bool,
        bounded: bool,
        idle_after: float,
    ) -> None:
        self._reader = reader
        self._ingest = ingest
        self._gate = gate
        self._reference = reference
        self._bounded = bounded
        self._reporter = ProgressReporter(ingest.part, idle_after, bounded)
        self._idle_until = 0.0
        if reference:
            gate.register(ingest.part)

    def next_batch(self) -> list[object]:
        WRITE_FAILURES.raise_first()
        if STOP.is_set():
            raise StopIteration
        status = metrics.STATUS
        status.polled()
        if not self._reference and not self._gate.open:
            self._idle_until = time.monotonic() + 0.02
            return []
        records = self._reader.next_batch()
        at_end = self._reader.at_end
        if self._reference and at_end:
            self._gate.reached_end(self._ingest.part)
        if not status.reference_loaded:
            status.reference_loaded = self._gate.open
        items, newest = self._ingest.records(records)
        if records:
            _count_read(self._ingest, records, items)
            _keep_send_times(records, items)
        if newest is not None:
            status.saw_event_time("ingest", newest)
        marker = self._reporter.after_batch(newest, len(records), at_end, time.time())
        if marker is not None:
            items.extend(self._ingest.markers(marker))
        elif self._bounded and at_end and not records:
            raise StopIteration
        self._idle_until = 0.0 if records else time.monotonic() + 0.01
        return items

    def next_awake(self) -> datetime | None:
        if self._idle_until <= time.monotonic():
            return None
        return datetime.now(UTC) + timedelta(seconds=self._idle_until - time.monotonic())

    def snapshot(self) -> int:
        # Bytewax asks every source partition at each epoch's end, with recovery on (stateful
        # steps and sinks only when they changed): the age gauge's tick.
        metrics.STATUS.snapshot_taken()
        return self._reader.next_offset

    def close(self) -> None:
        self._reader.close()


def _count_read(ingest: PartitionIngest, records: list[SourceRecord], items: list[object]) -> None:
    dead = sum(1 for item in items if isinstance(item, DeadLetter))
    topic = records[0].topic
    if dead:
        metrics.EVENTS.labels(topic=topic, outcome="dead_letter").inc(dead)
    metrics.EVENTS.labels(topic=topic, outcome="ok").inc(len(records) - dead)


def _keep_send_times(records: list[SourceRecord], items: list[object]) -> None:
    """Each tick and flow print keeps its record's Kafka timestamp (its send time) as
    ``sent_ms``, outside its fields (never serialized, never compared), for the tick-to-alert
    histogram. ``records`` and ``items`` correspond one to one (pipeline/ingest.py)."""
    for record, item in zip(records, items, strict=True):
        if type(item) is tuple and type(item[1]) in _MARKET_EVENTS:
            # Into the instance dict: the model is frozen, and setattr's checks cost 2.5x this
            # per record; pydantic neither serializes nor compares a key that is not a field.
            item[1].__dict__["sent_ms"] = record.timestamp_ms


_MARKET_EVENTS = (Tick, OptionsFlow)


class KafkaInput(FixedPartitionedSource[object, int]):
    """Every partition of some input topics; offsets are kept in Bytewax recovery snapshots."""

    def __init__(
        self,
        settings: Settings,
        parts: list[tuple[str, int]],
        gate: _ReadGate,
        *,
        bounded: bool,
    ) -> None:
        self._bootstrap = settings.require_servers()[0]
        self._settings = settings
        self._parts = {part_name(topic, p): (topic, p) for topic, p in parts}
        self._gate = gate
        self._bounded = bounded
        self._keys = partitioning(settings)

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IngestPartition:
        topic, partition = self._parts[for_part]
        settings = self._settings
        reader = PartitionReader(
            self._bootstrap,
            topic,
            partition,
            resume_state,
            batch_size=settings.engine.batch_size,
            # Never wait in the poll: the worker reads every partition in turn, so a wait on an
            # idle one delays the busy ones; next_awake paces an idle partition instead.
            poll_timeout_s=0.0,
            on_lost_offsets=settings.recovery.on_lost_offsets,
        )
        ingest = PartitionIngest(
            for_part, route_of(topic, settings.topics), settings.topics, self._keys
        )
        return _IngestPartition(
            reader,
            ingest,
            self._gate,
            reference=topic in settings.topics.reference(),
            bounded=self._bounded,
            idle_after=settings.engine.idle_partition_seconds,
        )


class ListReader:
    """Records from an iterator, in order (a backtest's rows read as if from Kafka); tells
    ``progress`` how many it has read."""

    def __init__(
        self,
        records: Iterator[SourceRecord],
        resume: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._records = records
        self._progress = progress
        self.next_offset = 0
        self.at_end = False
        for _ in range(resume or 0):
            next(self._records, None)
            self.next_offset += 1

    def next_batch(self) -> list[SourceRecord]:
        batch = list(itertools.islice(self._records, FILE_BATCH))
        self.next_offset += len(batch)
        self.at_end = len(batch) < FILE_BATCH
        if self._progress is not None:
            self._progress(self.next_offset)
        return batch

    def close(self) -> None:
        pass


class ListInput(FixedPartitionedSource[object, int]):
    """Named partitions of records from factories: a backtest's files."""

    def __init__(
        self,
        settings: Settings,
        parts: dict[str, tuple[Route, Callable[[], Iterator[SourceRecord]]]],
        gate: _ReadGate,
        *,
        reference: frozenset[str] = frozenset(),
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._parts = parts
        self._gate = gate
        self._reference = reference
        self._progress = progress

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IngestPartition:
        route, records = self._parts[for_part]
        settings = self._settings
        progress = None if for_part in self._reference else self._progress
        reader = ListReader(records(), resume_state, progress)
        ingest = PartitionIngest(for_part, route, settings.topics, partitioning(settings))
        return _IngestPartition(
            reader,
            ingest,
            self._gate,
            reference=for_part in self._reference,
            bounded=True,
            idle_after=settings.engine.idle_partition_seconds,
        )


@dataclass(frozen=True)
class Inputs:
    """The three inputs of the flow and the partitions each stateful step waits for."""

    rules: FixedPartitionedSource[object, int]
    market: FixedPartitionedSource[object, int]
    users: FixedPartitionedSource[object, int]
    watermark_parts: frozenset[str]  # ticks and options flow: they drive event time
    evaluate_reference_parts: frozenset[str]  # rules and positions: loaded before evaluation
    feedback_parts: frozenset[str]  # personalization's watermark waits for them too
    profile_parts: frozenset[str]  # loaded before personalization


def kafka_inputs(settings: Settings, *, bounded: bool) -> Inputs:
    topics = settings.topics
    parts = list_partitions(settings.require_servers()[0], topics.inputs())
    gate = _ReadGate()

    def of(*names: str) -> list[tuple[str, int]]:
        return [(topic, p) for topic, p in parts if topic in names]

    def names(*topic_names: str) -> frozenset[str]:
        return frozenset(part_name(topic, p) for topic, p in of(*topic_names))

    return Inputs(
        rules=KafkaInput(settings, of(topics.rules), gate, bounded=bounded),
        market=KafkaInput(
            settings, of(topics.positions, topics.ticks, topics.options_flow), gate, bounded=bounded
        ),
        users=KafkaInput(settings, of(topics.profiles, topics.feedback), gate, bounded=bounded),
        watermark_parts=names(topics.ticks, topics.options_flow),
        evaluate_reference_parts=names(topics.rules, topics.positions),
        feedback_parts=names(topics.feedback),
        profile_parts=names(topics.profiles),
    )


def file_inputs(
    settings: Settings,
    rules: Callable[[], Iterator[SourceRecord]],
    market: Callable[[], Iterator[SourceRecord]],
    progress: Callable[[int], None] | None = None,
) -> Inputs:
    """A backtest's input: the rules, then market rows (ticks, flow, positions) in time order."""
    gate = _ReadGate()
    rules_part, market_part = f"{settings.topics.rules}#0", "market"
    reference = frozenset({rules_part})
    return Inputs(
        rules=ListInput(settings, {rules_part: (Route.RULES, rules)}, gate, reference=reference),
        market=ListInput(settings, {market_part: (Route.MARKET, market)}, gate, progress=progress),
        users=ListInput(settings, {}, gate),
        watermark_parts=frozenset({market_part}),
        evaluate_reference_parts=reference,
        feedback_parts=frozenset(),
        profile_parts=frozenset(),
    )


# ---------------------------------------------------------------- output


class _BackgroundPartition(StatefulSinkPartition[T, None], Generic[W, T]):
    def __init__(
        self, writer: W, write: Callable[[W, list[T]], None], name: str, *, durable_epochs: bool
    ) -> None:
        self._writer = writer
        self._durable_epochs = durable_epochs
        self._background: BackgroundWriter[T] = BackgroundWriter(
            lambda items: write(writer, items), name=name, on_error=WRITE_FAILURES.report
        )

    def write_batch(self, items: list[T]) -> None:
        self._background.submit(items)

    def snapshot(self) -> None:
        # Called as the epoch ends, before its snapshot is committed: a restart from that
        # snapshot must find everything of the epoch written. Without recovery nothing
        # restarts from it, and waiting would only stall the worker.
        if self._durable_epochs:
            self._background.flush()

    def close(self) -> None:
        try:
            self._background.close()
        finally:
            self._writer.close()


class BackgroundSink(FixedPartitionedSink[T, None], Generic[W, T]):
    """Adapts a plain writer to a Bytewax sink that writes on a thread of its own, one writer
    per process (its partition; ``sinks/background.py``). With ``durable_epochs`` (recovery
    on) the end of every epoch waits until the epoch's items are written.

    Items come keyed by ``local_part``, the partition of the process that made them.
    """

    def __init__(
        self,
        build: Callable[[], W],
        write: Callable[[W, list[T]], None],
        local_part: str,
        *,
        durable_epochs: bool,
    ) -> None:
        self._build = build
        self._write = write
        self._durable_epochs = durable_epochs
        self.local_part = local_part

    def list_parts(self) -> list[str]:
        return [self.local_part]

    def part_fn(self, item_key: str) -> int:
        return _process_of_part(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _BackgroundPartition[W, T]:
        name = f"{step_id}-{for_part}"
        return _BackgroundPartition(
            self._build(), self._write, name, durable_epochs=self._durable_epochs
        )


def _process_part(process_id: int) -> str:
    # Zero-padded: Bytewax indexes part_fn into the sorted names of every process's part.
    return f"process-{process_id:05d}"


def _process_of_part(part: str) -> int:
    return int(part.rpartition("-")[2])


# ---------------------------------------------------------------- stateful steps

RETAIN = op.StatefulBatchLogic.RETAIN


class _RouteLogic(op.StatefulBatchLogic[object, object, RuleRouter]):
    """Rule changes of one rules partition to their shards; its markers to every shard."""

    def __init__(self, router: RuleRouter, net: SafetyNet) -> None:
        self.router = router
        self.net = net

    def on_batch(self, values: list[object]) -> tuple[Iterable[object], bool]:
        out: list[object] = []
        for value in values:
            if isinstance(value, Progress):
                out.extend(self.router.broadcast(value))
            else:
                out.extend(self.net.run(value, self.router.route))  # type: ignore[arg-type]
        return out, RETAIN

    def snapshot(self) -> RuleRouter:
        return self.router


class _ShardLogic(op.StatefulBatchLogic[object, object, EvaluateShard]):
    """A bounded run's end evaluates what is held and closes the open bars; a live run's end (a
    stop) keeps everything for the next start."""

    def __init__(self, shard: EvaluateShard, bounded: bool) -> None:
        self.shard = shard
        self.bounded = bounded

    def on_batch(self, values: list[Any]) -> tuple[Iterable[object], bool]:
        out = self.shard.process(values, time.time())
        _observe_evaluate(values, out)
        return out, RETAIN

    def on_notify(self) -> tuple[Iterable[object], bool]:
        return self.shard.watermark_due(time.time()), RETAIN

    def on_eof(self) -> tuple[Iterable[object], bool]:
        return (self.shard.close_all(time.time()) if self.bounded else []), RETAIN

    def notify_at(self) -> datetime | None:
        return _wall(self.shard.next_watermark_at())

    def snapshot(self) -> EvaluateShard:
        return self.shard


class _DeskLogic(op.StatefulBatchLogic[object, object, DeskShard]):
    """Windows close by the watermark; in a live run also by wall clock once the input is
    caught up; at a bounded run's end everything goes out; a stop keeps everything."""

    def __init__(self, shard: DeskShard, bounded: bool) -> None:
        self.shard = shard
        self.bounded = bounded

    def on_batch(self, values: list[Any]) -> tuple[Iterable[object], bool]:
        now = None if self.bounded else time.time()
        _observe_personalize(values)
        return self.shard.process(values, now), RETAIN

    def on_notify(self) -> tuple[Iterable[object], bool]:
        return self.shard.close_due(time.time()), RETAIN

    def on_eof(self) -> tuple[Iterable[object], bool]:
        return (self.shard.close_all() if self.bounded else []), RETAIN

    def notify_at(self) -> datetime | None:
        return None if self.bounded else _wall(self.shard.next_deadline())

    def snapshot(self) -> DeskShard:
        return self.shard


def _observe_evaluate(values: list[Any], out: list[Any]) -> None:
    """Evaluation's newest event time (the last event of a batch: they come in read order), and
    the tick-to-alert time of each alert whose triggering event is in this batch (matched by
    event time). Alerts of a bar close, or of events held at start-up, are not observed."""
    for item in reversed(values):
        if type(item) in _MARKET_EVENTS:
            metrics.STATUS.saw_event_time("evaluate", item.ts)
            break
    alerts = [item for item in out if type(item) is TriggeredAlert]
    if not alerts:
        return
    sent = {
        item.ts: item.__dict__.get("sent_ms") for item in values if type(item) in _MARKET_EVENTS
    }
    now = time.time()
    for alert in alerts:
        sent_ms = sent.get(alert.triggered_at)
        if sent_ms is not None:
            metrics.TICK_TO_ALERT.labels(priority=alert.priority.value).observe(
                now - sent_ms / 1000
            )


def _observe_personalize(values: list[Any]) -> None:
    """Personalization's newest event time: an alert's, a feedback's, or the watermark it was
    told (evaluation's ``complete_before``), whichever of them came last in the batch."""
    for item in reversed(values):
        kind = type(item)
        if kind is TriggeredAlert:
            metrics.STATUS.saw_event_time("personalize", item.triggered_at)
        elif kind is Feedback:
            metrics.STATUS.saw_event_time("personalize", item.ts)
        elif kind is Watermark and item.complete_before is not None:
            metrics.STATUS.saw_event_time("personalize", item.complete_before)
        else:
            continue
        return


def _wall(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


# ---------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Writers:
    """Factories of the plain writers; each worker builds its own (own connections).

    ``records`` takes the Kafka output records (alerts, dead letters, and notifications when
    there is no ``notifications`` writer to publish them); a backtest passes a collector there
    and leaves the stores out (None).
    """

    records: Callable[[], RecordWriter]
    history: Callable[[], HistoryWriter] | None = None
    notifications: Callable[[], NotificationSink] | None = None
    relevance: Callable[[], RelevanceStore] | None = None


class RecordWriter(Protocol):
    def write_batch(self, records: list[OutgoingRecord]) -> None: ...
    def close(self) -> None: ...


def partitioning(settings: Settings) -> Partitioning:
    return Partitioning(settings.engine.shard_count, settings.engine.user_shard_count)


def build_flow(
    settings: Settings,
    writers: Writers,
    *,
    bounded: bool,
    inputs: Inputs | None = None,
) -> Dataflow:
    """The whole job. ``bounded`` reads every input to its current end and then stops.

    The inputs are every partition of the Kafka input topics unless ``inputs`` gives records of
    the same shape (a backtest's files): everything after them is the same dataflow.
    """
    topics, engine = settings.topics, settings.engine
    inputs = inputs or kafka_inputs(settings, bounded=bounded)
    keys = partitioning(settings)
    stop = engine.on_item_error == "stop"
    lateness = timedelta(seconds=engine.allowed_lateness_seconds)
    desk_config = personalization_config(settings)
    evaluate_shards = frozenset(keys.shards())
    flow = Dataflow("smart_alerts")

    def keyed(step: str, source: FixedPartitionedSource[object, int]) -> tuple[Stream, Stream]:
        raw = op.input(f"{step}_in", flow, source)
        split = op.branch(f"{step}_valid", raw, lambda item: not isinstance(item, DeadLetter))
        return split.trues, split.falses

    rules_keyed, rules_dead = keyed("rules", inputs.rules)
    market_keyed, market_dead = keyed("market", inputs.market)
    if settings.greeks.enabled:
        # Option ticks and prints without IV/greeks get them from a model, a batch per call.
        deriver = GreeksDeriver(GreeksConfig.from_section(settings.greeks))
        market_keyed = op.flat_map_batch("derive_greeks", market_keyed, deriver.derive)
    users_keyed, users_dead = keyed("users", inputs.users)

    # EVALUATE, keyed by shard: rules go to the shards of their symbols (all, for wildcards).
    def build_router(resume: RuleRouter | None) -> _RouteLogic:
        net = SafetyNet("route_rules", topics, stop)
        return _RouteLogic(resume or RuleRouter(engine.shard_count), net)

    routed = op.stateful_batch("route_rules", rules_keyed, build_router)
    rules_per_shard = op.filter_map("rules_to_shards", routed, _value_if(tuple))
    routing_dead = op.filter_map("routing_dead", routed, _value_if(DeadLetter))

    def build_shard(resume: EvaluateShard | None) -> _ShardLogic:
        net = SafetyNet("evaluate", topics, stop)
        if resume is None:
            resume = EvaluateShard(
                inputs.watermark_parts, inputs.evaluate_reference_parts, lateness, net
            )
        resume.net, resume.lateness = net, lateness
        resume.expect(inputs.watermark_parts, inputs.evaluate_reference_parts)
        return _ShardLogic(resume, bounded)

    evaluate_in = op.merge("evaluate_in", rules_per_shard, market_keyed)
    evaluated = op.stateful_batch("evaluate", evaluate_in, build_shard)
    alerts: Stream[TriggeredAlert] = op.filter_map("alerts", evaluated, _alert)
    evaluate_dead = op.filter_map("evaluate_dead", evaluated, _value_if(DeadLetter))
    user_count = engine.user_shard_count
    to_desks = op.flat_map("to_user_shards", evaluated, lambda kv: _to_desks(kv[1], user_count))

    # PERSONALIZE, keyed by user shard: profiles, feedback, alerts and watermarks meet there.
    def build_desk(resume: DeskShard | None) -> _DeskLogic:
        net = SafetyNet("personalize", topics, stop)
        if resume is None:
            resume = DeskShard(
                desk_config, evaluate_shards, inputs.feedback_parts, inputs.profile_parts, net
            )
        resume.net = net
        resume.expect(evaluate_shards, inputs.feedback_parts, inputs.profile_parts)
        return _DeskLogic(resume, bounded)

    personalized = op.stateful_batch(
        "personalize", op.merge("desk_in", users_keyed, to_desks), build_desk
    )
    desk_out = op.map("desk_out", personalized, lambda kv: _counted_output(kv[1]))
    dispatches = op.filter_map("dispatches", desk_out, _only(Dispatch))
    scores = op.filter_map("scores", desk_out, _only(RelevanceScore))
    outcomes = op.filter_map("outcomes", desk_out, _only(AlertOutcome))
    desk_dead = op.filter_map("desk_dead", desk_out, _only(DeadLetter))

    # Outputs: each writer is idempotent, so a replay after recovery rewrites the same rows.
    dead = op.merge(
        "dead_letters", rules_dead, market_dead, users_dead, routing_dead, evaluate_dead, desk_dead
    )
    kafka_streams = [alerts, dead]
    if writers.notifications is None:  # else the notification sink publishes what it sent
        kafka_streams.append(op.map("notifications", dispatches, lambda d: d.notification))
    # Every writer works on a thread of its own (the worker does not wait for the broker's, the
    # database's or Redis's answer); with recovery every epoch's end waits for them.
    local_part = _process_part(engine.process_id or 0)
    durable = settings.recovery.directory is not None

    def write_to(
        step: str, items: Stream[Any], build: Callable[[], W], write: Callable[[W, list[Any]], None]
    ) -> None:
        keyed = op.map(f"{step}_keyed", items, lambda item: (local_part, item))
        op.output(step, keyed, BackgroundSink(build, write, local_part, durable_epochs=durable))

    records = op.map(
        "to_records", op.merge("kafka_items", *kafka_streams), lambda i: _to_record(i, topics)
    )
    write_to("kafka_out", records, writers.records, _write_records)
    if writers.history is not None:
        history_items = op.merge(
            "history_items",
            op.filter_map("rule_changes", rules_keyed, _value_if(Rule, RuleTombstone)),
            op.filter_map("profiles", users_keyed, _value_if(Profile)),
            op.filter_map("feedback_history", users_keyed, _value_if(Feedback)),
            alerts,
            scores,
            outcomes,
        )
        write_to("history", history_items, writers.history, _write_history)
    if writers.notifications is not None:
        write_to("notify", dispatches, writers.notifications, NotificationSink.write_batch)
    if writers.relevance is not None:
        write_to("relevance", scores, writers.relevance, RelevanceStore.write_batch)
    return flow


def _value_if(*kinds: type) -> Callable[[tuple[str, object]], Any]:
    return lambda kv: kv[1] if isinstance(kv[1], kinds) else None


def _only(kind: type[T]) -> Callable[[object], T | None]:
    return lambda item: item if isinstance(item, kind) else None


def _alert(kv: tuple[str, object]) -> TriggeredAlert | None:
    item = kv[1]
    if not isinstance(item, TriggeredAlert):
        return None
    metrics.ALERTS.labels(priority=item.priority.value).inc()
    log.info("alert triggered", extra=alert_fields(item))
    return item


def _to_desks(item: object, user_shards: int) -> list[tuple[str, object]]:
    if isinstance(item, TriggeredAlert):
        return [(user_shard_of(item.user_id, user_shards), item)]
    if isinstance(item, Watermark):
        return [(shard, item) for shard in all_user_shards(user_shards)]
    return []


def _to_record(item: TriggeredAlert | Notification | DeadLetter, topics: Topics) -> OutgoingRecord:
    if isinstance(item, TriggeredAlert):
        return OutgoingRecord(topics.triggered, item.user_id.encode(), item.to_json())
    if isinstance(item, Notification):
        return OutgoingRecord(topics.notifications, item.user_id.encode(), item.to_json())
    metrics.DEAD_LETTERS.labels(
        topic=item.source_topic or "unknown", reason=metrics.dead_letter_reason(item.error)
    ).inc()
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
    feedback = [i for i in batch if isinstance(i, Feedback)]
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
    # After the alerts and outcomes of the batch, so their statuses move from there.
    if feedback:
        writer.write_feedback(feedback)


def _rule_id(change: Rule | RuleTombstone) -> str:
    return change.id if isinstance(change, Rule) else change.rule_id


def _counted_output(output: object) -> object:
    if isinstance(output, Dispatch):
        metrics.NOTIFICATIONS.labels(priority=output.notification.highest_priority.value).inc()
    elif isinstance(output, RelevanceScore):
        metrics.SCORES.inc()
    elif isinstance(output, AlertOutcome):
        metrics.OUTCOMES.labels(status=output.status).inc()
    return output


def personalization_config(settings: Settings) -> PersonalizationConfig:
    p, engine = settings.personalization, settings.engine
    return PersonalizationConfig(
        window=timedelta(seconds=engine.window_seconds),
        lateness=timedelta(seconds=engine.allowed_lateness_seconds),
        # CRITICAL never waits in a window: its limit applies by the wall clock only.
        stale_after={
            priority: limit
            for priority, limit in p.stale_limits().items()
            if priority is not Priority.CRITICAL
        },
        learning=LearningConfig(
            alpha=p.learning_alpha,
            half_life=timedelta(days=p.learning_half_life_days),
            ignore_after=timedelta(hours=p.ignore_after_hours),
            predictor=relevance_predictor(p),
        ),
    )


def relevance_predictor(p: Personalization) -> TrainedRelevance | None:
    """The trained relevance model when ``relevance_model = "trained"``, else None (EMA)."""
    if p.relevance_model == "ema":
        return None
    if p.relevance_model_path is None:
        raise ConfigError(
            '[personalization] relevance_model = "trained" needs relevance_model_path'
        )
    try:
        return TrainedRelevance.load(p.relevance_model_path)
    except ArtifactError as exc:
        raise ConfigError(f"[personalization] relevance_model_path: {exc}") from None


# ---------------------------------------------------------------- running


def writers_for(settings: Settings) -> Writers:
    bootstrap, database_url, redis_url = settings.require_servers()
    maxlen = settings.in_app.stream_maxlen
    for sender in build_senders(settings.delivery).values():  # a ConfigError now, not per worker
        sender.close()
    deps = settings.dependencies
    return Writers(
        records=lambda: CheckedProducer(bootstrap),
        history=lambda: HistoryWriter(database_url, deps),
        notifications=lambda: NotificationSink(
            HistoryWriter(database_url, deps),
            InAppFeed(redis_url, maxlen=maxlen, dependencies=deps),
            build_delivery(settings.delivery, database_url, deps),
            publisher=MessagePublisher(bootstrap, settings.topics.notifications),
            push_age_limits=settings.personalization.stale_limits(),
            drain_on_close=lambda: not STOP.is_set(),
            close_grace=settings.engine.shutdown_grace_seconds,
        ),
        relevance=lambda: RelevanceStore(redis_url, dependencies=deps),
    )


def run(settings: Settings, *, bounded: bool = False) -> int:
    """Run the job in this process (one of ``engine.addresses`` when scaled out).

    Returns 0 when the input ended (bounded) or SIGTERM stopped it, 130 after SIGINT: sources
    end their input, the steps keep their state, the sinks drain and close, and with recovery on
    the last snapshot covers everything read, so the next start resumes where this one stopped.
    Logs a line when it starts (the configuration, without secrets) and when it stops (why).
    """
    with lifetime(log, "job", job_summary(settings, bounded=bounded)) as life:
        life.reason = "input read to its end" if bounded else "input ended"
        return _run(settings, bounded, life)


def job_summary(settings: Settings, *, bounded: bool) -> dict[str, Any]:
    """What the start line says about the job: servers without passwords, topics, recovery,
    the channels with a provider configured, the processes."""
    senders = build_senders(settings.delivery)
    for sender in senders.values():
        sender.close()
    engine, recovery = settings.engine, settings.recovery
    return {
        **server_summary(
            settings.kafka_bootstrap_servers, settings.database_url, settings.redis_url
        ),
        "topics": settings.topics.model_dump(),
        "recovery": "on" if recovery.directory is not None else "off",
        "recovery_directory": str(recovery.directory) if recovery.directory else None,
        "channels": sorted([Channel.IN_APP.value, *(channel.value for channel in senders)]),
        "bounded": bounded,
        "process_id": engine.process_id or 0,
        "processes": len(engine.addresses or []) or 1,
        "workers_per_process": engine.workers_per_process,
    }


def _run(settings: Settings, bounded: bool, life: Lifetime) -> int:
    # Every record allocates a few dozen short-lived objects: with the default threshold (700)
    # the cyclic collector ran thousands of times a second, a quarter of the job's CPU.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
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
    WRITE_FAILURES.clear()
    metrics.STATUS.reset(recovery_on=recovery_config is not None)
    with _stop_on_signals() as received:
        try:
            cli_main(
                flow,
                workers_per_process=engine.workers_per_process,
                process_id=engine.process_id,
                addresses=engine.addresses,
                epoch_interval=epoch,
                recovery_config=recovery_config,
            )
        except BaseException as exc:  # a lost peer surfaces as a Rust panic, not an Exception
            if engine.addresses and "thread panic" in str(exc):
                raise PeerLostError(
                    f"lost contact with another process of this job ({exc}); restart every "
                    "process of the job together (with recovery on they resume from the last "
                    "snapshot)"
                ) from None
            raise
    if received:
        log.info("stopped on %s: input closed, state kept, deliveries drained", received[0].name)
        life.reason = f"{received[0].name} received"
        return 130 if received[0] is signal.SIGINT else 0
    return 0


def run_in_this_thread(settings: Settings, writers: Writers, inputs: Inputs) -> None:
    """A bounded run of the flow over ``inputs`` in one worker of this thread (a backtest's
    files, written to ``writers``): no cluster, no recovery, no signal handling."""
    WRITE_FAILURES.clear()
    run_main(build_flow(settings, writers, bounded=True, inputs=inputs))


@contextmanager
def _stop_on_signals() -> Iterator[list[signal.Signals]]:
    """SIGTERM and SIGINT end the input of every source of this process (``STOP``)."""
    received: list[signal.Signals] = []
    STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum: int, _frame: object) -> None:
        if not received:
            log.info("%s received: stopping", signal.Signals(signum).name)
        received.append(signal.Signals(signum))
        STOP.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        STOP.clear()


def _ensure_recovery_partitions(directory: Path, count: int) -> None:
    """Create the recovery partitions on first use, as ``python -m bytewax.recovery`` would."""
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, count)
