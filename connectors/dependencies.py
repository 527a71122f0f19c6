"""Waiting at start-up for the broker, PostgreSQL and Redis to answer.

In a deployment the job, ``migrate`` and ``topics create`` often start before the servers they
need (a compose file brought up at once, a node rebooting). Each dependency is probed (broker
metadata, a PostgreSQL connection, a Redis PING) and retried with exponential backoff for
``[dependencies] startup_wait_seconds``, with one progress line per failed attempt, before the
verb gives up with ``DependencyUnavailable`` (exit 3). A refused login is not waited for: it is
``DependencyRefused`` (exit 2), since no amount of waiting fixes a wrong password.
Outages after the start are the writers' business (sinks/postgres.py, sinks/redis_store.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict

from connectors.kafka import describe_kafka_error
from pipeline.config import Dependencies

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 10.0
# PostgreSQL's answers to a wrong DATABASE_URL: no database, role or password that way.
REFUSALS = (
    "does not exist",
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied",
)


class DependencyUnavailable(RuntimeError):
    """A server did not answer within the start-up wait; the message names it and the fix."""


class DependencyRefused(RuntimeError):
    """A server answered but refused us (login, database name): a configuration error."""


class _Retry(Exception):
    """One failed probe that waiting may cure; ``str()`` is the reason in a few words."""


@dataclass(frozen=True)
class Dependency:
    name: str  # as operators call it: "the Kafka broker", "PostgreSQL", "Redis"
    address: str  # host:port, never a password
    setting: str  # the variable that points at it
    probe: Callable[[float], None]  # raises _Retry or DependencyRefused; argument: timeout (s)


def kafka(bootstrap: str) -> Dependency:
    def probe(timeout: float) -> None:
        # log_level 0: librdkafka would print its own "Connect ... failed" lines to stderr on
        # every attempt; the progress line below says it once, readably.
        admin = AdminClient(
            {"bootstrap.servers": bootstrap, "client.id": "smart-alerts-startup", "log_level": 0}
        )
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise _Retry(describe_kafka_error(exc)) from exc
        if not metadata.brokers:
            raise _Retry("no broker in the cluster metadata")

    return Dependency("the Kafka broker", bootstrap, "KAFKA_BOOTSTRAP_SERVERS", probe)


def postgres(database_url: str) -> Dependency:
    def probe(timeout: float) -> None:
        try:
            # libpq counts whole seconds, at least 2.
            conn = psycopg.connect(database_url, connect_timeout=max(2, math.ceil(timeout)))
        except psycopg.OperationalError as exc:
            # libpq gives no SQLSTATE for a refused connection, only the server's text; a
            # server starting up or full ("too many clients") is worth waiting for, these not.
            if any(refusal in str(exc) for refusal in REFUSALS):
                raise DependencyRefused(
                    f"PostgreSQL at {address} refused the connection: {_first_line(exc)}; "
                    "check the user, password and database name in DATABASE_URL"
                ) from exc
            raise _Retry(_libpq_cause(exc)) from exc
        conn.close()

    params = conninfo_to_dict(database_url)
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "localhost")
    address = f"{host}:{params.get('port') or os.environ.get('PGPORT', '5432')}"
    return Dependency("PostgreSQL", address, "DATABASE_URL", probe)


def redis_server(redis_url: str) -> Dependency:
    def probe(timeout: float) -> None:
        client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise DependencyRefused(
                f"Redis at {address} refused the connection: {_first_line(exc)}; "
                "check the user and password in REDIS_URL"
            ) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise DependencyRefused(
                    f"Redis at {address} wants a password: {_first_line(exc)}; "
                    "put it in REDIS_URL (redis://:PASSWORD@host:port/db)"
                ) from exc
            raise _Retry(_first_line(exc)) from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise _Retry(_redis_cause(exc)) from exc
        finally:
            client.close()

    parts = urlsplit(redis_url)
    address = (
        parts.path
        if parts.scheme == "unix"
        else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    )
    return Dependency("Redis", address, "REDIS_URL", probe)


def wait_for_dependencies(
    dependencies: Iterable[Dependency],
    settings: Dependencies,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe each dependency in turn until it answers, sharing one budget of
    ``settings.startup_wait_seconds`` (0: one attempt each); raise DependencyUnavailable naming
    the first that did not answer in time."""
    deadline = clock() + settings.startup_wait_seconds
    for dependency in dependencies:
        _wait_for(dependency, settings, deadline, sleep, clock)


def _wait_for(
    dependency: Dependency,
    settings: Dependencies,
    deadline: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    attempt, delay = 0, BACKOFF_FIRST_S
    while True:
        attempt += 1
        timeout = max(1.0, min(settings.connect_timeout_seconds, deadline - clock()))
        try:
            dependency.probe(timeout)
        except _Retry as exc:
            remaining = deadline - clock()
            if remaining <= 0:
                waited = (
                    f" after {attempt} attempts in {settings.startup_wait_seconds:g} s"
                    if attempt > 1
                    else ""
                )
                raise DependencyUnavailable(
                    f"{dependency.name} at {dependency.address} is unreachable{waited} ({exc}); "
                    f"check {dependency.setting} and that the server is running and reachable "
                    "from here ([dependencies] startup_wait_seconds sets how long to wait)"
                ) from exc
            pause = min(delay, remaining)
            log.warning(
                "waiting for %s at %s (attempt %d, next in %s s): %s",
                dependency.name,
                dependency.address,
                attempt,
                f"{pause:.0f}" if pause >= 1 else f"{pause:.1f}",
                exc,
            )
            sleep(pause)
            delay = min(delay * 2, BACKOFF_CAP_S)
            continue
        if attempt > 1:
            log.info("%s at %s answers", dependency.name, dependency.address)
        return


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def _libpq_cause(exc: psycopg.OperationalError) -> str:
    """libpq's 'connection to server at "h", port p failed: Connection refused' without the
    address (the message names it) and without its hint lines."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "connect timeout"
    return _first_line(exc).rsplit("failed: ", 1)[-1]


def _redis_cause(exc: BaseException) -> str:
    text = _first_line(exc)
    # redis-py: "Error 111 connecting to 127.0.0.1:1. Connection refused."
    if text.startswith("Error ") and "connecting to" in text:
        text = text.split(". ", 1)[-1]
    return text.rstrip(".")
