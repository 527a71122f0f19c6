"""``smart-alerts archive``: the streams to Parquet, beside the job (connectors/archive.py).

Runs until SIGTERM or SIGINT, then writes what it holds, commits and exits 0; with
``--bounded`` it stops by itself once every partition is read to its current end.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from connectors.archive import (
    ArchiveError,
    Archiver,
    ArchiveStorageError,
    ArchiveStore,
    TopicStats,
    lost_offsets_message,
)
from connectors.dependencies import DependencyUnavailable
from connectors.kafka import LostOffsetsError
from pipeline.cli.commands import CommandError, Echo, Summary, echo_stderr
from pipeline.config import ConfigError, Settings


def archive_store(settings: Settings, root: str | None) -> ArchiveStore:
    """The archive named by ``root`` (a --root option) or ``[archive] root``."""
    chosen = root or settings.archive.root
    if not chosen:
        raise ConfigError(
            "no archive root: set [archive] root (SMART_ALERTS_ARCHIVE__ROOT) to a folder or "
            "s3://bucket/prefix, or pass --root"
        )
    try:
        return ArchiveStore(
            chosen,
            s3_endpoint=settings.archive.s3_endpoint,
            s3_region=settings.archive.s3_region,
        )
    except ArchiveError as exc:
        raise ConfigError(str(exc)) from exc


def archive_command(
    settings: Settings, *, root: str | None = None, bounded: bool = False, echo: Echo = print
) -> dict[str, TopicStats]:
    store = archive_store(settings, root)
    if not settings.kafka_bootstrap_servers:
        raise ConfigError("missing server configuration: KAFKA_BOOTSTRAP_SERVERS")
    wait_for_servers_kafka(settings)
    archiver = Archiver(
        settings.kafka_bootstrap_servers,
        settings.topics,
        settings.archive,
        store,
    )
    try:
        with store.exclusive(), _stop_on_signals(archiver.stop):
            stats = archiver.run(bounded=bounded)
    except LostOffsetsError as exc:
        raise CommandError(lost_offsets_message(exc)) from exc
    except ArchiveStorageError as exc:
        raise DependencyUnavailable(str(exc)) from exc
    except ArchiveError as exc:
        raise CommandError(str(exc)) from exc
    echo(summarize(stats, store).render())
    return stats


def wait_for_servers_kafka(settings: Settings) -> None:
    """The broker only: the archiver needs neither PostgreSQL nor Redis."""
    from connectors import dependencies

    assert settings.kafka_bootstrap_servers is not None
    dependencies.wait_for_dependencies(
        [dependencies.kafka(settings.kafka_bootstrap_servers)], settings.dependencies
    )


def summarize(stats: dict[str, TopicStats], store: ArchiveStore) -> Summary:
    summary = Summary()
    for key, topic in stats.items():
        where = store.topic_dir(key) if store.local else f"{store.root.rstrip('/')}/topic={key}"
        summary.add(f"{key}: rows archived", f"{topic.rows:,}", f"{topic.files:,} files in {where}")
        if topic.invalid:
            summary.add(f"{key}: not valid (see the dead letters)", f"{topic.invalid:,}", "")
        if topic.repaired:
            summary.add(f"{key}: files of an interrupted roll", topic.repaired, "written at start")
    return summary


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT end the run cleanly: the loop sees ``stop``, writes what it holds
    (every record read is a complete message) and commits."""

    def handle(signum: int, frame: FrameType | None) -> None:
        echo_stderr(f"archive: {signal.Signals(signum).name}: writing what is held, then stopping")
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
