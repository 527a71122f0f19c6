"""sinks/background.py: batches written in order on a thread, flush as a barrier, errors raised
on the caller's thread once."""

from __future__ import annotations

import threading
import time

import pytest

from sinks.background import BackgroundWriter


class Recorder:
    """A write that records its batches and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail_with: Exception | None = None

    def __call__(self, items: list[int]) -> None:
        self.started.set()
        self.release.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(list(items))


def test_items_are_written_in_order_and_waiting_batches_join() -> None:
    write = Recorder()
    write.release.clear()
    writer = BackgroundWriter(write, name="test")
    writer.submit([1])
    assert write.started.wait(5)  # the first batch is being written; the next ones wait
    writer.submit([2, 3])
    writer.submit([4])
    write.release.set()
    writer.flush()
    assert write.batches == [[1], [2, 3, 4]]
    writer.close()


def test_flush_returns_only_when_everything_submitted_is_written() -> None:
    write = Recorder()
    write.release.clear()
    writer = BackgroundWriter(write, name="test")
    writer.submit([1, 2])
    flushed = threading.Event()
    threading.Thread(target=lambda: (writer.flush(), flushed.set()), daemon=True).start()
    assert not flushed.wait(0.2)
    write.release.set()
    assert flushed.wait(5)
    assert write.batches == [[1, 2]]
    writer.close()


def test_close_writes_what_is_pending() -> None:
    write = Recorder()
    writer = BackgroundWriter(write, name="test")
    for item in range(100):
        writer.submit([item])
    writer.close()
    assert [item for batch in write.batches for item in batch] == list(range(100))


def test_submit_blocks_while_too_many_items_wait() -> None:
    write = Recorder()
    write.release.clear()
    writer = BackgroundWriter(write, name="test", max_pending=2)
    writer.submit([1])
    assert write.started.wait(5)
    writer.submit([2, 3])  # two waiting: the limit
    submitted = threading.Event()
    threading.Thread(target=lambda: (writer.submit([4]), submitted.set()), daemon=True).start()
    assert not submitted.wait(0.2)
    write.release.set()
    assert submitted.wait(5)
    writer.close()
    assert [item for batch in write.batches for item in batch] == [1, 2, 3, 4]


def test_a_failed_write_is_reported_and_raised_on_the_callers_thread_once() -> None:
    write = Recorder()
    write.fail_with = ConnectionError("database down")
    reported: list[BackgroundWriter[int]] = []
    writer = BackgroundWriter(write, name="test", on_error=reported.append)
    writer.submit([1])
    deadline = time.monotonic() + 5
    while not reported and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reported == [writer]
    with pytest.raises(ConnectionError, match="database down"):
        writer.submit([2])
    with pytest.raises(ConnectionError):
        writer.flush()
    writer.close()  # raised before: a close while unwinding from it must not raise again


def test_close_raises_an_error_nobody_has_seen() -> None:
    write = Recorder()
    write.fail_with = ConnectionError("database down")
    writer = BackgroundWriter(write, name="test")
    writer.submit([1])
    with pytest.raises(ConnectionError):
        writer.close()


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        BackgroundWriter(Recorder(), name="test", max_pending=0)
