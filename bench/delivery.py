"""What the delivery outbox costs: signed webhooks to a local receiver, with and without it.

    python bench/delivery.py [--count 2000]

Starts an embedded PostgreSQL (or uses DATABASE_URL) and an HTTP receiver on 127.0.0.1 that
answers 200 at once, then measures, in one run:

- **send (a)**: ``WebhookSender.send`` alone, one after another: sign, POST, read the answer;
- **delivered (b)**: submit and drain through the delivery core: PENDING row, claim, send and
  DELIVERED row, with 1 and with 4 threads for the channel (``threads_per_channel``);
- **hand-over**: the submit loop alone: what the dataflow waits for (the PENDING rows of a
  batch of 100 in one transaction, and queue puts) while the channel thread sends beside it;
- the same against a receiver that takes 50 ms to answer, as real providers do.

Limits are raised out of the way (1,000 users, no rate limit reached); the receiver is a
Python ThreadingHTTPServer, so (a) is bounded by both ends being Python on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.embedded import EmbeddedStack  # noqa: E402
from pipeline.messages import Channel, Notification  # noqa: E402
from sinks.channels.base import Delivery  # noqa: E402
from sinks.channels.webhook import WebhookSender  # noqa: E402
from sinks.delivery import DeliveryCore  # noqa: E402
from sinks.migrations import migrate  # noqa: E402
from sinks.postgres import HistoryWriter  # noqa: E402

BATCH = 100  # notifications per sink batch, as the dataflow hands them over
SLOW_PROVIDER_MS = 50  # a provider's usual answer time is 50-500 ms
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _, _, query = self.path.partition("?ms=")
        if query:
            time.sleep(int(query) / 1000)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@contextmanager
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def database() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with (
        tempfile.TemporaryDirectory() as state,
        EmbeddedStack(Path(state), kafka=False, redis=False) as stack,
    ):
        yield stack.database_url


def notifications(count: int) -> list[Notification]:
    now = datetime.now(UTC)
    return [
        Notification(
            notification_id=str(uuid.uuid4()),
            user_id=f"u-{index % 1000}",
            alert_ids=[str(uuid.uuid4())],
            title="NVDA: breakout",
            message="price 181.20 crossed above 181.00",
            highest_priority="HIGH",
            channels=["webhook"],
            window_start=now,
            window_end=now,
        )
        for index in range(count)
    ]


def sender() -> WebhookSender:
    return WebhookSender(
        secret_resolver=lambda _ref: SECRET, allow_private_networks={"127.0.0.0/8"}
    )


def core(history: HistoryWriter, threads: int) -> DeliveryCore:
    return DeliveryCore(
        history,
        {Channel.WEBHOOK: sender()},
        queue_size=1_000_000,
        per_user_per_minute=1_000_000,
        per_channel_per_second=1_000_000,
        threads_per_channel=threads,
    )


def send_alone(hook: str, count: int) -> float:
    plain = sender()
    started = time.perf_counter()
    for index, note in enumerate(notifications(count)):
        plain.send(Delivery(note, Channel.WEBHOOK, hook, 1, f"k-{index}", "REF"))
    rate = count / (time.perf_counter() - started)
    plain.close()
    return rate


def through_core(
    history: HistoryWriter, hook: str, count: int, threads: int
) -> tuple[float, float]:
    """(hand-over rate, delivered rate) of ``count`` deliveries through a delivery core."""
    notes = notifications(count)
    history.write_notifications(notes)
    delivery = core(history, threads)
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        batch = notes[first : first + BATCH]
        delivery.submit_many([(note, Channel.WEBHOOK, hook, "REF") for note in batch])
    handover = count / (time.perf_counter() - started)
    if not delivery.drain(600):
        raise SystemExit("deliveries did not finish within 10 minutes")
    delivered = count / (time.perf_counter() - started)
    delivery.close()
    return handover, delivered


def measure(count: int, slow_count: int) -> list[tuple[str, float, float]]:
    """(stage, per second, versus its baseline) rows."""
    with database() as url, receiver() as hook:
        migrate(url, log=lambda _line: None)
        history = HistoryWriter(url)
        send_rate = send_alone(hook, count)
        handover, one = through_core(history, hook, count, threads=1)
        _, four = through_core(history, hook, count, threads=4)
        slow_hook = f"{hook}?ms={SLOW_PROVIDER_MS}"
        slow_send = send_alone(slow_hook, slow_count)
        _, slow_one = through_core(history, slow_hook, slow_count, threads=1)
        _, slow_four = through_core(history, slow_hook, slow_count, threads=4)
        history.close()
    fast = f"receiver answers at once, {count:,} deliveries"
    slow = f"receiver takes {SLOW_PROVIDER_MS} ms, {slow_count:,} deliveries"
    return [
        (f"{fast}: send (a), WebhookSender alone", send_rate, 1.0),
        ("  delivered (b), core, 1 thread", one, one / send_rate),
        ("  delivered (b), core, 4 threads", four, four / send_rate),
        ("  hand-over: submit_many, batches of 100", handover, handover / send_rate),
        (f"{slow}: send (a)", slow_send, 1.0),
        ("  delivered (b), core, 1 thread", slow_one, slow_one / slow_send),
        ("  delivered (b), core, 4 threads", slow_four, slow_four / slow_send),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--slow-count", type=int, default=400)
    args = parser.parse_args()
    rows = measure(args.count, args.slow_count)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'stage':<{width}} | {'per s':>8} | {'ms each':>7} | vs (a)")
    print("-" * (width + 30))
    for name, rate, ratio in rows:
        print(f"{name:<{width}} | {rate:>8,.0f} | {1000 / rate:>7.2f} | {ratio:>5.0%}")


if __name__ == "__main__":
    main()
