"""The job's ops endpoints: /metrics, /healthz and /readyz on one small HTTP server.

- ``/metrics``: the Prometheus page of ``pipeline/metrics.py``.
- ``/healthz`` (liveness): 200 while this process's dataflow polls its input; 503 naming the
  stall once it has not for ``[ops] stall_seconds`` (a wedged worker: a restart is the cure).
- ``/readyz`` (readiness): the broker, PostgreSQL and Redis each answer within
  ``[ops] check_timeout_seconds``, and this process has read its reference partitions (rules,
  positions, profiles) to their end; 200 or 503, with every check's status in a JSON body.

Everything else is a 404. The server runs on daemon threads beside the dataflow; a background
thread repeats the readiness checks every ``[ops] ready_interval_seconds`` for the
``smart_alerts_ready`` gauge, so the gauge does not depend on anyone calling /readyz.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import redis
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from connectors.kafka import describe_kafka_error
from connectors.topics import admin_client
from pipeline import metrics
from pipeline.config import Settings

log = logging.getLogger("smart_alerts.ops")

Check = Callable[[float], None]  # raises with the reason when the dependency is not usable


@dataclass(frozen=True)
class Verdict:
    ok: bool
    body: dict[str, Any]

    @property
    def status(self) -> int:
        return 200 if self.ok else 503


class Probes:
    """The liveness and readiness verdicts of this process."""

    def __init__(self, settings: Settings) -> None:
        self._ops = settings.ops
        bootstrap, database_url, redis_url = settings.require_servers()
        timeout = self._ops.check_timeout_seconds
        # Long-lived clients: a check reuses their connections instead of opening new ones.
        # librdkafka's own connection errors stay quiet (log_level 0): /readyz reports the broker.
        self._admin = admin_client(
            bootstrap, {"socket.timeout.ms": max(10, int(timeout * 1000)), "log_level": 0}
        )
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._checks: dict[str, Check] = {
            "kafka": self._kafka,
            "postgresql": lambda t: _postgres(database_url, t),
            "redis": lambda t: self._redis_ping(),
        }

    def health(self) -> Verdict:
        stalled = metrics.STATUS.stalled_for()
        limit = self._ops.stall_seconds
        if stalled > limit:
            reason = (
                f"the dataflow has not polled its input for {stalled:.0f} s (limit {limit:g} s): "
                "a worker is wedged; restart the process"
            )
            return Verdict(False, {"status": "stalled", "reason": reason})
        return Verdict(True, {"status": "ok", "last_poll_seconds_ago": round(stalled, 3)})

    def readiness(self) -> Verdict:
        timeout = self._ops.check_timeout_seconds
        checks: dict[str, dict[str, str]] = {}
        for name, check in self._checks.items():
            try:
                check(timeout)
                checks[name] = {"status": "ok"}
            except Exception as exc:  # any failure of a check is that dependency's status
                checks[name] = {"status": "unavailable", "reason": _reason(exc)}
        if metrics.STATUS.reference_loaded:
            checks["reference_topics"] = {"status": "ok"}
        else:
            checks["reference_topics"] = {
                "status": "loading",
                "reason": "the rules, positions and profiles partitions of this process are "
                "not read to their end yet",
            }
        failing = [name for name, check in checks.items() if check["status"] != "ok"]
        ok = not failing
        metrics.READY.set(1 if ok else 0)
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "checks": checks}
        if failing:
            body["failing"] = failing
        return Verdict(ok, body)

    def close(self) -> None:
        self._redis.close()

    def _kafka(self, timeout: float) -> None:
        try:
            self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise ConnectionError(describe_kafka_error(exc)) from exc

    def _redis_ping(self) -> None:
        self._redis.ping()


def _postgres(url: str, timeout: float) -> None:
    with psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout))) as conn:
        conn.execute("SELECT 1")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"[:300]


class OpsServer:
    """Serves the ops endpoints on ``host:port`` (port 0: a free one, see ``port``)."""

    def __init__(self, probes: Probes, host: str, port: int, ready_interval: float) -> None:
        self.probes = probes
        self._http = ThreadingHTTPServer((host, port), _handler(probes))
        self._http.daemon_threads = True
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="ops-http", daemon=True),
            threading.Thread(
                target=self._refresh_ready, args=(ready_interval,), name="ops-ready", daemon=True
            ),
        ]

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> OpsServer:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        self.probes.close()

    def _refresh_ready(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.probes.readiness()
            except Exception:  # a check that cannot even run must not end the refresh
                log.exception("readiness check failed")
            self._stop.wait(interval)


def serve(settings: Settings, *, port: int | None = None) -> OpsServer:
    """Start the ops server of ``settings.ops`` (``port`` overrides its port)."""
    ops = settings.ops
    metrics.record_build_info()
    server = OpsServer(
        Probes(settings), ops.host, ops.port if port is None else port, ops.ready_interval_seconds
    )
    log.info("ops endpoints on http://%s:%d (/metrics, /healthz, /readyz)", ops.host, server.port)
    return server.start()


def _handler(probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "smart-alerts-ops"

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._verdict(probes.health())
            elif path == "/readyz":
                self._verdict(probes.readiness())
            else:
                body = {"status": "not_found", "paths": ["/metrics", "/healthz", "/readyz"]}
                self._send(404, json.dumps(body).encode(), "application/json")

        def _verdict(self, verdict: Verdict) -> None:
            self._send(verdict.status, json.dumps(verdict.body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would drown the job's log.
            log.debug("ops %s", format % args)

    return Handler
