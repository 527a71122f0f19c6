"""The delivery core against the real PostgreSQL outbox, with senders that script the provider."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import REGISTRY

from pipeline.messages import Channel, Notification
from sinks.channels.base import Delivery, PermanentError, SendResult, TransientError
from sinks.delivery import DeliveryCore, RetryPolicy
from sinks.postgres import HistoryWriter

pytestmark = pytest.mark.integration


class ScriptedSender:
    """Answers each send with the next scripted outcome: "ok", a PermanentError or a
    TransientError (``("retry", seconds)``); records every delivery it saw."""

    provider = "scripted"

    def __init__(self, channel: Channel, script: list[object]) -> None:
        self.channel = channel
        self.script = list(script)
        self.calls: list[tuple[Delivery, float]] = []
        self.lock = threading.Lock()

    def send(self, delivery: Delivery) -> SendResult:
        with self.lock:
            self.calls.append((delivery, time.time()))
            outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "ok":
            return SendResult(f"msg-{len(self.calls)}")
        if isinstance(outcome, tuple):
            raise TransientError("HTTP 503", retry_after=outcome[1])
        raise PermanentError(str(outcome), disable_destination=True)

    def close(self) -> None:
        pass


def notification(user: str = "u-1") -> Notification:
    now = datetime.now(UTC)
    return Notification(
        notification_id=str(uuid.uuid4()),
        user_id=user,
        alert_ids=[str(uuid.uuid4())],
        title="AAPL: breakout",
        message="price 201.00 crossed above 200.00",
        highest_priority="HIGH",
        channels=["push"],
        window_start=now,
        window_end=now,
    )


def row(database_url: str, note: Notification) -> tuple[str, int, str | None]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT d.status, d.attempts, d.error_message FROM delivery_logs d "
            "JOIN consolidated_alerts c ON c.id = d.notification_id WHERE c.external_id = %s",
            (note.notification_id,),
        ).fetchone()
    assert found is not None
    return found[0], found[1], found[2]


@pytest.fixture
def history(database_url: str) -> HistoryWriter:
    writer = HistoryWriter(database_url)
    yield writer
    writer.close()


def core(history: HistoryWriter, sender: ScriptedSender, **kwargs: object) -> DeliveryCore:
    return DeliveryCore(history, {sender.channel: sender}, seed=1, **kwargs)  # type: ignore[arg-type]


def test_delivered_once_even_when_submitted_again(
    history: HistoryWriter, database_url: str
) -> None:
    sender = ScriptedSender(Channel.PUSH, ["ok"])
    delivery = core(history, sender)
    note = notification()
    history.write_notifications([note])
    assert delivery.submit(note, Channel.PUSH, "token-1")
    assert delivery.drain(10)
    assert delivery.submit(note, Channel.PUSH, "token-1") is False  # replayed: already DELIVERED
    assert delivery.drain(10)
    delivery.close()
    assert len(sender.calls) == 1
    assert row(database_url, note)[:2] == ("DELIVERED", 1)
    ((sent, _),) = sender.calls
    assert sent.idempotency_key == f"{note.notification_id}:push:token-1" and sent.attempt == 1


def test_transient_errors_retry_with_backoff_honouring_retry_after(
    history: HistoryWriter, database_url: str
) -> None:
    before = {outcome: attempts_counted("push", outcome) for outcome in ("retry", "delivered")}
    sender = ScriptedSender(Channel.PUSH, [("retry", 0.3), ("retry", None), "ok"])
    policy = RetryPolicy(base=0.05, cap=0.1, deadline=30)
    delivery = core(history, sender, policies={Channel.PUSH: policy})
    note = notification()
    history.write_notifications([note])
    delivery.submit(note, Channel.PUSH, "token-1")
    deadline = time.time() + 10
    while len(sender.calls) < 3 and time.time() < deadline:
        time.sleep(0.02)
    delivery.drain(10)
    delivery.close()
    times = [at for _, at in sender.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.3  # Retry-After wins over the shorter backoff
    assert [d.attempt for d, _ in sender.calls] == [1, 2, 3]
    assert row(database_url, note)[:2] == ("DELIVERED", 3)
    assert attempts_counted("push", "retry") - before["retry"] == 2
    assert attempts_counted("push", "delivered") - before["delivered"] == 1


def attempts_counted(channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "smart_alerts_delivery_attempts_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


def test_permanent_errors_fail_at_once(history: HistoryWriter, database_url: str) -> None:
    sender = ScriptedSender(Channel.SMS, ["21211: invalid 'To' number"])
    delivery = core(history, sender)
    note = notification()
    history.write_notifications([note])
    delivery.submit(note, Channel.SMS, "+15550000000")
    delivery.drain(10)
    time.sleep(0.2)
    delivery.close()
    assert len(sender.calls) == 1
    status, attempts, error = row(database_url, note)
    assert (status, attempts) == ("FAILED", 1) and "21211" in (error or "")


def test_the_channel_deadline_ends_retries(history: HistoryWriter, database_url: str) -> None:
    sender = ScriptedSender(Channel.WEBHOOK, [("retry", None)] * 100)
    delivery = core(
        history, sender, policies={Channel.WEBHOOK: RetryPolicy(base=0.05, cap=0.05, deadline=0.5)}
    )
    note = notification()
    history.write_notifications([note])
    delivery.submit(note, Channel.WEBHOOK, "https://hooks.example/1")
    time.sleep(1.2)
    delivery.close()
    status, _, error = row(database_url, note)
    assert status == "FAILED" and "deadline exceeded" in (error or "")
    assert 2 <= len(sender.calls) < 20


def test_circuit_breaker_stops_calling_a_dead_provider(history: HistoryWriter) -> None:
    sender = ScriptedSender(Channel.PUSH, [("retry", None)] * 100)
    threads = 2
    delivery = core(
        history,
        sender,
        policies={Channel.PUSH: RetryPolicy(base=0.01, cap=0.01, deadline=30)},
        threads_per_channel=threads,
    )
    notes = [notification() for _ in range(10)]
    history.write_notifications(notes)
    for note in notes:
        delivery.submit(note, Channel.PUSH, "token")
    time.sleep(1.0)
    calls = len(sender.calls)
    time.sleep(0.5)
    after = len(sender.calls)
    delivery.close()
    # Five failures open the circuit; calls already under way (one per other thread) finish.
    assert 5 <= calls <= 5 + threads - 1
    assert after == calls  # open for 30 s: no call at all meanwhile


def test_a_full_queue_leaves_rows_pending_for_resume(
    history: HistoryWriter, database_url: str
) -> None:
    gate = threading.Event()

    class Slow(ScriptedSender):
        def send(self, delivery: Delivery) -> SendResult:
            gate.wait(5)
            return super().send(delivery)

    sender = Slow(Channel.EMAIL, [])
    delivery = core(history, sender, queue_size=1)
    notes = [notification() for _ in range(4)]
    history.write_notifications(notes)
    for note in notes:
        delivery.submit(note, Channel.EMAIL, "a@example.com")  # never blocks
    gate.set()
    delivery.drain(10)
    waiting = [n for n in notes if row(database_url, n)[0] == "PENDING"]
    assert waiting  # the queue could not take them: they stayed in the outbox
    for _ in range(10):  # the periodic resume scan
        if all(row(database_url, n)[0] == "DELIVERED" for n in notes):
            break
        assert delivery.resume() <= 1  # a scan loads no more than the queue can take
        delivery.drain(10)
    time.sleep(0.2)
    delivery.close()
    assert sorted(row(database_url, n)[0] for n in notes) == ["DELIVERED"] * 4
    assert len({d.notification.notification_id for d, _ in sender.calls}) == 4


CHILD = """
import os, sys
from sinks.postgres import HistoryWriter
writer = HistoryWriter(sys.argv[1])
writer.record_delivery(sys.argv[2], "u-1", "push", "token-1")  # PENDING is committed
os._exit(9)  # killed before the send
"""


def test_killed_between_pending_and_send_delivers_exactly_once_after_restart(
    history: HistoryWriter, database_url: str
) -> None:
    note = notification()
    history.write_notifications([note])
    result = subprocess.run(
        [sys.executable, "-c", CHILD, database_url, note.notification_id],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert result.returncode == 9
    assert row(database_url, note)[0] == "PENDING"
    sender = ScriptedSender(Channel.PUSH, [])
    delivery = core(history, sender)
    assert delivery.resume() >= 1
    delivery.drain(10)
    delivery.resume()  # a second scan finds it DELIVERED: nothing more is sent
    delivery.drain(10)
    delivery.close()
    assert [d.notification.notification_id for d, _ in sender.calls].count(
        note.notification_id
    ) == 1
    assert row(database_url, note)[0] == "DELIVERED"


def test_a_dead_destination_is_not_tried_again(history: HistoryWriter, database_url: str) -> None:
    token = f"token-{uuid.uuid4().hex[:8]}"
    sender = ScriptedSender(Channel.PUSH, ["UNREGISTERED: token not registered"])
    delivery = core(history, sender)
    first, second = notification(), notification()
    history.write_notifications([first, second])
    delivery.submit(first, Channel.PUSH, token)
    delivery.drain(10)
    delivery.submit(second, Channel.PUSH, token)
    delivery.drain(10)
    delivery.close()
    assert [d.notification.notification_id for d, _ in sender.calls] == [first.notification_id]
    assert row(database_url, first)[0] == "FAILED"
    status, _, error = row(database_url, second)
    assert status == "FAILED"
    assert error == "destination disabled: UNREGISTERED: token not registered"
    with psycopg.connect(database_url) as conn:
        reasons = conn.execute(
            "SELECT reason FROM disabled_destinations WHERE channel = 'push' AND destination = %s",
            (token,),
        ).fetchall()
    assert reasons == [("UNREGISTERED: token not registered",)]


def test_workers_scanning_one_outbox_send_each_delivery_once(
    history: HistoryWriter, database_url: str
) -> None:
    """Every worker's core resumes the whole outbox; the claim lets exactly one send a row."""

    class Slow(ScriptedSender):  # a provider call takes a while: the scans find open rows
        def send(self, delivery: Delivery) -> SendResult:
            time.sleep(0.02)
            return super().send(delivery)

    senders = [Slow(Channel.EMAIL, []) for _ in range(3)]
    writers = [HistoryWriter(database_url) for _ in senders]
    cores = [core(w, s) for w, s in zip(writers, senders, strict=True)]
    notes = [notification() for _ in range(30)]
    history.write_notifications(notes)
    for note in notes:
        cores[0].submit(note, Channel.EMAIL, "desk@example.com")
        cores[1].resume()
        cores[2].resume()
    for each in cores:
        each.drain(10)
        each.close()
    for writer in writers:
        writer.close()
    sent = Counter(d.notification.notification_id for s in senders for d, _ in s.calls)
    assert sent == Counter({note.notification_id: 1 for note in notes})
    assert sum(1 for s in senders if s.calls) >= 2  # the scans really competed
    assert {row(database_url, note)[:2] for note in notes} == {("DELIVERED", 1)}


def test_a_retry_is_not_taken_early_by_another_worker(
    history: HistoryWriter, database_url: str
) -> None:
    first = ScriptedSender(Channel.SMS, [("retry", 1.5)])
    other_writer = HistoryWriter(database_url)
    other = ScriptedSender(Channel.SMS, [])
    cores = [core(history, first), core(other_writer, other)]
    note = notification()
    history.write_notifications([note])
    cores[0].submit(note, Channel.SMS, f"+1555{uuid.uuid4().int % 10**7:07d}")
    deadline = time.time() + 5
    while row(database_url, note)[0] != "RETRYING" and time.time() < deadline:
        time.sleep(0.02)
    failed_at = first.calls[0][1]
    assert cores[1].resume() == 1
    for each in cores:
        each.drain(10)
        each.close()
    other_writer.close()
    retries = [at for s in (first, other) for _, at in s.calls][1:]
    assert len(retries) == 1 and retries[0] - failed_at >= 1.4  # Retry-After held (±1 s slack)
    assert row(database_url, note)[:2] == ("DELIVERED", 2)


ABANDON = """
import os, sys
from sinks.postgres import HistoryWriter
writer = HistoryWriter(sys.argv[1])
writer.record_delivery(sys.argv[2], "u-1", "webhook", sys.argv[3], "HOOK_SECRET_REF")
assert writer.claim_delivery(sys.argv[2], "webhook", sys.argv[3], 0.5).claimed
os._exit(9)  # killed during the provider call
"""


def test_a_lapsed_lease_reopens_a_delivery_abandoned_mid_call(
    history: HistoryWriter, database_url: str
) -> None:
    note = notification()
    url = f"https://hooks.example/{uuid.uuid4().hex}"
    history.write_notifications([note])
    result = subprocess.run(
        [sys.executable, "-c", ABANDON, database_url, note.notification_id, url],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert result.returncode == 9
    assert row(database_url, note)[0] == "SENDING"
    sender = ScriptedSender(Channel.WEBHOOK, [])
    delivery = core(history, sender)
    time.sleep(0.6)
    assert delivery.resume() == 1
    delivery.drain(10)
    delivery.close()
    ((sent, _),) = sender.calls
    assert sent.secret_ref == "HOOK_SECRET_REF"  # resumed with the ref that signs it
    assert row(database_url, note)[0] == "DELIVERED"


def test_a_channel_makes_provider_calls_concurrently(history: HistoryWriter) -> None:
    gate = threading.Barrier(3, timeout=10)

    class Meeting(ScriptedSender):  # each call waits until three are under way at once
        def send(self, delivery: Delivery) -> SendResult:
            gate.wait()
            return super().send(delivery)

    sender = Meeting(Channel.WEBHOOK, [])
    delivery = core(history, sender, threads_per_channel=3)
    notes = [notification(f"u-{i}") for i in range(6)]
    history.write_notifications(notes)
    delivery.submit_many([(n, Channel.WEBHOOK, "https://hooks.example/c", None) for n in notes])
    assert delivery.drain(15)
    delivery.close()
    assert len(sender.calls) == 6  # a barrier of 3 passed twice: three calls were in flight
