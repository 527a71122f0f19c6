"""The HTTP API under load on the embedded stack: requests per second and latency per route.

    python bench/api.py                 # about 1 minute on 2 cores
    python bench/api.py --quick         # 3 s per HTTP row, 100 fan-out messages: ~30 s
    python bench/api.py --threads 8 --duration 20 --messages 500 --ws-clients 10

Starts the embedded stack (a Kafka-API broker, PostgreSQL, Redis; servers named by
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL are used instead where set), migrates,
creates topics of this run, and serves the API as the operator does, in a process of its own:
``python -m pipeline.cli.main api --port P`` (uvicorn, one worker, its access log on), configured
through SMART_ALERTS_* variables to accept HS256 tokens signed with a secret of this run and
with its rate limits raised out of the way. The clients run in this process: ``--threads``
threads, each with an httpx client of its own (keep-alive), sending one request after the other
for ``--duration`` seconds per row after a short warm-up; a row's requests/s is every
answered request over the row's wall time, its latencies those of each request (send to body
read). A request answered with another status than the row expects counts as an error.

HTTP rows, each with a token of its own user (a user's requests share one rate-limit bucket):

- **GET /healthz**: the baseline; no authentication, no store. Measured before and after the
  other rows; the ratios are against the mean of the two (the first and last show the drift).
- **GET /v1/alerts**: the alert history list, the first page (the default 50) of a user
  holding ``--alerts`` triggered alerts (written with ``HistoryWriter.write_alerts``, as the
  job writes them).
- **POST /v1/rules**: a new rule each time (``price_crosses_above 100`` on one of 100
  symbols), stored and published to the rules topic (acknowledged by the broker) in one
  transaction.

WebSocket fan-out: ``--ws-clients`` connections to ``/v1/inbox/ws`` of one user (each in a
thread of its own, ``websockets``' sync client). ``--messages`` notifications are published
one after the other with ``InAppFeed.publish`` (the job's in-app writer: XADD to the user's
stream, which the route follows with XREAD BLOCK); each one is timed from just before the
publish call to its arrival at each client, and the next is published once every client has
it. The baseline is the same round trip over
Redis alone: PUBLISH on a channel to ``--ws-clients`` redis-py subscribers in this process.
Both rows report messages/s (round trips, one at a time: their inverse latency, not a
capacity) and the latency of every (message, client) pair.

Progress goes to stderr, the tables to stdout; the server's log is in a temporary folder,
removed at exit (kept and named when the server fails). The machine is noisy (2 shared
cores, the server and the clients on the same ones): compare rows within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import redis  # noqa: E402
from live import source_version, table  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

from connectors.embedded import free_ports, stack_from_env_or_embedded  # noqa: E402
from pipeline.cli.commands import topics_create  # noqa: E402
from pipeline.cli.demo import demo_api_settings, demo_token  # noqa: E402
from pipeline.config import Settings, Topics, load_settings  # noqa: E402
from pipeline.messages import Notification, TriggeredAlert  # noqa: E402
from sinks.migrations import migrate  # noqa: E402
from sinks.postgres import HistoryWriter  # noqa: E402
from sinks.redis_store import InAppFeed  # noqa: E402

# Out of the way of a bench: every row's user sends thousands of requests a minute.
NO_RATE_LIMIT = 1_000_000_000
WARMUP_S = 1.0
STARTUP_TIMEOUT_S = 60.0
FANOUT_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why in one line."""


_T0 = time.monotonic()


def progress(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path

    def token(self, user_id: str) -> str:
        return demo_token(self.settings, user_id)

    def client(self, user_id: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user_id)}"} if user_id else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def routes(self) -> set[tuple[str, str]]:
        """(method, path) of every HTTP route in the server's OpenAPI document."""
        paths = httpx.get(f"{self.url}/openapi.json", timeout=30).json()["paths"]
        return {(method.upper(), path) for path, item in paths.items() for method in item}

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"the API server exited with code {code} (log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def bench_settings(urls: Any, tag: str) -> Settings:
    topics = Topics.prefixed(f"ab{tag}")
    settings = load_settings(
        None,
        kafka_bootstrap_servers=urls.kafka_bootstrap,
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        topics=topics,
    )
    topics_create(settings, echo=lambda _: None)
    settings = demo_api_settings(settings, free_ports(1)[0])
    limits = {
        "rate_limit_read_per_minute": NO_RATE_LIMIT,
        "rate_limit_write_per_minute": NO_RATE_LIMIT,
        "rate_limit_stream_per_minute": NO_RATE_LIMIT,
    }
    return settings.model_copy(update={"api": settings.api.model_copy(update=limits)})


@contextlib.contextmanager
def api_server(settings: Settings, workdir: Path) -> Iterator[Server]:
    """``smart-alerts api`` in a process of its own, until the block ends."""
    log_path = workdir / "api.log"
    env = {**os.environ, **settings.as_environment(), "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "api", "--port", str(settings.api.port)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{settings.api.port}", settings, proc, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            server.check()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"the API was not ready after {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class Row:
    name: str
    count: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int = 0
    first_error: str = ""
    baseline: bool = False

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


Request = Callable[[httpx.Client, int], httpx.Response]


def http_row(
    server: Server,
    name: str,
    user_id: str | None,
    send: Request,
    expect: int,
    threads: int,
    duration: float,
    valid: Callable[[httpx.Response], bool] = lambda _response: True,
) -> Row:
    """``threads`` clients sending ``send`` one request after the other for ``duration`` s;
    one request first, whose answer must be ``expect`` and ``valid`` (a route answering
    fast with nothing in it must not pass for a fast route)."""
    progress(f"{name}: {threads} threads, {duration:g} s")
    clients = [server.client(user_id) for _ in range(threads)]
    first = send(clients[0], -1)
    if first.status_code != expect or not valid(first):
        for client in clients:
            client.close()
        raise BenchError(f"{name}: the first answer is {first.status_code} {first.text[:300]}")
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    sequence = iter(range(10**12))  # unique numbers across threads (next() is atomic)
    start = threading.Barrier(threads + 1)
    timing = threading.Event()
    stop = threading.Event()

    def work(index: int) -> None:
        client, mine = clients[index], latencies[index]
        start.wait()
        while not stop.is_set():
            measured = timing.is_set()
            began = time.perf_counter()
            try:
                response = send(client, next(sequence))
                ok = response.status_code == expect
                what = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                ok, what = False, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - began
            if not measured or stop.is_set():
                continue
            if ok:
                mine.append(elapsed)
            else:
                errors.append(what)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        start.wait()
        time.sleep(WARMUP_S)
        timing.set()
        began = time.perf_counter()
        time.sleep(duration)
        stop.set()
        seconds = time.perf_counter() - began
        for worker in workers:
            worker.join(60)
    finally:
        stop.set()
        for client in clients:
            client.close()
    server.check()
    merged = [latency for mine in latencies for latency in mine]
    row = Row(name, len(merged) + len(errors), seconds, merged, len(errors))
    row.first_error = errors[0] if errors else ""
    progress(f"  {row.rate:,.0f} requests/s, p50 {ms(row.p50)} ms, {row.errors} errors")
    return row


# ---------------------------------------------------------------- HTTP rows


def get_healthz(client: httpx.Client, _n: int) -> httpx.Response:
    return client.get("/healthz")


def seed_alerts(settings: Settings, user_id: str, count: int) -> None:
    """``count`` triggered alerts of ``user_id``, one a minute, as the job writes them."""
    now = datetime.now(UTC)
    alerts = [
        TriggeredAlert(
            alert_id=f"a-{user_id}-{index}",
            rule_id=f"r-{user_id}-{index % 20}",
            rule_version=1,
            user_id=user_id,
            symbol=f"S{index % 100:03d}",
            priority=("LOW", "MEDIUM", "HIGH", "CRITICAL")[index % 4],
            title=f"S{index % 100:03d} crossed above 100",
            message="price 100.5 crossed above 100",
            triggered_at=now - timedelta(minutes=count - index),
            condition_types=["price_crosses_above"],
            values={"price": 100.5},
        )
        for index in range(count)
    ]
    with HistoryWriter(settings.require_servers()[1]) as writer:
        for first in range(0, count, 5_000):
            writer.write_alerts(alerts[first : first + 5_000])


ALERTS_PAGE = 50  # the route's default limit


def get_alerts(client: httpx.Client, _n: int) -> httpx.Response:
    return client.get("/v1/alerts")


def full_page(response: httpx.Response) -> bool:
    return len(response.json()["items"]) == ALERTS_PAGE


def post_rule(tag: str) -> Request:
    def send(client: httpx.Client, n: int) -> httpx.Response:
        rule = {
            "v": 1,
            "id": f"rb{tag}-{n}",
            "name": f"S{n % 100:03d} crosses above 100",
            "symbol": f"S{n % 100:03d}",
            "priority": "MEDIUM",
            "mode": "recurring",
            "cooldown_seconds": 300,
            "conditions": {"type": "price_crosses_above", "threshold": 100},
        }
        return client.post("/v1/rules", json=rule)

    return send


# ---------------------------------------------------------------- fan-out rows


class Receiver(threading.Thread):
    """One live connection; ``arrivals[id]`` = perf_counter when message ``id`` arrived."""

    def __init__(self, arrivals: dict[str, float], ready: threading.Event) -> None:
        super().__init__(daemon=True)
        self.arrivals = arrivals
        self.ready = ready
        self.error: str | None = None
        self.stopping = threading.Event()

    def close(self) -> None:
        raise NotImplementedError


class WsReceiver(Receiver):
    def __init__(self, url: str, token: str, arrivals: dict[str, float]) -> None:
        super().__init__(arrivals, threading.Event())
        self.connection = ws_connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30
        )

    def run(self) -> None:
        try:
            for raw in self.connection:
                event = json.loads(raw)
                if event["type"] == "ready":
                    self.ready.set()
                elif event["type"] == "notification":
                    notification_id = event["notification"]["notification_id"]
                    self.arrivals[notification_id] = time.perf_counter()
        except Exception as exc:  # a closed connection while stopping is the normal end
            if not self.stopping.is_set():
                self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.stopping.set()
        self.connection.close()


class RedisReceiver(Receiver):
    def __init__(self, redis_url: str, channel: str, arrivals: dict[str, float]) -> None:
        super().__init__(arrivals, threading.Event())
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.ready.set()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                message = self.pubsub.get_message(timeout=0.5)
                if message is not None:
                    self.arrivals[message["data"].decode()] = time.perf_counter()
        except Exception as exc:
            if not self.stopping.is_set():
                self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.stopping.set()
        self.join(5)
        self.pubsub.close()
        self.client.close()


def fan_out(
    name: str,
    receivers: list[Receiver],
    maps: list[dict[str, float]],
    publish: Callable[[str], Any],
    messages: int,
    *,
    baseline: bool = False,
) -> Row:
    """Publish ``messages`` one after the other, each once every receiver has the last."""
    for receiver in receivers:
        receiver.start()
    try:
        for receiver in receivers:
            if not receiver.ready.wait(30):
                raise BenchError(f"{name}: a client was not subscribed after 30 s")
        latencies: list[float] = []
        errors = 0
        warmup = max(5, messages // 10)
        began = 0.0
        for index in range(warmup + messages):
            if index == warmup:
                latencies.clear()
                errors = 0
                began = time.perf_counter()
            message_id = f"m{uuid.uuid4().hex}"
            sent = time.perf_counter()
            publish(message_id)
            deadline = sent + FANOUT_TIMEOUT_S
            while not all(message_id in arrivals for arrivals in maps):
                failed = [r.error for r in receivers if r.error]
                if failed:
                    raise BenchError(f"{name}: a client failed: {failed[0]}")
                if time.perf_counter() > deadline:
                    break
                time.sleep(0.0002)
            for arrivals in maps:
                if message_id in arrivals:
                    latencies.append(arrivals[message_id] - sent)
                else:
                    errors += 1
        seconds = time.perf_counter() - began
    finally:
        for receiver in receivers:
            receiver.close()
    row = Row(name, messages, seconds, latencies, errors, baseline=baseline)
    progress(f"  {row.rate:,.0f} messages/s, p50 {ms(row.p50)} ms, {row.errors} missing")
    return row


def redis_row(settings: Settings, clients: int, messages: int) -> Row:
    progress(f"redis pub/sub round trip: {clients} subscribers, {messages} messages")
    redis_url = settings.require_servers()[2]
    channel = f"bench:api:{uuid.uuid4().hex[:8]}"
    maps: list[dict[str, float]] = [{} for _ in range(clients)]
    receivers: list[Receiver] = [RedisReceiver(redis_url, channel, m) for m in maps]
    publisher = redis.Redis.from_url(redis_url)
    try:
        return fan_out(
            "redis PUBLISH -> subscriber (baseline)",
            receivers,
            maps,
            lambda message_id: publisher.publish(channel, message_id),
            messages,
            baseline=True,
        )
    finally:
        publisher.close()


def ws_row(server: Server, user_id: str, clients: int, messages: int) -> Row:
    progress(f"WebSocket fan-out: {clients} connections, {messages} messages")
    url = server.url.replace("http://", "ws://") + "/v1/inbox/ws"
    maps: list[dict[str, float]] = [{} for _ in range(clients)]
    receivers: list[Receiver] = [WsReceiver(url, server.token(user_id), m) for m in maps]
    feed = InAppFeed(server.settings.require_servers()[2])
    window = datetime.now(UTC).replace(microsecond=0)

    def publish(message_id: str) -> None:
        feed.publish(
            Notification(
                notification_id=message_id,
                user_id=user_id,
                alert_ids=[f"a-{message_id}"],
                title="S001 crossed above 100",
                message="price 100.5 crossed above 100",
                highest_priority="HIGH",
                channels=["in_app"],
                window_start=window,
                window_end=window + timedelta(minutes=1),
            )
        )

    try:
        row = fan_out(
            "InAppFeed.publish -> /v1/inbox/ws client", receivers, maps, publish, messages
        )
    finally:
        feed.close()
    server.check()
    return row


# ---------------------------------------------------------------- tables


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:,.2f}"


def ratio(value: float, base: float) -> str:
    return "-" if math.isnan(value) or math.isnan(base) or base == 0 else f"{value / base:.2f}x"


def print_rows(title: str, unit: str, rows: list[Row]) -> None:
    bases = [row for row in rows if row.baseline]
    base_rate = sum(r.rate for r in bases) / len(bases)
    base_p50 = sum(r.p50 for r in bases) / len(bases)
    base_p99 = sum(r.p99 for r in bases) / len(bases)
    print(title)
    print()
    header = ["row", "n", f"{unit}/s", "vs base", "p50 ms", "vs base", "p99 ms", "vs base"]
    header.append("errors")
    body = [
        [
            row.name,
            f"{row.count:,}",
            f"{row.rate:,.0f}",
            ratio(row.rate, base_rate),
            ms(row.p50),
            ratio(row.p50, base_p50),
            ms(row.p99),
            ratio(row.p99, base_p99),
            f"{row.errors:,}",
        ]
        for row in rows
    ]
    print(table(header, body))
    for row in rows:
        if row.first_error:
            print(f"  {row.name}: first error: {row.first_error}")


# ---------------------------------------------------------------- main


def http_rows(
    server: Server, args: argparse.Namespace, tag: str, reader: str
) -> tuple[list[Row], list[str]]:
    """The baseline, each route's row (a route this commit does not serve is noted instead),
    and the baseline again."""
    served = server.routes()
    t, d = args.threads, args.duration
    rows = [http_row(server, "GET /healthz (baseline)", None, get_healthz, 200, t, d)]
    notes = []
    routes: list[tuple[str, str, str, Request, int, Callable[[httpx.Response], bool]]] = [
        ("GET", "/v1/alerts", reader, get_alerts, 200, full_page),
        ("POST", "/v1/rules", f"u-bench-{tag}-writer", post_rule(tag), 201, lambda _r: True),
    ]
    for method, path, user_id, send, expect, valid in routes:
        if (method, path) not in served:
            notes.append(f"{method} {path}: not served at this commit, not measured")
            continue
        rows.append(http_row(server, f"{method} {path}", user_id, send, expect, t, d, valid))
    rows.append(http_row(server, "GET /healthz (baseline, again)", None, get_healthz, 200, t, d))
    for row in (rows[0], rows[-1]):
        row.baseline = True
    return rows, notes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short rows (~30 s in all)")
    parser.add_argument("--threads", type=int, default=4, help="HTTP client threads (4)")
    parser.add_argument("--duration", type=float, help="seconds per HTTP row (10; quick 3)")
    parser.add_argument(
        "--alerts", type=int, default=1_000, help="alerts of the GET user (1000, at least 50)"
    )
    parser.add_argument("--messages", type=int, help="fan-out messages (300; quick 100)")
    parser.add_argument("--ws-clients", type=int, default=5, help="live connections (5)")
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.messages = args.messages or (100 if args.quick else 300)
    if min(args.threads, args.messages, args.ws_clients) < 1 or args.duration <= 0:
        parser.error("threads, duration, messages and ws-clients must be positive")
    if args.alerts < ALERTS_PAGE:
        parser.error(f"--alerts must be at least {ALERTS_PAGE} (a full first page)")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up as for Ctrl-C
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    keep = False
    tag = uuid.uuid4().hex[:6]
    try:
        commit = source_version(("api", "pipeline", "connectors", "sinks"))
        progress(f"starting the stack in {workdir} ({commit})")
        with stack_from_env_or_embedded(workdir / "stack") as urls:
            migrate(urls.database_url, log=lambda _line: None)
            settings = bench_settings(urls, tag)
            reader = f"u-bench-{tag}-reader"
            progress(f"writing {args.alerts:,} alerts of {reader}")
            seed_alerts(settings, reader, args.alerts)
            progress("starting the API")
            with api_server(settings, workdir) as server:
                load = os.getloadavg()[0]
                http, notes = http_rows(server, args, tag, reader)
                live = [redis_row(settings, args.ws_clients, args.messages)]
                try:
                    live.append(
                        ws_row(server, f"u-bench-{tag}-live", args.ws_clients, args.messages)
                    )
                except InvalidStatus as exc:
                    notes.append(f"/v1/inbox/ws: not measured, the handshake failed: {exc}")
        print(
            f"measured at {commit}; load average {load:.1f} (1 min) before the rows, "
            f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} CPUs"
        )
        print()
        print_rows(
            f"HTTP: {args.threads} client threads (httpx, keep-alive) x {args.duration:g} s per "
            "row, one uvicorn worker; ratios against the mean of the two /healthz rows",
            "requests",
            http,
        )
        print()
        print_rows(
            f"live: {args.ws_clients} connections of one user, {args.messages} messages one at "
            "a time; latency per (message, connection); ratios against the redis row",
            "messages",
            live,
        )
        for note in notes:
            print(f"  {note}")
        return 0
    except BenchError as exc:
        keep = True
        print(f"api.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("api.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"api.py: the server's log is kept in {workdir}", file=sys.stderr)
            shutil.rmtree(workdir / "stack", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
