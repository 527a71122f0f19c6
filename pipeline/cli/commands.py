"""What each CLI verb does; ``pipeline.cli.main`` only parses arguments and prints errors."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from connectors import dependencies
from connectors.files import count_rows, read_rows
from connectors.kafka import PartitionReader, SourceRecord, list_partitions
from connectors.topics import TopicSpec, create_topics
from pipeline.config import Settings
from pipeline.messages import (
    Feedback,
    OptionsFlow,
    Position,
    Profile,
    Rule,
    Tick,
    describe_validation_error,
    message_key,
)
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.migrations import migrate

Echo = Callable[[str], None]

# Input topics by their configuration name, with the model each carries.
INPUT_MODELS: dict[str, type[BaseModel]] = {
    "ticks": Tick,
    "options_flow": OptionsFlow,
    "rules": Rule,
    "positions": Position,
    "feedback": Feedback,
    "profiles": Profile,
}


class CommandError(RuntimeError):
    """A verb cannot go on; the message tells the operator what to fix."""


def echo_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- failures

EXIT_INPUT = 2  # usage, configuration or input file: fix it and run again
EXIT_UNAVAILABLE = 3  # a server did not answer: a restart later may succeed
MAX_LINE = 600

CONFIG_HINT = "docs/operations.md (Configuration) lists every key with its default"
FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@dataclass(frozen=True)
class Failure:
    """What the CLI prints (one or two lines) and the exit status, for an expected failure."""

    code: int
    cause: str
    fix: str | None = None
    # A rule text's error is followed by the text with a caret under the fault: kept as it is.
    caret: bool = False

    def lines(self) -> list[str]:
        cause = self.cause if self.caret else _one_line(self.cause)
        lines = [f"smart-alerts: error: {cause}"]
        if self.fix:
            lines.append(f"smart-alerts: {_one_line(self.fix)}")
        return lines


def explain_failure(exc: BaseException) -> Failure | None:
    """The expected failure in ``exc``'s chain of causes (Bytewax wraps an operator's exception
    in its own), as a Failure; None for anything else, which is a bug to show in full."""
    import psycopg
    import redis

    from connectors.dependencies import DependencyRefused, DependencyUnavailable
    from connectors.files import FileFormatError
    from connectors.kafka import KafkaReadError, LostOffsetsError, MissingTopicError
    from connectors.topics import TopicAdminError
    from pipeline.config import ConfigError
    from pipeline.rules.templates import TemplateError
    from pipeline.rules.text import RuleTextError
    from sinks.files import UnsupportedOutput
    from sinks.kafka import KafkaDeliveryError
    from sinks.postgres import DatabaseUnavailableError
    from sinks.redis_store import RedisUnavailableError

    for cause in _chain(exc):
        if isinstance(cause, ConfigError):
            return Failure(EXIT_INPUT, str(cause), CONFIG_HINT)
        if isinstance(cause, MissingTopicError):
            return Failure(
                EXIT_UNAVAILABLE, str(cause), "create the topics: smart-alerts topics create"
            )
        if isinstance(cause, LostOffsetsError):  # its message says what to choose
            return Failure(EXIT_UNAVAILABLE, str(cause))
        if isinstance(cause, RuleTextError):
            return Failure(EXIT_INPUT, str(cause), caret=True)
        if isinstance(
            cause,
            (
                CommandError,
                FileFormatError,
                TemplateError,
                UnsupportedOutput,
                DependencyRefused,
            ),
        ):
            return Failure(EXIT_INPUT, str(cause))
        if isinstance(cause, FILE_ERRORS) and cause.filename is not None:
            return Failure(EXIT_INPUT, f"{cause.filename}: {cause.strerror or cause}")
        if isinstance(cause, DependencyUnavailable):
            return Failure(EXIT_UNAVAILABLE, str(cause))
        if isinstance(cause, (KafkaReadError, KafkaDeliveryError, TopicAdminError)):
            return Failure(
                EXIT_UNAVAILABLE,
                str(cause),
                "check KAFKA_BOOTSTRAP_SERVERS and that the broker is running",
            )
        if isinstance(cause, (DatabaseUnavailableError, psycopg.OperationalError)):
            return Failure(
                EXIT_UNAVAILABLE,
                f"PostgreSQL: {cause}" if isinstance(cause, psycopg.Error) else str(cause),
                "check DATABASE_URL and that PostgreSQL is running",
            )
        if isinstance(cause, (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError)):
            return Failure(
                EXIT_UNAVAILABLE,
                f"Redis: {cause}" if isinstance(cause, redis.RedisError) else str(cause),
                "check REDIS_URL and that Redis is running",
            )
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


# ---------------------------------------------------------------- start-up checks

SERVERS = ("kafka", "postgres", "redis")


def wait_for_servers(settings: Settings, *names: str) -> None:
    """Wait for the named servers (``SERVERS``) as ``[dependencies] startup_wait_seconds``
    allows, in the order given; DependencyUnavailable when one never answers."""
    bootstrap, database_url, redis_url = settings.require_servers()
    made = {
        "kafka": lambda: dependencies.kafka(bootstrap),
        "postgres": lambda: dependencies.postgres(database_url),
        "redis": lambda: dependencies.redis_server(redis_url),
    }
    dependencies.wait_for_dependencies([made[name]() for name in names], settings.dependencies)


def check_recovery_directory(settings: Settings) -> None:
    """A recovery directory the job cannot create or write fails here, naming it, rather than
    at the first snapshot inside the dataflow."""
    directory = settings.recovery.directory
    if directory is None:
        return
    probe = directory / f".smart-alerts-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
        for part in directory.glob("part-*.sqlite3"):
            if not os.access(part, os.R_OK | os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(part))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename not in (None, str(directory)) else ""
        raise CommandError(
            f"recovery directory {directory} is not usable: {exc.strerror or exc}{where}; "
            f"make it a directory writable by uid {os.getuid()}, or change [recovery] directory"
        ) from exc


# ---------------------------------------------------------------- topics, schema


def _hours_ms(hours: float | None) -> int | None:
    return None if hours is None else round(hours * 3_600_000)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The nine topics with the partitions, replicas and retention of ``[partitions]``."""
    t, p = settings.topics, settings.partitions

    def kept(name: str, partitions: int, hours: float | None) -> TopicSpec:
        return TopicSpec(
            name, partitions, replication=p.replication_factor, retention_ms=_hours_ms(hours)
        )

    def compacted(name: str) -> TopicSpec:
        return TopicSpec(
            name,
            p.reference,
            compacted=True,
            replication=p.replication_factor,
            tombstone_retention_ms=_hours_ms(p.reference_tombstone_hours),
        )

    return [
        kept(t.ticks, p.market, p.market_retention_hours),
        kept(t.options_flow, p.market, p.market_retention_hours),
        compacted(t.rules),
        compacted(t.positions),
        compacted(t.profiles),
        kept(t.feedback, p.feedback, p.feedback_retention_hours),
        kept(t.triggered, p.outputs, p.outputs_retention_hours),
        kept(t.notifications, p.outputs, p.outputs_retention_hours),
        kept(t.dlq, p.outputs, p.outputs_retention_hours),
    ]


def topics_create(settings: Settings, echo: Echo = print) -> list[str]:
    bootstrap = settings.require_servers()[0]
    wait_for_servers(settings, "kafka")
    specs = topic_specs(settings)
    created = create_topics(bootstrap, specs)
    for spec in specs:
        state = "created" if spec.name in created else "exists (left as it is)"
        config = " ".join(f"{key}={value}" for key, value in spec.config().items())
        echo(
            f"{spec.name:<24} {spec.partitions:>3} partitions x{spec.replication}  "
            f"{config or 'broker defaults'}  {state}"
        )
    return created


def run_migrations(settings: Settings, echo: Echo = print) -> list[str]:
    wait_for_servers(settings, "postgres")
    applied = migrate(settings.require_servers()[1], log=echo)
    echo(f"{len(applied)} migration(s) applied" if applied else "schema is up to date")
    return applied


# ---------------------------------------------------------------- producing


def topic_of(settings: Settings, name: str) -> tuple[str, type[BaseModel]]:
    """A configured input topic by its configuration name or its topic name."""
    for config_name, model in INPUT_MODELS.items():
        topic = getattr(settings.topics, config_name)
        if name in (config_name, topic):
            return topic, model
    known = ", ".join(f"{n} ({getattr(settings.topics, n)})" for n in INPUT_MODELS)
    raise CommandError(f"unknown input topic {name!r}; use one of: {known}")


def load_messages(path: Path, model: type[BaseModel]) -> Iterable[BaseModel]:
    """Validate each row of a file as ``model``; the first bad row stops with its row number."""
    for number, row in enumerate(read_rows(path), start=1):
        row.setdefault("v", 1)
        try:
            yield model.model_validate(row)
        except ValidationError as exc:
            raise CommandError(
                f"{path}: row {number} is not a valid {model.__name__}: "
                f"{describe_validation_error(exc)}"
            ) from exc


def publish(
    producer: CheckedProducer,
    topic: str,
    messages: Iterable[BaseModel],
    *,
    total: int | None = None,
    echo: Echo = echo_stderr,
    chunk: int = 5000,
) -> int:
    """Produce messages keyed per the topic contract; progress every chunk; returns the count."""
    sent, started, batch = 0, time.monotonic(), []
    for message in messages:
        batch.append(
            OutgoingRecord(topic, message_key(message).encode(), message.model_dump_json().encode())
        )
        if len(batch) >= chunk:
            producer.write_batch(batch)
            sent += len(batch)
            batch = []
            of = f"/{total}" if total else ""
            echo(f"  {topic}: {sent}{of} messages ({sent / (time.monotonic() - started):,.0f}/s)")
    if batch:
        producer.write_batch(batch)
        sent += len(batch)
    return sent


def replay(settings: Settings, path: Path, topic_name: str, echo: Echo = print) -> int:
    topic, model = topic_of(settings, topic_name)
    total = count_rows(path)  # also a missing or unreadable file, before waiting for the broker
    wait_for_servers(settings, "kafka")
    producer = CheckedProducer(settings.require_servers()[0])
    try:
        sent = publish(producer, topic, load_messages(path, model), total=total)
    finally:
        producer.close()
    echo(f"replayed {sent} messages from {path} to {topic}")
    return sent


# ---------------------------------------------------------------- rule text, templates


def rule_json(rule: Rule) -> str:
    return json.dumps(rule.model_dump(mode="json", exclude_none=True), indent=2)


def rules_parse(
    text: str, *, user_id: str | None = None, rule_id: str | None = None, echo: Echo = print
) -> Rule:
    """Print the rule JSON of rule text or, when the text does not parse, of a plain-English
    sentence; for a sentence, stderr says the rule text it was read as and the unused words."""
    from pipeline.rules.english import EnglishRuleError, understand

    try:
        understood = understand(text, user_id=user_id, rule_id=rule_id)
    except EnglishRuleError as exc:
        raise CommandError(str(exc)) from None
    rule = understood.rule
    if understood.canonical is not None:
        echo_stderr(f"understood: {understood.canonical}")
        if understood.unused:
            echo_stderr(f"words not used: {' '.join(understood.unused)}")
    echo(rule_json(rule))
    return rule


def templates_list(name: str | None = None, echo: Echo = print) -> None:
    from pipeline.rules.templates import get_template, list_templates, render_table, render_template

    echo(render_template(get_template(name)) if name else render_table(list_templates()))


def produce_raw(settings: Settings, path: Path) -> int:
    """Lines of ``{"topic": <config name>, "key": ..., "value": <raw text>}``, sent as they are."""
    producer = CheckedProducer(settings.require_servers()[0])
    records = []
    for row in read_rows(path):
        topic, _ = topic_of(settings, row["topic"])
        key = row.get("key")
        value = row.get("value")
        records.append(
            OutgoingRecord(
                topic,
                key.encode() if key is not None else None,
                value.encode() if isinstance(value, str) else json.dumps(value).encode(),
            )
        )
    try:
        producer.write_batch(records)
    finally:
        producer.close()
    return len(records)


# ---------------------------------------------------------------- reading back


def read_topic(bootstrap: str, topic: str) -> list[SourceRecord]:
    """Every record currently in a topic (for summaries and tests; not for the job)."""
    records: list[SourceRecord] = []
    for name, partition in list_partitions(bootstrap, [topic]):
        reader = PartitionReader(bootstrap, name, partition, None)
        try:
            while True:
                batch = reader.next_batch()
                records.extend(batch)
                if reader.at_end and not batch:
                    break
        finally:
            reader.close()
    return records


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, what: str, count: Any, where: str) -> None:
        self.rows.append((what, str(count), where))

    def render(self) -> str:
        head = ("what", "count", "where")
        width = [max(len(r[i]) for r in [*self.rows, head]) for i in range(3)]
        line = "+-" + "-+-".join("-" * w for w in width) + "-+"

        def fmt(r: tuple[str, str, str]) -> str:
            return f"| {r[0]:<{width[0]}} | {r[1]:>{width[1]}} | {r[2]:<{width[2]}} |"

        return "\n".join([line, fmt(head), line, *map(fmt, self.rows), line])
