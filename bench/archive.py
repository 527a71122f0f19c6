"""The archiver's throughput against a plain consume of the same messages, in the same run.

    python bench/archive.py                         # 300,000 ticks on 3 partitions, 3 rounds
    python bench/archive.py --messages 1000000 --partitions 6 --rounds 2

Starts an embedded Kafka broker (or uses KAFKA_BOOTSTRAP_SERVERS), publishes ticks shaped like
the sample's (symbol, ts, price, size, bid, ask) to a topic of its own, then in each round,
alternating, reads them all back three ways:

- **consume**: the baseline, ``PartitionReader`` on every partition, round robin, records
  counted and dropped (what any consumer of the topic pays at least);
- **consume + parse**: the same, each record parsed as the job parses it
  (``pipeline.parsing.parse_record``: pydantic validation of a Tick);
- **archive**: ``smart-alerts archive --bounded``'s ``Archiver`` with the default
  ``[archive]`` settings into a fresh folder: parsing, Arrow batches, zstd Parquet, fsync and
  rename, and the commit of each roll.

Each line gives messages per second of wall time and per CPU second of this process (the
broker's is not counted); the round with the best wall time of each counts. On a shared machine
the CPU figures are what compares. The archive line also gives the files and the bytes on
disk per message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer  # noqa: E402

from connectors.archive import Archiver, ArchiveStore  # noqa: E402
from connectors.embedded import EmbeddedStack  # noqa: E402
from connectors.kafka import PartitionReader, list_partitions  # noqa: E402
from connectors.topics import TopicSpec, create_topics  # noqa: E402
from pipeline.config import Archive, Topics  # noqa: E402
from pipeline.parsing import parse_record  # noqa: E402

SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "SPY", "QQQ", "AMZN", "META", "GOOGL", "AMD"]


@contextmanager
def broker() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-archive-") as state,
        EmbeddedStack(Path(state), postgres=False, redis=False) as urls,
    ):
        yield urls.kafka_bootstrap


def publish(bootstrap: str, topic: str, count: int) -> int:
    """``count`` ticks, a tick every 10 ms per symbol from 2026-01-05 14:30 UTC; their bytes."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    rng = random.Random(15)
    prices = {s: 100.0 + 50 * i for i, s in enumerate(SYMBOLS)}
    start = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    size = 0
    for n in range(count):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        prices[symbol] *= 1 + rng.gauss(0, 0.0005)
        price = round(prices[symbol], 2)
        when = start + timedelta(milliseconds=10 * (n // len(SYMBOLS)))
        value = json.dumps(
            {
                "v": 1,
                "symbol": symbol,
                "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "price": price,
                "size": rng.choice((0, 100, 200, 500)),
                "bid": round(price - 0.01, 2),
                "ask": round(price + 0.01, 2),
            }
        ).encode()
        size += len(value)
        while True:
            try:
                producer.produce(topic, value, key=symbol.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise SystemExit("the broker did not take every message")
    return size


def read_all(bootstrap: str, topic: str, on_batch: Callable[[list], None]) -> int:  # type: ignore[type-arg]
    """Every record of ``topic``, read as the archiver reads (round robin, no wait)."""
    readers = [
        PartitionReader(bootstrap, topic, partition, 0, batch_size=5000, poll_timeout_s=0.0)
        for _, partition in list_partitions(bootstrap, [topic])
    ]
    count = 0
    try:
        while not all(reader.at_end for reader in readers):
            got = 0
            for reader in readers:
                batch = reader.next_batch()
                if batch:
                    on_batch(batch)
                    got += len(batch)
            count += got
            if not got:
                time.sleep(0.005)
    finally:
        for reader in readers:
            reader.close()
    return count


def timed(run: Callable[[], int]) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = run()
    return count, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with broker() as bootstrap:
        topics = Topics(**Topics.prefixed(f"bench{uuid.uuid4().hex[:6]}"))
        create_topics(bootstrap, [TopicSpec(topics.ticks, args.partitions)])
        started = time.perf_counter()
        raw = publish(bootstrap, topics.ticks, args.messages)
        print(
            f"published {args.messages:,} ticks ({raw / args.messages:.0f} bytes each) on "
            f"{args.partitions} partitions in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        best: dict[str, tuple[int, float, float]] = {}
        archived: dict[str, float] = {}

        def consume() -> int:
            return read_all(bootstrap, topics.ticks, lambda batch: None)

        def consume_and_parse() -> int:
            def parse(batch: list) -> None:  # type: ignore[type-arg]
                for record in batch:
                    parse_record(record, topics)

            return read_all(bootstrap, topics.ticks, parse)

        def archive() -> int:
            with tempfile.TemporaryDirectory(prefix="bench-archive-root-") as root:
                store = ArchiveStore(root)
                config = Archive(topics=["ticks"], group_id=f"bench-{uuid.uuid4().hex[:6]}")
                stats = Archiver(bootstrap, topics, config, store).run(bounded=True)["ticks"]
                files = list(Path(root).rglob("*.parquet"))
                archived["files"] = len(files)
                archived["bytes"] = sum(f.stat().st_size for f in files)
                return stats.read

        ways = {"consume": consume, "consume + parse": consume_and_parse, "archive": archive}
        for round_ in range(args.rounds):
            for name, way in ways.items():
                count, wall, cpu = timed(way)
                assert count == args.messages, f"{name} read {count:,} of {args.messages:,}"
                print(f"round {round_ + 1}: {name}: {count / wall:,.0f} msg/s", flush=True)
                if name not in best or wall < best[name][1]:
                    best[name] = (count, wall, cpu)

    baseline = args.messages / best["consume"][1]
    baseline_cpu = args.messages / best["consume"][2]
    print()
    print("| way | messages/s | vs consume | CPU s | messages per CPU s | vs consume |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (count, wall, cpu) in best.items():
        rate, per_cpu = count / wall, count / cpu
        print(
            f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x | {cpu:.2f} | {per_cpu:,.0f} | "
            f"{per_cpu / baseline_cpu:.2f}x |"
        )
    per_message = archived["bytes"] / args.messages
    print(
        f"\narchive: {archived['files']:.0f} files, {archived['bytes'] / 1e6:.1f} MB, "
        f"{per_message:.1f} bytes a message on disk ({raw / args.messages:.0f} as JSON)"
    )


if __name__ == "__main__":
    main()
