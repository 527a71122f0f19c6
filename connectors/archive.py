"""The Parquet archive of the streams: written beside the job, read by backtests and analysts.

Layout (docs/contracts.md, "Archive"), hive-style so that polars, DuckDB and pyarrow read it
with no code of ours::

    <root>/topic=<config key>/date=<YYYY-MM-DD>/part-<partition>-<first>-<last>.parquet

The columns are the fields of the topic's message model (pipeline/messages.py, the single
definition) plus ``kafka_partition``, ``kafka_offset`` and ``kafka_timestamp``.

**Rolls.** The archiver reads each Kafka partition into a *roll*: the records of a contiguous
offset range ``[first, last]``. A roll becomes one file per UTC date of its rows' event times,
every file named ``part-<partition>-<first>-<last>.parquet`` in its own ``date=`` folder, so
every offset of the range is in exactly one of them (or in none, when the record was not valid
for the model). Each file's footer lists the dates of its roll. Rolls of a partition are written
one after another, each file atomically (a temporary name, fsync, rename on a local folder; one
object written whole on S3), and only then is the range's end committed to Kafka.

**Exactly once.** On start the archiver lists the files, not the committed offsets: a
partition resumes after the highest ``last`` of its files. Only that last roll can be
incomplete (a crash between two of its files); the footer names the dates it must have, and the
missing ones are rebuilt from the same offset range, which gives the same rows. A crash at any
point therefore leaves no duplicate and no missing row after a restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import operator
import os
import re
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import BaseModel

from connectors.files import InputOptions, SortedRows
from connectors.kafka import LostOffsetsError, PartitionReader, SourceRecord, list_partitions
from pipeline.config import Archive as ArchiveConfig
from pipeline.config import Topics
from pipeline.messages import (
    DeadLetter,
    Feedback,
    InvalidMessage,
    Message,
    Notification,
    OptionsFlow,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
    decode,
)
from pipeline.parsing import parse_record

__all__ = [
    "ARCHIVED",
    "ArchiveError",
    "ArchiveStorageError",
    "ArchiveStore",
    "Archiver",
    "ArchivedRows",
    "arrow_schema",
    "read_archive",
]

log = logging.getLogger("smart_alerts.archive")

KAFKA_COLUMNS = ("kafka_partition", "kafka_offset", "kafka_timestamp")
FOOTER_KEY = b"smart_alerts.archive"
LAYOUT_VERSION = 1
_PART = re.compile(r"^part-(\d+)-(\d+)-(\d+)\.parquet$")
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_TEMPORARY = re.compile(r"^\.part-.*\.tmp$")
_BATCH_ROWS = 8192  # rows kept as Python values before they become an Arrow record batch
_ROW_GROUP_ROWS = 131_072  # rows of a Parquet row group, compressed as soon as it is complete
_EPOCH_DATE = "1970-01-01"  # the date of a record without a Kafka timestamp (none in practice)


class ArchiveError(RuntimeError):
    """The archive cannot be used as configured; the message says what to fix."""


class ArchiveStorageError(ArchiveError):
    """The archive's storage (folder or object store) did not answer or refused a write."""


@dataclass(frozen=True)
class ArchivedTopic:
    """How one topic is archived: its message model and which field is its event time
    (None: the Kafka record's timestamp, for rules, which carry no event time)."""

    key: str
    model: type[Message]
    time_field: str | None
    is_input: bool  # parsed as the job parses it (key checks, tombstones)


ARCHIVED: dict[str, ArchivedTopic] = {
    topic.key: topic
    for topic in (
        ArchivedTopic("ticks", Tick, "ts", True),
        ArchivedTopic("options_flow", OptionsFlow, "ts", True),
        ArchivedTopic("rules", Rule, None, True),
        ArchivedTopic("feedback", Feedback, "ts", True),
        ArchivedTopic("triggered", TriggeredAlert, "triggered_at", False),
        ArchivedTopic("notifications", Notification, "window_start", False),
        ArchivedTopic("dlq", DeadLetter, "ts", False),
    )
}


# ---------------------------------------------------------------- schema from the models


@dataclass(frozen=True)
class _Column:
    name: str
    type: pa.DataType
    as_json: bool  # an object or a nested structure: stored as its JSON text


def _scalar_type(annotation: Any) -> pa.DataType | None:
    """The Arrow type of a scalar annotation; None when it is not a scalar."""
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return pa.bool_()
        if issubclass(annotation, Enum) or issubclass(annotation, str):
            return pa.string()
        if issubclass(annotation, int):
            return pa.int64()
        if issubclass(annotation, float):
            return pa.float64()
        if issubclass(annotation, datetime):
            return pa.timestamp("us", tz="UTC")
        return None
    origin = get_origin(annotation)
    if origin is Literal:
        kinds = {type(value) for value in get_args(annotation)}
        return _scalar_type(kinds.pop()) if len(kinds) == 1 else None
    return None


def _column_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """(Arrow type, stored as JSON text) for a model field's annotation."""
    while True:
        origin = get_origin(annotation)
        if origin is not None and getattr(annotation, "__metadata__", None) is not None:
            annotation = get_args(annotation)[0]  # Annotated[X, ...]
            continue
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) == 1:
                annotation = options[0]
                continue
        break
    scalar = _scalar_type(annotation)
    if scalar is not None:
        return scalar, False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        inner, nested = _column_type(item)
        if not nested:
            return pa.list_(inner), False
    return pa.string(), True


def _columns(topic: ArchivedTopic) -> list[_Column]:
    columns = [
        _Column(name, *_column_type(info.annotation))
        for name, info in topic.model.model_fields.items()
    ]
    if topic.model is Rule:
        columns.append(_Column("deleted", pa.bool_(), False))
    columns += [
        _Column("kafka_partition", pa.int32(), False),
        _Column("kafka_offset", pa.int64(), False),
        _Column("kafka_timestamp", pa.timestamp("ms", tz="UTC"), False),
    ]
    return columns


def arrow_schema(key: str) -> pa.Schema:
    """The archive's Arrow schema for a topic (by config key), derived from its message model:
    scalars as Arrow scalars (timestamps in UTC microseconds), lists of scalars as lists,
    objects and nested structures as their JSON text; every column nullable."""
    return pa.schema([pa.field(c.name, c.type) for c in _columns(ARCHIVED[key])])


# ---------------------------------------------------------------- storage


@dataclass(frozen=True, order=True)
class PartFile:
    """One archive file, as its path names it."""

    partition: int
    last: int
    first: int
    day: str
    path: str


class ArchiveStore:
    """The archive's root on a local folder or an object store, through pyarrow's filesystems.

    ``root``: a folder (relative or absolute, or ``file://``), ``s3://bucket/prefix`` or any
    other URI pyarrow knows. S3 credentials come from the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE or the instance's role), never from
    the configuration; ``s3_endpoint`` points at an S3-compatible server (MinIO, Ceph, ...).
    """

    def __init__(self, root: str, *, s3_endpoint: str | None = None, s3_region: str | None = None):
        self.root = root
        self.fs, self.base = _filesystem(root, s3_endpoint, s3_region)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArchiveStore({self.root!r})"

    def topic_dir(self, key: str) -> str:
        return f"{self.base}/topic={key}"

    def date_dir(self, key: str, day: str) -> str:
        return f"{self.topic_dir(key)}/date={day}"

    def parts(self, key: str) -> list[PartFile]:
        """Every archive file of a topic, in no particular order."""
        found = []
        for info in self._list(self.topic_dir(key), recursive=True):
            if info.type != pafs.FileType.File:
                continue
            parent, _, name = info.path.rpartition("/")
            match, day = _PART.match(name), _DATE_DIR.match(parent.rpartition("/")[2])
            if match and day:
                partition, first, last = (int(g) for g in match.groups())
                found.append(PartFile(partition, last, first, day.group(1), info.path))
        return found

    def files_between(self, key: str, start: date, end: date) -> list[str]:
        """The archive files of a topic whose date folder lies in ``[start, end]``."""
        paths = []
        day = start
        while day <= end:
            for info in self._list(self.date_dir(key, day.isoformat()), recursive=False):
                if info.type == pafs.FileType.File and _PART.match(info.base_name):
                    paths.append(info.path)
            day += timedelta(days=1)
        return sorted(paths)

    def remove_temporaries(self, key: str) -> int:
        """Delete temporary files a killed archiver left (local folders only: an object store
        never sees a partial object)."""
        if not self.local:
            return 0
        removed = 0
        for info in self._list(self.topic_dir(key), recursive=True):
            if info.type == pafs.FileType.File and _TEMPORARY.match(info.base_name):
                self.fs.delete_file(info.path)
                removed += 1
        return removed

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` so that it exists whole or not at all, and durably."""
        directory, _, name = path.rpartition("/")
        try:
            if not self.local:
                # One object, written when the stream closes (a PutObject, or a multipart
                # upload completed in one call): readers never see part of it.
                with self.fs.open_output_stream(path) as stream:
                    stream.write(data)
                return
            os.makedirs(directory, exist_ok=True)
            temporary = f"{directory}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            _fsync_directory(directory)
        except OSError as exc:
            raise ArchiveStorageError(f"cannot write {self._show(path)}: {_reason(exc)}") from exc

    def footer(self, path: str) -> dict[str, Any]:
        """The archive's entry in a file's Parquet footer (its roll: topic, range, dates)."""
        try:
            with self.fs.open_input_file(path) as handle:
                metadata = pq.read_metadata(handle).metadata or {}
        except (OSError, pa.ArrowInvalid) as exc:
            raise ArchiveError(f"cannot read the footer of {self._show(path)}: {exc}") from exc
        try:
            entry: dict[str, Any] = json.loads(metadata[FOOTER_KEY])
        except (KeyError, ValueError) as exc:
            raise ArchiveError(
                f"{self._show(path)} is not an archive file (no {FOOTER_KEY.decode()} entry in "
                "its footer); keep other files out of the archive's topic= folders"
            ) from exc
        return entry

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the root for one archiver: two writing the same files would each resume from
        what the other had not finished. A lock file on a local folder; an object store has
        no locks, so there one archiver per root is the operator's rule (docs/operations.md)."""
        if not self.local:
            yield
            return
        try:
            os.makedirs(self.base, exist_ok=True)
            handle = open(f"{self.base}/.archive.lock", "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ArchiveError(f"archive root {self.root} is not writable: {_reason(exc)}") from exc
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveError(
                    f"another archiver is writing to {self.root} (it holds "
                    f"{self.base}/.archive.lock); run one archiver per root"
                ) from None
            yield

    def check_writable(self) -> None:
        """Fail at start, naming the root, when it cannot be written."""
        probe = f"{self.base}/.write-test-{uuid.uuid4().hex[:12]}"
        try:
            if self.local:
                os.makedirs(self.base, exist_ok=True)
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"")
            self.fs.delete_file(probe)
        except OSError as exc:
            # A folder that cannot be written is the operator's to fix; an object store that
            # does not answer may do so later.
            kind = ArchiveError if self.local else ArchiveStorageError
            raise kind(f"archive root {self.root} is not writable: {_reason(exc)}") from exc

    def _list(self, directory: str, *, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(directory, recursive=recursive, allow_not_found=True)
        try:
            infos: list[pafs.FileInfo] = self.fs.get_file_info(selector)
        except OSError as exc:
            raise ArchiveStorageError(
                f"cannot list {self._show(directory)}: {_reason(exc)}"
            ) from exc
        return infos

    def _show(self, path: str) -> str:
        """A path as the operator named the root (s3://bucket/... rather than bucket/...)."""
        if self.local or not path.startswith(self.base):
            return path
        return self.root.rstrip("/") + path[len(self.base) :]


def _filesystem(
    root: str, s3_endpoint: str | None, s3_region: str | None
) -> tuple[pafs.FileSystem, str]:
    if "://" not in root:
        return pafs.LocalFileSystem(), str(Path(root).absolute())
    if root.startswith("s3://"):
        bucket_and_prefix = root[len("s3://") :].strip("/")
        if not bucket_and_prefix:
            raise ArchiveError(f"archive root {root}: name a bucket (s3://bucket/prefix)")
        options: dict[str, Any] = {}
        if s3_endpoint:
            scheme, _, address = s3_endpoint.partition("://")
            if not address or scheme not in ("http", "https"):
                raise ArchiveError(
                    f"[archive] s3_endpoint {s3_endpoint!r}: expected http://host:port or "
                    "https://host:port"
                )
            options.update(endpoint_override=address, scheme=scheme)
        if s3_region:
            options["region"] = s3_region
        return pafs.S3FileSystem(**options), bucket_and_prefix
    try:
        filesystem, path = pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArchiveError(f"archive root {root}: {exc}") from exc
    return filesystem, path.rstrip("/")


def _fsync_directory(directory: str) -> None:
    """Make a rename durable: the directory entry is flushed too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- rows of a roll


class _DayRows:
    """The rows of one roll and one date, compressed as they come: tuples in column order
    become an Arrow record batch every ``_BATCH_ROWS`` (a transpose in C, then one array per
    column), and the batches a Parquet row group of the file being built in memory every
    ``_ROW_GROUP_ROWS``. So a roll holds its rows as compressed Parquet, a few bytes each, and
    files can be large without the archiver being so."""

    def __init__(self, columns: list[_Column], schema: pa.Schema, compression: str) -> None:
        self.columns = columns
        self.schema = schema
        self.pending: list[tuple[Any, ...]] = []
        self.batches: list[pa.RecordBatch] = []
        self.batched = 0
        self.sink = pa.BufferOutputStream()
        self.writer = pq.ParquetWriter(self.sink, schema, compression=compression)

    def add(self, row: tuple[Any, ...]) -> None:
        self.pending.append(row)
        if len(self.pending) >= _BATCH_ROWS:
            self._seal()

    def _seal(self) -> None:
        if self.pending:
            values = zip(*self.pending, strict=True)
            arrays = [pa.array(v, type=c.type) for v, c in zip(values, self.columns, strict=True)]
            self.batches.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self.batched += len(self.pending)
            self.pending = []
        if self.batched >= _ROW_GROUP_ROWS:
            self._write_group()

    def _write_group(self) -> None:
        if self.batches:
            table = pa.Table.from_batches(self.batches, schema=self.schema)
            self.writer.write_table(table, row_group_size=table.num_rows)
            self.batches, self.batched = [], 0

    def finish(self, footer: dict[str, Any]) -> bytes:
        """The whole Parquet file, its footer carrying ``footer`` under FOOTER_KEY."""
        self._seal()
        self._write_group()
        self.writer.add_key_value_metadata({FOOTER_KEY: json.dumps(footer).encode()})
        self.writer.close()
        data: bytes = self.sink.getvalue().to_pybytes()
        return data


class _Roll:
    """The records of one partition read since its last file: ``[first, last]`` offsets."""

    def __init__(
        self, archived: ArchivedTopic, columns: list[_Column], schema: pa.Schema, compression: str
    ) -> None:
        self.archived = archived
        self.columns = columns
        self.schema = schema
        self.compression = compression
        self.fields = [c.name for c in columns if c.name not in KAFKA_COLUMNS]
        self.json_fields = {c.name for c in columns if c.as_json}
        # Most rows (ticks, prints) have only scalar fields: one C call takes them all.
        self.plain = operator.itemgetter(*self.fields) if not self.json_fields else None
        self.days: dict[str, _DayRows] = {}
        self.first: int | None = None
        self.last: int | None = None
        self.started = 0.0  # monotonic time of its first record
        self.rows = 0
        self.raw_bytes = 0
        # The last date seen and its bounds: rows mostly come in time order, so most rows
        # find their date with two comparisons.
        self._day_from = self._day_to = datetime.min.replace(tzinfo=UTC)
        self._day_label = _EPOCH_DATE

    def add(self, record: SourceRecord, message: Message | RuleTombstone | None) -> None:
        """Take a record into the range; ``message`` None: not valid, so no row."""
        if self.first is None:
            self.first = record.offset
            self.started = time.monotonic()
        self.last = record.offset
        if message is None:
            return
        day = self._day(record, message)
        rows = self.days.get(day)
        if rows is None:
            rows = self.days[day] = _DayRows(self.columns, self.schema, self.compression)
        rows.add(self._row(message) + (record.partition, record.offset, record.timestamp_ms))
        self.rows += 1
        self.raw_bytes += len(record.value or b"") + 24  # and the Kafka columns

    def _day(self, record: SourceRecord, message: Message | RuleTombstone) -> str:
        time_field = self.archived.time_field
        if time_field is not None and isinstance(message, BaseModel):
            when: datetime = getattr(message, time_field)
        elif record.timestamp_ms is not None:
            when = datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)
        else:
            return _EPOCH_DATE
        if not self._day_from <= when < self._day_to:
            day = when.astimezone(UTC).date()
            self._day_from = datetime(day.year, day.month, day.day, tzinfo=UTC)
            self._day_to = self._day_from + timedelta(days=1)
            self._day_label = day.isoformat()
        return self._day_label

    def _row(self, message: Message | RuleTombstone) -> tuple[Any, ...]:
        """The message's fields in column order."""
        if isinstance(message, RuleTombstone):
            return tuple(
                message.rule_id if name == "id" else True if name == "deleted" else None
                for name in self.fields
            )
        values = message.__dict__
        if self.plain is not None:
            taken: tuple[Any, ...] = self.plain(values)
            return taken
        nested = message.model_dump(mode="json", include=self.json_fields, exclude_none=True)
        row: list[Any] = []
        for name in self.fields:
            if name in self.json_fields:
                value = nested.get(name)
                row.append(None if value is None else json.dumps(value, separators=(",", ":")))
            elif name == "deleted":
                row.append(False)
            else:
                row.append(values[name])
        return tuple(row)


# ---------------------------------------------------------------- the archiver


@dataclass
class TopicStats:
    """What one topic's archiving did in this run."""

    read: int = 0
    rows: int = 0
    invalid: int = 0
    files: int = 0
    repaired: int = 0  # files of an interrupted roll written again at start


@dataclass
class _Partition:
    archived: ArchivedTopic
    kafka_topic: str
    partition: int
    reader: PartitionReader
    roll: _Roll


def _decoder(
    archived: ArchivedTopic, topics: Topics
) -> Callable[[SourceRecord], Message | RuleTombstone | None]:
    """What the archive keeps of a record: the message the job reads from it (inputs are
    parsed exactly as the job parses them), or None for a record that is not valid."""
    if archived.is_input:

        def parse_input(record: SourceRecord) -> Message | RuleTombstone | None:
            parsed = parse_record(record, topics).item
            return parsed if isinstance(parsed, Message | RuleTombstone) else None

        return parse_input
    model = archived.model

    def parse_output(record: SourceRecord) -> Message | None:
        try:
            return decode(model, record.value)
        except InvalidMessage:
            return None

    return parse_output


@dataclass
class Archiver:
    """Reads the configured topics' partitions and writes them to the archive (module docstring).

    ``run`` goes on until ``stop`` is set (SIGTERM), or with ``bounded`` until every partition
    is read to its current end; either way it then writes what it holds and commits.
    """

    bootstrap: str
    topics: Topics
    config: ArchiveConfig
    store: ArchiveStore
    stop: threading.Event = field(default_factory=threading.Event)
    stats: dict[str, TopicStats] = field(default_factory=dict)
    _partitions: list[_Partition] = field(default_factory=list, init=False)
    _committer: Consumer | None = field(default=None, init=False)

    def run(self, *, bounded: bool = False) -> dict[str, TopicStats]:
        keys = list(dict.fromkeys(self.config.topics))
        names = {key: getattr(self.topics, key) for key in keys}
        self.stats = {key: TopicStats() for key in keys}
        partitions = list_partitions(self.bootstrap, list(names.values()))
        self.store.check_writable()
        self._committer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.config.group_id,
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "client.id": "smart-alerts-archive-commits",
            }
        )
        try:
            for key in keys:
                self._open_topic(key, names[key], [p for t, p in partitions if t == names[key]])
            self._loop(bounded)
            self._write_all()
        finally:
            for part in self._partitions:
                part.reader.close()
            self._partitions = []
            self._committer.close()
            self._committer = None
        return self.stats

    # ---------------------------------------------------------------- start: resume, repair

    def _open_topic(self, key: str, name: str, partitions: list[int]) -> None:
        archived = ARCHIVED[key]
        removed = self.store.remove_temporaries(key)
        if removed:
            log.info("archive %s: removed %d temporary file(s) of a stopped run", key, removed)
        by_partition: dict[int, list[PartFile]] = {}
        for part in self.store.parts(key):
            by_partition.setdefault(part.partition, []).append(part)
        unknown = sorted(set(by_partition) - set(partitions))
        if unknown:
            raise ArchiveError(
                f"the archive holds {key} partition(s) {unknown} that Kafka topic {name!r} does "
                "not have (the topic was recreated with fewer partitions?); archive it to a new "
                f"root or move {self.store.topic_dir(key)} away"
            )
        columns = _columns(archived)
        schema = arrow_schema(key)
        for partition in partitions:
            files = by_partition.get(partition, [])
            start = 0
            if files:
                last_roll = max(files)
                start = last_roll.last + 1
                self._repair(archived, name, partition, last_roll, files, columns, schema)
            reader = self._reader(key, name, partition, start)
            roll = _Roll(archived, columns, schema, self.config.compression)
            self._partitions.append(_Partition(archived, name, partition, reader, roll))
            log.debug("archive %s[%d]: resuming at offset %d", key, partition, start)

    def _reader(self, key: str, name: str, partition: int, start: int) -> PartitionReader:
        return PartitionReader(
            self.bootstrap,
            name,
            partition,
            start,
            batch_size=self.config.batch_size,
            poll_timeout_s=0.0,
            on_lost_offsets="stop",
        )

    def _repair(
        self,
        archived: ArchivedTopic,
        name: str,
        partition: int,
        last_roll: PartFile,
        files: list[PartFile],
        columns: list[_Column],
        schema: pa.Schema,
    ) -> None:
        """Write the files of the partition's last roll that a crash left unwritten."""
        present = {f.day for f in files if (f.first, f.last) == (last_roll.first, last_roll.last)}
        wanted = set(self.store.footer(last_roll.path).get("dates", []))
        missing = wanted - present
        if not missing:
            return
        key = archived.key
        log.info(
            "archive %s[%d]: the roll of offsets %d-%d lacks its file(s) for %s; writing them",
            key,
            partition,
            last_roll.first,
            last_roll.last,
            ", ".join(sorted(missing)),
        )
        roll = _Roll(archived, columns, schema, self.config.compression)
        decode_record = _decoder(archived, self.topics)
        with self._reader(key, name, partition, last_roll.first) as reader:
            while reader.next_offset <= last_roll.last:
                batch = reader.next_batch()
                for record in batch:
                    if record.offset <= last_roll.last:
                        roll.add(record, decode_record(record))
                if not batch:
                    if reader.at_end:
                        break
                    time.sleep(0.01)
        lost = sorted(missing - set(roll.days))
        if lost:
            log.warning(
                "archive %s[%d]: Kafka no longer has the rows of offsets %d-%d for %s "
                "(retention or compaction removed them): those rows are not in the archive",
                key,
                partition,
                last_roll.first,
                last_roll.last,
                ", ".join(lost),
            )
        roll.first, roll.last = last_roll.first, last_roll.last
        written = self._write_roll(key, partition, roll, only=missing, dates=sorted(wanted))
        self.stats[key].repaired += written

    # ---------------------------------------------------------------- the loop

    def _loop(self, bounded: bool) -> None:
        decoders = {part.archived.key: _decoder(part.archived, self.topics) for part in self}
        progress_due = time.monotonic() + self.config.progress_seconds
        started, last_read = time.monotonic(), 0
        while not self.stop.is_set():
            got = 0
            for part in self:
                batch = part.reader.next_batch()
                if batch:
                    got += len(batch)
                    self._take(part, batch, decoders[part.archived.key])
            now = time.monotonic()
            for part in self:
                if self._due(part.roll, now):
                    self._write(part)
            if now >= progress_due:
                progress_due = now + self.config.progress_seconds
                read = sum(s.read for s in self.stats.values())
                self._progress(read, read - last_read, now - started)
                last_read, started = read, now
            if bounded and all(part.reader.at_end for part in self):
                return
            if not got:
                self.stop.wait(0.05)

    def __iter__(self) -> Iterator[_Partition]:
        return iter(self._partitions)

    def _take(
        self,
        part: _Partition,
        batch: list[SourceRecord],
        decode_record: Callable[[SourceRecord], Message | RuleTombstone | None],
    ) -> None:
        stats = self.stats[part.archived.key]
        roll = part.roll
        for record in batch:
            message = decode_record(record)
            if message is None:
                stats.invalid += 1
            roll.add(record, message)
            if roll.rows >= self.config.max_rows or roll.raw_bytes >= self.config.max_bytes:
                self._write(part)
                roll = part.roll
        stats.read += len(batch)

    def _due(self, roll: _Roll, now: float) -> bool:
        return roll.first is not None and now - roll.started >= self.config.roll_seconds

    def _write_all(self) -> None:
        for part in self:
            if part.roll.first is not None:
                self._write(part)

    def _write(self, part: _Partition) -> None:
        roll = part.roll
        key = part.archived.key
        part.roll = _Roll(roll.archived, roll.columns, roll.schema, roll.compression)
        written = self._write_roll(key, part.partition, roll, only=None, dates=sorted(roll.days))
        stats = self.stats[key]
        stats.files += written
        stats.rows += roll.rows
        assert roll.last is not None
        self._commit(part.kafka_topic, part.partition, roll.last + 1)

    def _write_roll(
        self, key: str, partition: int, roll: _Roll, *, only: set[str] | None, dates: list[str]
    ) -> int:
        """Write a roll's files (or ``only`` those dates), each atomically; how many."""
        assert roll.first is not None and roll.last is not None
        footer = {
            "layout": LAYOUT_VERSION,
            "topic": key,
            "partition": partition,
            "first_offset": roll.first,
            "last_offset": roll.last,
            "dates": dates,
        }
        written = 0
        for day in dates:
            if day not in roll.days or (only is not None and day not in only):
                continue
            data = roll.days[day].finish(footer)
            name = f"part-{partition}-{roll.first}-{roll.last}.parquet"
            self.store.write(f"{self.store.date_dir(key, day)}/{name}", data)
            written += 1
        return written

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        """The committed offset is for monitoring (consumer-group lag tools); the archive's
        files, not it, say where a restart resumes."""
        if self._committer is None:
            return
        try:
            self._committer.commit(
                offsets=[TopicPartition(topic, partition, offset)], asynchronous=False
            )
        except KafkaException as exc:
            log.warning(
                "archive: could not commit %s[%d] offset %d to group %s (the archive is "
                "unaffected: it resumes from its files): %s",
                topic,
                partition,
                offset,
                self.config.group_id,
                exc,
            )

    def _progress(self, read: int, recent: int, seconds: float) -> None:
        files = sum(s.files for s in self.stats.values())
        rows = sum(s.rows for s in self.stats.values())
        invalid = sum(s.invalid for s in self.stats.values())
        held = sum(part.roll.rows for part in self)
        line = (
            f"archive: {read:,} messages read ({recent / max(seconds, 1e-9):,.0f}/s), "
            f"{rows:,} rows in {files:,} files, {held:,} rows held for the next files, "
            f"{invalid:,} not valid"
        )
        log.info("%s", line)


def lost_offsets_message(exc: LostOffsetsError) -> str:
    """The archive's own advice for offsets past a partition's end (its files name offsets
    Kafka does not have): re-reading would overwrite files of the same names."""
    return (
        f"{exc}".split(";")[0]
        + "; the archive holds offsets Kafka no longer has: archive to a new root, or move the "
        "topic's folder away, then start again"
    )


# ---------------------------------------------------------------- reading back


def read_archive(
    store: ArchiveStore,
    key: str,
    start: date,
    end: date,
    columns: Iterable[str] | None = None,
) -> pa.Table:
    """The rows of one topic whose date folder lies in ``[start, end]``, in (partition, offset)
    order. Files written before a field was added read that field as null."""
    schema = arrow_schema(key)
    paths = store.files_between(key, start, end)
    if not paths:
        empty = schema.empty_table()
        return empty if columns is None else empty.select(list(columns))
    order = ["kafka_partition", "kafka_offset"]
    wanted = None if columns is None else [*columns]
    read = None if wanted is None else [*wanted, *(c for c in order if c not in wanted)]
    try:
        dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=store.fs)
        table = dataset.to_table(columns=read)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ArchiveStorageError(f"cannot read the archive at {store.root}: {exc}") from exc
    table = table.sort_by([(name, "ascending") for name in order])
    return table if wanted is None else table.select(wanted)


class ArchivedRows(SortedRows):
    """A topic's archived rows as backtest input: the message fields only (a tick file with
    exactly the tick columns), read in the order Kafka had them before the event-time sort."""

    def __init__(
        self,
        store: ArchiveStore,
        key: str,
        start: date,
        end: date,
        required: tuple[str, ...],
        options: InputOptions,
    ) -> None:
        fields = [name for name in ARCHIVED[key].model.model_fields if name != "v"]
        table = read_archive(store, key, start, end, columns=fields)
        self._archived = pl.from_arrow(table)
        where = Path(f"{store.root.rstrip('/')}/topic={key}")
        super().__init__(where, required, options)

    def _load(self, path: Path) -> pl.DataFrame:  # type: ignore[override]
        frame = self._archived
        assert isinstance(frame, pl.DataFrame)
        return frame
