"""The live job end to end on the embedded stack: latency, sustained read rate, bounded throughput.

    python bench/live.py                  # the full run, about 10 minutes on 2 cores
    python bench/live.py --quick          # 1 process, 1,000 and 5,000 ticks/s for 8 s, 50,000
                                          # bounded ticks with 0 and 10,000 rules: ~2-3 minutes
    python bench/live.py --only live --rates 1000 5000 --processes 1 2 --duration 30

Starts the embedded stack (a Kafka-API broker, PostgreSQL, Redis; servers named by
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL are used instead where set), migrates, and
runs the job as the operator does: ``python -m pipeline.cli.main run [--bounded]
--metrics-port P``, configured through SMART_ALERTS_* variables, one process or N
(``engine.process_id`` / ``engine.addresses``). Every run has topics of its own (6 partitions
on the ticks topic) and its own rule and user ids.

**Live** (once per process count of ``--processes``, 1 and 2): 1,000 symbols,
``--live-rules`` rules (10,000): 40 *probe* rules on 20 probe symbols, ``price_crosses_above
100`` and ``price_crosses_below 100`` with no cooldown (CRITICAL on 10 symbols, HIGH on 10), and
the rest bench/evaluate.py's ``make_rule`` mix over the 1,000 symbols (price levels and
crosses, bar indicators, percent moves, IV/spread, flow scanners, nested trees). The users of
the CRITICAL probes have a profile sending CRITICAL to the in-app feed and a signed webhook to a
receiver in this process (delivery rate limits raised out of the way). A producer thread
(confluent-kafka, ``enable.idempotence=true``, ``max.in.flight.requests.per.connection=5``)
sends ticks with ``ts`` = now: a warm-up at the lowest rate, then each rate of ``--rates`` for
``--duration`` seconds, with a recovery phase at the lowest rate between steps (until the job's
lag is under half a second of ticks, at most 30 s; not measured). The warm-up lasts
``--warmup`` seconds and until the first consolidation window (60 s, aligned to the minute) has
closed (its first notification read, then 3 s) and the lag drained: the first tick of each
symbol makes the level rules that hold fire at once (about 1,600 alerts for 10,000 rules), and
closing the window that holds them stops the job for seconds; the minute boundaries after
that are part of what the steps measure.
``--probe-share`` (1 %) of the ticks go to the probe symbols in turn and alternate 99.5 /
100.5, so every probe tick after a symbol's first triggers exactly one probe rule; the other
ticks random-walk from prices of 20 to 500. For every probe tick the send time (wall clock
advanced by the monotonic clock) and the Kafka timestamp of the produced record (from its
delivery report) are kept; a consumer in this process reads ``alerts.triggered`` and
``alerts.notifications`` and matches each probe alert to its tick by (symbol, event time), the
notification and webhook by alert id.
Latencies, per rate step:

- **sent -> alert consumed**: end to end, including this process's consumer;
- **in job (Kafka ts)**: the tick record's Kafka timestamp to the alert record's (both set by
  librdkafka on this machine when produce() is called): the job's share;
- **sent -> CRITICAL notification**: the CRITICAL probe alert's notification consumed from
  ``alerts.notifications``; **sent -> CRITICAL webhook**: its signed webhook received.

Read rate: the job's ``smart_alerts_input_messages_total`` counter of the ticks topic, scraped
from each process's metrics endpoint every 0.25 s; lag = ticks sent minus ticks the job read,
at the end of each step and its maximum over the step ("bounded" when the lag at the end is
under one second of ticks). ``missing`` counts probe ticks whose alert (or notification,
webhook) had not arrived when the run ended (``--tail`` seconds after the last tick at most).

**Bounded** (``--rules``, 0 / 10,000 / 100,000): ``--bounded-ticks`` ticks (200,000, random
walk over 1,000 symbols, 20 ms of event time apart) are produced once; then (a) a plain
confluent-kafka consumer reads them all with ``json.loads`` on each value (the baseline), and
the job runs ``run --bounded`` over them with each rule count (make_rule's mix). From the
metrics, scraped every 0.1 s: **start-up** = process start until the job has read its first
tick (imports, connecting, reading the rules to their end); **steady** = ticks/s while the
ticks counter goes from 10 % to 90 %; **read all** = first tick to last tick read; **exit** =
the whole process, start to exit (draining the sinks included).

``--job-src DIR`` runs the job from another source tree (e.g. ``git archive HEAD | tar -x -C
DIR``) against this harness, for a before/after comparison in one sitting. Progress goes to
stderr, the tables to stdout; the job's logs are in a temporary folder, removed at exit (kept
and named when a job fails). The machine is noisy (2 shared cores): compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JOB_SRC = ROOT  # the source tree the job runs from (--job-src)

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

from connectors.embedded import StackUrls, free_ports, stack_from_env_or_embedded  # noqa: E402
from connectors.kafka import list_partitions  # noqa: E402
from pipeline.cli.commands import read_topic, topics_create  # noqa: E402
from pipeline.config import Settings, Topics, load_settings  # noqa: E402
from sinks.kafka import CheckedProducer, OutgoingRecord  # noqa: E402
from sinks.migrations import migrate  # noqa: E402


def _load_evaluate_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_evaluate", ROOT / "bench" / "evaluate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EVAL = _load_evaluate_bench()
SYMBOLS: list[str] = _EVAL.SYMBOLS  # 1,000 symbols, as bench/evaluate.py
make_rule: Callable[..., dict[str, Any]] = _EVAL.make_rule

PROBE_SYMBOLS = 20  # half of them CRITICAL; each gets a probe tick every 2 s at 1,000 ticks/s
PROBE_LEVEL = 100.0
PROBE_PRICES = (99.5, 100.5)
MARKET_PARTITIONS = 6
SECRET_REF = "VS9_BENCH_WEBHOOK_SECRET"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCRAPE_S = 0.25
RECOVER_MAX_S = 30.0
LATENESS_S = 5  # engine.allowed_lateness_seconds, the default
TICKS_METRIC = re.compile(r"^smart_alerts_input_messages_total\{([^}]*)\} (\S+)$", re.M)
ALERTS_METRIC = re.compile(r"^smart_alerts_alerts_triggered_total\{[^}]*\} (\S+)$", re.M)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why in one line."""


# ---------------------------------------------------------------- clock, progress, cleanup


class Clock:
    """Wall-clock seconds that advance with the monotonic clock (no NTP steps mid-run)."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def wall(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)

    def elapsed(self) -> float:
        return time.monotonic() - self._mono0


CLOCK = Clock()


def progress(text: str) -> None:
    print(f"[{CLOCK.elapsed():7.1f}s] {text}", file=sys.stderr, flush=True)


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn: the child gets SIGTERM when this process dies (Linux, main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


@dataclass
class Job:
    """The job's processes and their metrics ports."""

    procs: list[subprocess.Popen[bytes]]
    ports: list[int]
    log_paths: list[Path]
    started: float  # monotonic

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def check(self) -> None:
        for proc, path in zip(self.procs, self.log_paths, strict=True):
            code = proc.poll()
            if code is not None and code != 0:
                raise BenchError(f"job process exited with code {code}: {_last_line(path)}")

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return f"{lines[-1] if lines else '(empty log)'} (log: {path})"


JOBS: list[Job] = []


def stop_jobs() -> None:
    while JOBS:
        JOBS.pop().stop()


# ---------------------------------------------------------------- configuring and starting the job


def settings_for(urls: StackUrls, topics: dict[str, str], **sections: Any) -> Settings:
    settings = load_settings(
        None,
        kafka_bootstrap_servers=urls.kafka_bootstrap,
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        topics=topics,
        partitions={"market": MARKET_PARTITIONS},
        **sections,
    )
    topics_create(settings, echo=lambda _: None)
    return settings


def prefixed_topics(prefix: str, **fixed: str) -> dict[str, str]:
    names = Topics.prefixed(prefix)
    names.update(fixed)
    return names


def start_job(
    settings: Settings, workdir: Path, processes: int, *, bounded: bool, name: str
) -> Job:
    ports = free_ports(processes)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(processes)] if processes > 1 else None
    base = {**os.environ, "PYTHONPATH": str(JOB_SRC), SECRET_REF: SECRET}
    base.update(settings.as_environment())
    procs, logs = [], []
    started = time.monotonic()
    for index in range(processes):
        env = dict(base)
        if addresses:
            env["SMART_ALERTS_ENGINE__PROCESS_ID"] = str(index)
            env["SMART_ALERTS_ENGINE__ADDRESSES"] = json.dumps(addresses)
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "run",
            "--metrics-port",
            str(ports[index]),
        ]
        if bounded:
            cmd.insert(4, "--bounded")
        log_path = workdir / f"{name}-p{index}.log"
        with open(log_path, "wb") as log_file:
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=JOB_SRC,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_pdeathsig(),  # noqa: PLW1509
                )
            )
        logs.append(log_path)
    job = Job(procs, ports, logs, started)
    JOBS.append(job)
    return job


@dataclass(frozen=True)
class Scrape:
    ticks: float  # input messages of the ticks topic (ok + dead letters)
    rules: float
    alerts: float


def scrape(port: int, topics: Topics) -> Scrape | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    ticks = rules = 0.0
    for labels, value in TICKS_METRIC.findall(text):
        if f'topic="{topics.ticks}"' in labels:
            ticks += float(value)
        elif f'topic="{topics.rules}"' in labels:
            rules += float(value)
    alerts = sum(float(value) for value in ALERTS_METRIC.findall(text))
    return Scrape(ticks, rules, alerts)


# ---------------------------------------------------------------- data


def base_prices(rng: random.Random) -> dict[str, float]:
    return {symbol: round(rng.uniform(20, 500), 2) for symbol in SYMBOLS}


def mix_rules(count: int, tag: str, prices: dict[str, float]) -> list[dict[str, Any]]:
    """``count`` rules of bench/evaluate.py's mix over the 1,000 symbols, ids of this run."""
    rng = random.Random(1)
    rules = []
    for index in range(count):
        rule = make_rule(index, rng, prices)
        rule.update(v=1, id=f"r{tag}-{index}", user_id=f"u{tag}-{index % 50_000}")
        rules.append(rule)
    return rules


def publish(bootstrap: str, topic: str, key: str, items: list[dict[str, Any]]) -> None:
    producer = CheckedProducer(bootstrap)
    try:
        for first in range(0, len(items), 20_000):
            chunk = items[first : first + 20_000]
            producer.write_batch(
                [OutgoingRecord(topic, str(i[key]).encode(), json.dumps(i).encode()) for i in chunk]
            )
    finally:
        producer.close()


def tick_producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )


def produce(producer: Producer, topic: str, key: bytes, value: bytes, **kw: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key, **kw)
            return
        except BufferError:
            producer.poll(0.05)


def flush(producer: Producer, what: str) -> None:
    if producer.flush(120) != 0:
        raise BenchError(f"{what}: ticks still unacknowledged after 120 s")


# ---------------------------------------------------------------- percentiles and tables


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def table(header: list[str], rows: list[list[str]], left: frozenset[int] = frozenset({0})) -> str:
    """Aligned columns: those in ``left`` to the left, the others to the right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if index in left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return " | ".join(cells).rstrip()

    out = [line(header), "-" * len(line(header))]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:,.0f}"


# ---------------------------------------------------------------- live: receiving


class _Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: list[tuple[float, bytes]]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((CLOCK.wall(), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[tuple[float, bytes]]]]:
    received: list[tuple[float, bytes]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


class OutputReader(threading.Thread):
    """Reads the alert and notification topics from their start; keeps (wall time received,
    Kafka timestamp, value) of every record."""

    def __init__(self, bootstrap: str, topics: Topics, probe_prefix: str) -> None:
        super().__init__(daemon=True)
        self.topics = topics
        self.probe_alerts = 0  # records of probe rules (with repeats): the tail waits for them
        self._probe = f'"rule_id":"{probe_prefix}'.encode()
        # Consolidation windows seen closed: window end (epoch s) -> monotonic time first seen.
        self.windows: dict[float, float] = {}
        self.records: dict[str, list[tuple[float, int, bytes]]] = {
            topics.triggered: [],
            topics.notifications: [],
        }
        self.stopping = threading.Event()
        self.error: str | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-live-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "fetch.min.bytes": 1,
                "allow.auto.create.topics": False,
            }
        )
        parts = list_partitions(bootstrap, [topics.triggered, topics.notifications])
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in parts])

    def _window(self, value: bytes) -> None:
        if b'"highest_priority":"CRITICAL"' in value:
            return
        end = iso_ms(json.loads(value)["window_end"]) / 1000
        self.windows.setdefault(end, time.monotonic())

    def window_closed(self, end: float) -> float | None:
        """When a notification of a window ending at ``end`` or later was first read."""
        seen = [at for window_end, at in list(self.windows.items()) if window_end >= end]
        return min(seen) if seen else None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for message in self._consumer.consume(1000, 0.05):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self.error = str(error)
                        continue
                    value = message.value() or b""
                    self.records[message.topic() or ""].append(
                        (CLOCK.wall(), message.timestamp()[1], value)
                    )
                    if self._probe in value:
                        self.probe_alerts += 1
                    elif message.topic() == self.topics.notifications:
                        self._window(value)
        finally:
            self._consumer.close()


# ---------------------------------------------------------------- live: sending


@dataclass
class Phase:
    name: str
    rate: int
    seconds: float
    measured: bool
    window: float = 0.0  # warm-up: also until the first consolidation window has closed
    start: float = 0.0  # monotonic, set when it runs
    end: float = 0.0
    sent_at_start: int = 0
    sent_at_end: int = 0


@dataclass
class ProbeTick:
    symbol: str
    ts_ms: int
    sent: float  # wall
    phase: int
    expects_alert: bool
    kafka_ts: int | None = None


@dataclass
class Sender:
    """Sends ticks at each phase's rate; keeps every probe tick."""

    bootstrap: str
    topic: str
    phases: list[Phase]
    probe_share: float
    lag: Callable[[], float | None]
    window_closed: Callable[[float], float | None]
    sent: int = 0
    acked: int = 0
    probes: dict[tuple[str, int], ProbeTick] = field(default_factory=dict)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)  # interrupted
    phase_index: int = 0

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the main thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked += 1
        elif self.error is None:
            self.error = f"tick not delivered: {err}"

    def _run(self) -> None:
        rng = random.Random(7)
        probes = SYMBOLS[:PROBE_SYMBOLS]
        walkers = SYMBOLS[PROBE_SYMBOLS:]
        prices = base_prices(random.Random(0))
        last_probe: dict[str, int] = {}  # symbol -> index into PROBE_PRICES
        last_ts: dict[str, int] = {}
        probe_turn = 0
        producer = tick_producer(self.bootstrap)
        encode = json.dumps
        for index, phase in enumerate(self.phases):
            self.phase_index = index
            phase.start, phase.sent_at_start = time.monotonic(), self.sent
            window_end = not_before = 0.0  # wall
            if phase.window:  # the window of the first ticks: its end plus the allowed lateness
                window_end = (CLOCK.wall() // phase.window + 1) * phase.window
                not_before = window_end + LATENESS_S
            settled_since: float | None = None
            sent_here = 0
            while True:
                now = time.monotonic()
                elapsed = now - phase.start
                if self.stopping.is_set():
                    producer.purge()
                    producer.flush(0)
                    return
                if phase.measured:
                    if elapsed >= phase.seconds:
                        break
                elif elapsed >= phase.seconds and CLOCK.wall() >= not_before:
                    # Then (the warm-up: 3 s after the window's first notification was read)
                    # until the job's lag is under half a second of ticks; at most 30 s.
                    settled_since = settled_since or now
                    closed = self.window_closed(window_end) if phase.window else phase.start
                    lag = self.lag()
                    settled = closed is not None and now - closed >= 3
                    if settled and lag is not None and lag <= phase.rate / 2:
                        break
                    if now - settled_since >= RECOVER_MAX_S:
                        break
                due = min(int(phase.rate * elapsed) - sent_here, 2000)
                for _ in range(due):
                    wall = CLOCK.wall()
                    ts_ms = int(wall * 1000)
                    if rng.random() < self.probe_share:
                        symbol = probes[probe_turn % len(probes)]
                        probe_turn += 1
                        ts_ms = max(ts_ms, last_ts.get(symbol, 0) + 1)
                        last_ts[symbol] = ts_ms
                        side = 1 - last_probe.get(symbol, 1)
                        expects = symbol in last_probe
                        last_probe[symbol] = side
                        body = {"v": 1, "symbol": symbol, "ts": ts_ms, "price": PROBE_PRICES[side]}
                        probe = ProbeTick(symbol, ts_ms, wall, index, expects)
                        self.probes[(symbol, ts_ms)] = probe

                        def delivered(err: Any, msg: Any, probe: ProbeTick = probe) -> None:
                            self._on_delivery(err, msg)
                            if err is None:
                                probe.kafka_ts = msg.timestamp()[1]

                        callback: Callable[[Any, Any], None] = delivered
                    else:
                        symbol = rng.choice(walkers)
                        price = max(0.01, round(prices[symbol] * (1 + rng.gauss(0, 0.0005)), 2))
                        prices[symbol] = price
                        body = {
                            "v": 1,
                            "symbol": symbol,
                            "ts": ts_ms,
                            "price": price,
                            "size": rng.choice((0, 100, 200)),
                            "bid": round(price * 0.999, 2),
                            "ask": round(price * 1.001, 2),
                            "iv": 0.4,
                        }
                        callback = self._on_delivery
                    produce(
                        producer,
                        self.topic,
                        symbol.encode(),
                        encode(body).encode(),
                        on_delivery=callback,
                    )
                    self.sent += 1
                    sent_here += 1
                producer.poll(0)
                if due <= 0:
                    time.sleep(0.002)
                if self.error:
                    raise BenchError(self.error)
            phase.end, phase.sent_at_end = time.monotonic(), self.sent
        flush(producer, "live ticks")


# ---------------------------------------------------------------- live: the run


@dataclass
class Sample:
    at: float  # monotonic
    sent: int
    ticks: list[float]  # per process


@dataclass
class LiveResult:
    processes: int
    phases: list[Phase]
    rows_rates: list[list[str]]
    rows_latency: list[list[str]]
    startup_s: float
    notes: list[str]


def interpolate(samples: list[Sample], at: float, process: int | None) -> float:
    """The ticks counter (one process's, or the sum) at monotonic time ``at``."""

    def value(s: Sample) -> float:
        return sum(s.ticks) if process is None else s.ticks[process]

    before = [s for s in samples if s.at <= at]
    after = [s for s in samples if s.at > at]
    if not before:
        return value(after[0]) if after else 0.0
    if not after:
        return value(before[-1])
    a, b = before[-1], after[0]
    return value(a) + (value(b) - value(a)) * (at - a.at) / (b.at - a.at)


def run_live(
    urls: StackUrls, workdir: Path, args: argparse.Namespace, processes: int
) -> LiveResult:
    tag = uuid.uuid4().hex[:6]
    with webhook_receiver() as (hook_url, hooks):
        settings = settings_for(
            urls,
            prefixed_topics(f"live{tag}"),
            delivery={
                "webhook_allow_private_networks": ["127.0.0.0/8"],
                "per_user_per_minute": 1_000_000,
                "per_channel_per_second": 1_000_000,
            },
        )
        topics = settings.topics
        bootstrap = urls.kafka_bootstrap

        # Rules: the probes, then make_rule's mix over all the symbols.
        prices = base_prices(random.Random(0))
        prices.update(dict.fromkeys(SYMBOLS[:PROBE_SYMBOLS], PROBE_LEVEL))
        probe_rules, profiles = [], []
        for index, symbol in enumerate(SYMBOLS[:PROBE_SYMBOLS]):
            critical = index % 2 == 0
            user = f"probe{tag}-u{index}"
            for kind in ("price_crosses_above", "price_crosses_below"):
                probe_rules.append(
                    {
                        "v": 1,
                        "id": f"probe{tag}-{symbol}-{kind}",
                        "user_id": user,
                        "name": f"{symbol} {kind}",
                        "symbol": symbol,
                        "priority": "CRITICAL" if critical else "HIGH",
                        "cooldown_seconds": 0,
                        "conditions": {"type": kind, "threshold": PROBE_LEVEL},
                    }
                )
            if critical:
                profiles.append(
                    {
                        "v": 1,
                        "user_id": user,
                        "channels": {"CRITICAL": ["in_app", "webhook"]},
                        "destinations": {
                            "webhook": {"url": f"{hook_url}/{user}", "secret_ref": SECRET_REF}
                        },
                    }
                )
        mix = mix_rules(max(0, args.live_rules - len(probe_rules)), tag, prices)
        rules = probe_rules + mix
        publish(bootstrap, topics.rules, "id", rules)
        publish(bootstrap, topics.profiles, "user_id", profiles)
        progress(f"live, {processes} process(es): {len(rules):,} rules published, starting the job")

        job = start_job(settings, workdir, processes, bounded=False, name=f"live{processes}")
        deadline = time.monotonic() + 300
        marks: dict[str, float] = {}  # start-up milestones, seconds after the start
        while True:
            job.check()
            got = [scrape(port, topics) for port in job.ports]
            since = time.monotonic() - job.started
            if any(g is not None for g in got):
                marks.setdefault("metrics up", since)
            if sum(g.rules for g in got if g):
                marks.setdefault("first rule read", since)
            if all(g is not None for g in got) and sum(g.rules for g in got if g) >= len(rules):
                break
            if time.monotonic() > deadline:
                raise BenchError("the job did not read its rules within 300 s")
            time.sleep(0.1)
        startup = time.monotonic() - job.started
        marks["all rules read"] = startup
        startup_text = ", ".join(f"{name} {at:.1f} s" for name, at in marks.items())
        progress(f"  job up: {startup_text}")

        reader = OutputReader(bootstrap, topics, f"probe{tag}-")
        reader.start()
        window = settings.engine.window_seconds
        phases = [Phase("warm-up", min(args.rates), args.warmup, False, window=window)]
        for number, rate in enumerate(args.rates):
            if number:
                phases.append(Phase("recover", min(args.rates), 2, False))
            phases.append(Phase(f"{rate:,}/s", rate, args.duration, True))
        samples: list[Sample] = []

        def current_lag() -> float | None:
            return samples[-1].sent - sum(samples[-1].ticks) if samples else None

        sender = Sender(
            bootstrap, topics.ticks, phases, args.probe_share, current_lag, reader.window_closed
        )
        thread = threading.Thread(target=sender.run, daemon=True)
        thread.start()
        last_print = 0.0
        last_ticks = [0.0] * processes
        try:
            while not sender.done.is_set():
                job.check()
                got = [scrape(port, topics) for port in job.ports]
                last_ticks = [g.ticks if g else old for g, old in zip(got, last_ticks, strict=True)]
                samples.append(Sample(time.monotonic(), sender.sent, list(last_ticks)))
                if time.monotonic() - last_print > 5:
                    recent = [s.sent - sum(s.ticks) for s in samples if s.at > last_print]
                    last_print = time.monotonic()
                    phase = phases[sender.phase_index]
                    progress(
                        f"  {time.strftime('%H:%M:%S')} {phase.name}: sent {sender.sent:,}, "
                        f"read {sum(last_ticks):,.0f}, lag {recent[-1]:,.0f} "
                        f"(max {max(recent):,.0f} in 5 s), "
                        f"alerts consumed {len(reader.records[topics.triggered]):,}"
                    )
                time.sleep(SCRAPE_S)
            if sender.error:
                raise BenchError(f"producer: {sender.error}")
            # The tail: wait for every probe alert and CRITICAL notification, and the lag at 0.
            expected = sum(p.expects_alert for p in sender.probes.values())
            progress(f"  sending done, waiting for {expected:,} probe alerts")
            tail_end = time.monotonic() + args.tail
            while time.monotonic() < tail_end:
                got = [scrape(port, topics) for port in job.ports]
                last_ticks = [g.ticks if g else old for g, old in zip(got, last_ticks, strict=True)]
                samples.append(Sample(time.monotonic(), sender.sent, list(last_ticks)))
                if reader.probe_alerts >= expected and sum(last_ticks) >= sender.sent:
                    time.sleep(2)  # the notifications and webhooks of the last alerts
                    break
                time.sleep(SCRAPE_S)
        finally:
            sender.stopping.set()
            reader.stopping.set()
            reader.join(10)
            job.stop()
            JOBS.remove(job)
        if reader.error:
            progress(f"  note: output consumer error: {reader.error}")
        return summarize_live(
            processes, phases, samples, reader, sender, hooks, tag, startup, startup_text
        )


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def match(
    reader: OutputReader,
    topics: Topics,
    sender: Sender,
    hooks: list[tuple[float, bytes]],
    tag: str,
) -> tuple[dict[str, tuple[ProbeTick, float, int]], dict[str, float], dict[str, float]]:
    """Probe alerts by alert id: (tick, consumed at, Kafka ts); the first CRITICAL notification
    (topic) and webhook received per alert id."""
    alerts: dict[str, tuple[ProbeTick, float, int]] = {}
    prefix = f"probe{tag}-"
    for received, kafka_ts, value in list(reader.records[topics.triggered]):
        alert = json.loads(value)
        if not alert["rule_id"].startswith(prefix) or alert["alert_id"] in alerts:
            continue
        tick = sender.probes.get((alert["symbol"], iso_ms(alert["triggered_at"])))
        if tick is not None:
            alerts[alert["alert_id"]] = (tick, received, kafka_ts)
    notified: dict[str, float] = {}
    for received, _, value in list(reader.records[topics.notifications]):
        note = json.loads(value)
        if note["highest_priority"] == "CRITICAL":
            for alert_id in note["alert_ids"]:
                notified.setdefault(alert_id, received)
    hooked: dict[str, float] = {}
    for received, body in list(hooks):
        note = json.loads(body)
        for alert_id in note["alert_ids"]:
            hooked.setdefault(alert_id, received)
    return alerts, notified, hooked


def summarize_live(
    processes: int,
    phases: list[Phase],
    samples: list[Sample],
    reader: OutputReader,
    sender: Sender,
    hooks: list[tuple[float, bytes]],
    tag: str,
    startup: float,
    startup_text: str,
) -> LiveResult:
    topics = reader.topics
    alerts, notified, hooked = match(reader, topics, sender, hooks, tag)
    by_tick = {id(tick): (alert_id, got, kts) for alert_id, (tick, got, kts) in alerts.items()}
    rows_rates, rows_latency, notes = [], [], []
    for index, phase in enumerate(phases):
        if not phase.measured:
            continue
        seconds = phase.end - phase.start
        sent_rate = (phase.sent_at_end - phase.sent_at_start) / seconds
        per_process = [
            (interpolate(samples, phase.end, p) - interpolate(samples, phase.start, p)) / seconds
            for p in range(processes)
        ]
        read_rate = sum(per_process)
        in_phase = [s for s in samples if phase.start <= s.at <= phase.end]
        max_lag = max((s.sent - sum(s.ticks) for s in in_phase), default=math.nan)
        lag_end = phase.sent_at_end - interpolate(samples, phase.end, None)
        row = [
            str(processes),
            f"{phase.rate:,}",
            f"{sent_rate:,.0f}",
            f"{read_rate:,.0f}",
            f"{read_rate / sent_rate:.0%}",
            f"{max(0.0, lag_end):,.0f}",
            f"{max(0.0, max_lag):,.0f}",
            "bounded" if lag_end <= phase.rate else "growing",
        ]
        row.append(" / ".join(f"{r:,.0f}" for r in per_process))
        rows_rates.append(row)

        ticks = [t for t in sender.probes.values() if t.phase == index and t.expects_alert]
        critical_symbols = set(SYMBOLS[:PROBE_SYMBOLS:2])
        end_to_end, in_job, to_note, to_hook = [], [], [], []
        lost = lost_note = lost_hook = 0
        for tick in ticks:
            found = by_tick.get(id(tick))
            critical = tick.symbol in critical_symbols
            if found is None:
                lost += 1
                lost_note += critical
                lost_hook += critical
                continue
            alert_id, got, kafka_ts = found
            end_to_end.append(got - tick.sent)
            if tick.kafka_ts is not None:
                in_job.append((kafka_ts - tick.kafka_ts) / 1000)
            if critical:
                if alert_id in notified:
                    to_note.append(notified[alert_id] - tick.sent)
                else:
                    lost_note += 1
                if alert_id in hooked:
                    to_hook.append(hooked[alert_id] - tick.sent)
                else:
                    lost_hook += 1
        for what, values, missing in (
            ("sent -> alert consumed", end_to_end, lost),
            ("in job: tick -> alert (Kafka ts)", in_job, lost),
            ("sent -> CRITICAL notification", to_note, lost_note),
            ("sent -> CRITICAL webhook", to_hook, lost_hook),
        ):
            rows_latency.append(
                [
                    str(processes),
                    f"{phase.rate:,}",
                    what,
                    f"{len(values):,}",
                    ms(percentile(values, 0.50)),
                    ms(percentile(values, 0.95)),
                    ms(percentile(values, 0.99)),
                    ms(max(values) if values else math.nan),
                    f"{missing:,}",
                ]
            )
    all_alerts = len({json.loads(v)["alert_id"] for _, _, v in reader.records[topics.triggered]})
    notes.append(
        f"{processes} process(es): {sender.sent:,} ticks sent, {len(sender.probes):,} probe ticks, "
        f"{all_alerts:,} distinct alerts consumed ({len(alerts):,} probe), "
        f"{len(hooks):,} webhooks received; start-up: {startup_text}"
    )
    return LiveResult(processes, phases, rows_rates, rows_latency, startup, notes)


# ---------------------------------------------------------------- bounded


@dataclass
class BoundedRow:
    name: str
    startup: float
    steady: float
    read_all: float
    exit: float
    alerts: int


def produce_bounded_ticks(bootstrap: str, topic: str, count: int) -> None:
    rng = random.Random(3)
    prices = base_prices(random.Random(0))
    base_ms = int((time.time() - 3 * 3600) * 1000)
    producer = tick_producer(bootstrap)
    started = time.monotonic()
    for index in range(count):
        symbol = SYMBOLS[rng.randrange(len(SYMBOLS))]
        price = max(0.01, round(prices[symbol] * (1 + rng.gauss(0, 0.0005)), 2))
        prices[symbol] = price
        body = {
            "v": 1,
            "symbol": symbol,
            "ts": base_ms + 20 * index,
            "price": price,
            "size": rng.choice((0, 100, 200)),
            "bid": round(price * 0.999, 2),
            "ask": round(price * 1.001, 2),
            "iv": round(rng.uniform(0.2, 0.8), 3),
        }
        produce(producer, topic, symbol.encode(), json.dumps(body).encode())
        if index % 50_000 == 49_999:
            producer.poll(0)
            progress(f"  {index + 1:,} ticks produced")
        elif index % 1000 == 0:
            producer.poll(0)
    flush(producer, "bounded ticks")
    progress(f"  {count:,} ticks produced in {time.monotonic() - started:.1f} s")


def baseline(bootstrap: str, topic: str, count: int) -> BoundedRow:
    """A plain consumer reads every tick and json.loads each value."""
    started = time.monotonic()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-baseline-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    parts = list_partitions(bootstrap, [topic])
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in parts])
    read, first = 0, None
    ended: set[int] = set()
    deadline = time.monotonic() + 300
    try:
        while len(ended) < len(parts) or read < count:
            if time.monotonic() > deadline:
                raise BenchError(f"baseline consumer read {read:,} of {count:,} in 300 s")
            for message in consumer.consume(10_000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(message.partition() or 0)
                        continue
                    raise BenchError(f"baseline consumer: {error}")
                if first is None:
                    first = time.monotonic()
                json.loads(message.value() or b"")
                read += 1
        done = time.monotonic()
    finally:
        consumer.close()
    assert first is not None
    return BoundedRow(
        "plain consumer + json.loads (a)",
        first - started,
        read / (done - first),
        done - first,
        done - started,
        0,
    )


def bounded_job(
    urls: StackUrls, workdir: Path, ticks_topic: str, count: int, n_rules: int
) -> BoundedRow:
    tag = uuid.uuid4().hex[:6]
    settings = settings_for(urls, prefixed_topics(f"b{tag}", ticks=ticks_topic))
    topics = settings.topics
    if n_rules:
        rules = mix_rules(n_rules, tag, base_prices(random.Random(0)))
        publish(urls.kafka_bootstrap, topics.rules, "id", rules)
    progress(f"bounded, {n_rules:,} rules: starting the job")
    job = start_job(settings, workdir, 1, bounded=True, name=f"bounded{n_rules}")
    series: list[tuple[float, float]] = []
    first = None
    try:
        deadline = time.monotonic() + 900
        last_print = time.monotonic()
        while job.alive():
            got = scrape(job.ports[0], topics)
            now = time.monotonic()
            if got is not None:
                series.append((now, got.ticks))
                if first is None and got.ticks > 0:
                    first = now
            if now > deadline:
                raise BenchError(f"bounded run with {n_rules:,} rules still running after 900 s")
            if now - last_print > 10 and series:
                last_print = now
                progress(f"  read {series[-1][1]:,.0f} of {count:,} ticks")
            time.sleep(0.1)
        exited = time.monotonic()
        job.check()
    finally:
        job.stop()
        JOBS.remove(job)
    if first is None or not series:
        raise BenchError(f"bounded run with {n_rules:,} rules read no tick")

    def when(fraction: float) -> float:
        return next(at for at, value in series if value >= fraction * count)

    total_read = series[-1][1]
    if total_read < 0.9 * count:
        raise BenchError(f"bounded run with {n_rules:,} rules: last scrape saw {total_read:,.0f}")
    steady = 0.8 * count / (when(0.9) - when(0.1))
    last = when(total_read / count) if total_read >= count else series[-1][0]
    alerts = len(read_topic(urls.kafka_bootstrap, topics.triggered))
    progress(f"  done: exit after {exited - job.started:.1f} s, {alerts:,} alerts")
    return BoundedRow(
        f"job run --bounded, {n_rules:,} rules",
        first - job.started,
        steady,
        last - first,
        exited - job.started,
        alerts,
    )


def run_bounded(urls: StackUrls, workdir: Path, args: argparse.Namespace) -> list[BoundedRow]:
    tag = uuid.uuid4().hex[:6]
    settings = settings_for(urls, prefixed_topics(f"bt{tag}"))
    topic = settings.topics.ticks
    progress(f"bounded: producing {args.bounded_ticks:,} ticks to {topic}")
    produce_bounded_ticks(urls.kafka_bootstrap, topic, args.bounded_ticks)
    rows = [baseline(urls.kafka_bootstrap, topic, args.bounded_ticks)]
    progress(f"  baseline: {rows[0].steady:,.0f} records/s")
    for n_rules in args.rules:
        rows.append(bounded_job(urls, workdir, topic, args.bounded_ticks, n_rules))
    return rows


# ---------------------------------------------------------------- main


def print_live(results: list[LiveResult], args: argparse.Namespace) -> None:
    multi = any(r.processes > 1 for r in results)
    probes = 2 * PROBE_SYMBOLS
    print(
        f"live: 1,000 symbols, {MARKET_PARTITIONS} tick partitions, {args.live_rules:,} rules "
        f"({probes} probe rules on {PROBE_SYMBOLS} symbols, half CRITICAL), "
        f"{args.probe_share:.1%} of ticks are probes; {args.duration:g} s per rate"
    )
    print()
    header = ["procs", "rate /s", "sent /s", "read /s", "read/sent", "lag at end", "max lag", "lag"]
    if multi:
        header.append("read /s per process")
    rows = [row[: len(header)] for r in results for row in r.rows_rates]
    print(table(header, rows, left=frozenset()))
    print()
    header = ["procs", "rate /s", "latency", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "missing"]
    print(table(header, [row for r in results for row in r.rows_latency], left=frozenset({2})))
    for result in results:
        for note in result.notes:
            print(f"  {note}")


def print_bounded(rows: list[BoundedRow], args: argparse.Namespace) -> None:
    print(
        f"bounded: {args.bounded_ticks:,} ticks pre-produced, 1,000 symbols, "
        f"{MARKET_PARTITIONS} partitions, 1 process"
    )
    print()
    base = rows[0].steady
    header = [
        "reader",
        "start-up s",
        "steady ticks/s",
        "vs (a)",
        "read all s",
        "avg ticks/s",
        "exit s",
        "alerts",
    ]
    body = [
        [
            row.name,
            f"{row.startup:.1f}",
            f"{row.steady:,.0f}",
            f"{row.steady / base:.1%}",
            f"{row.read_all:.1f}",
            f"{args.bounded_ticks / row.read_all:,.0f}",
            f"{row.exit:.1f}",
            f"{row.alerts:,}",
        ]
        for row in rows
    ]
    print(table(header, body))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short steps, fewer sizes (~2-3 min)")
    parser.add_argument("--only", choices=["live", "bounded"], help="run one part only")
    parser.add_argument("--rates", type=int, nargs="+", help="live tick rates (1000 5000 10000)")
    parser.add_argument("--duration", type=float, help="seconds per live rate (20)")
    parser.add_argument("--warmup", type=float, help="live warm-up seconds (10)")
    parser.add_argument("--tail", type=float, default=90, help="max seconds to wait for the tail")
    parser.add_argument("--live-rules", type=int, default=10_000, help="live rules (10000)")
    parser.add_argument("--probe-share", type=float, default=0.01, help="share of probe ticks")
    parser.add_argument(
        "--processes", type=int, nargs="+", help="live job process counts, one run each (1 2)"
    )
    parser.add_argument("--rules", type=int, nargs="+", help="bounded rule counts (0 10000 100000)")
    parser.add_argument("--bounded-ticks", type=int, help="bounded ticks (200000)")
    parser.add_argument(
        "--job-src",
        type=Path,
        help="run the job from this source tree instead of this repository (a before/after "
        "comparison, e.g. of `git archive HEAD | tar -x -C /tmp/head`)",
    )
    args = parser.parse_args()
    quick = args.quick
    args.rates = args.rates or ([1000, 5000] if quick else [1000, 5000, 10000])
    args.duration = args.duration or (8.0 if quick else 20.0)
    args.warmup = args.warmup or (5.0 if quick else 10.0)
    args.processes = args.processes or ([1] if quick else [1, 2])
    args.rules = args.rules if args.rules is not None else ([0, 10_000] if quick else
                                                            [0, 10_000, 100_000])  # fmt: skip
    args.bounded_ticks = args.bounded_ticks or (50_000 if quick else 200_000)
    if min(args.rates) <= 0 or args.duration <= 0 or not 0 < args.probe_share <= 1:
        parser.error("rates, duration and probe share must be positive")
    return args


def source_version(folders: tuple[str, ...] = ("pipeline", "connectors", "sinks")) -> str:
    """The commit, and the files of ``folders`` (the job's) that differ from it in the working
    tree."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.rstrip()

    commit = git("log", "-1", "--format=%h %s").strip()[:60]
    dirty = git("status", "--short", "--", *folders).splitlines()
    changed = f" + uncommitted changes in {', '.join(line[3:] for line in dirty)}" if dirty else ""
    return f"commit {commit}{changed}"


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    global JOB_SRC
    args = parse_args()
    if args.job_src is not None:
        if not (args.job_src / "pipeline" / "cli" / "main.py").is_file():
            print(f"live.py: error: {args.job_src} holds no pipeline/cli/main.py", file=sys.stderr)
            return 2
        JOB_SRC = args.job_src.resolve()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up as for Ctrl-C
    workdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    keep = False
    try:
        commit = source_version() if JOB_SRC == ROOT else f"the job from {JOB_SRC}"
        progress(f"starting the stack in {workdir} ({commit})")
        with stack_from_env_or_embedded(workdir / "stack") as urls:
            migrate(urls.database_url, log=lambda _line: None)
            live = []
            if args.only != "bounded":
                live = [run_live(urls, workdir, args, n) for n in args.processes]
            bounded = run_bounded(urls, workdir, args) if args.only != "live" else []
        print(f"measured at {commit}; load average {os.getloadavg()[0]:.1f} (1 min) at the end")
        print()
        if live:
            print_live(live, args)
            print()
        if bounded:
            print_bounded(bounded, args)
        return 0
    except BenchError as exc:
        keep = True
        print(f"live.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("live.py: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_jobs()
        if keep:
            print(f"live.py: job logs kept in {workdir}", file=sys.stderr)
            shutil.rmtree(workdir / "stack", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
