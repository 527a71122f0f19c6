"""``smart-alerts demo``: the real job on the embedded stack, over the bundled sample.

Starts the broker, PostgreSQL and Redis (or uses the servers named in the environment), creates
the topics, migrates, loads the example rules, profiles and feedback, replays an hour of market
ticks plus a few malformed messages, runs the dataflow to the end of its input and prints what
it did, read back from where it was written. Without an e-mail provider configured, e-mail is
delivered over SMTP to a local mail catcher (the messages land in ``<state>/mail``).

With ``--serve`` it then keeps the stack running, runs the job live on it (``smart-alerts
run`` in a child process, its log in ``<state>/job.log``) and serves the HTTP API on uvicorn
(127.0.0.1:8080, or a free port when that one is taken) until SIGINT/SIGTERM. The API accepts
HS256 tokens signed with a secret made for this run only; the demo prints a token of the demo
user, the inbox URL carrying it, a curl example and the commands that publish a tick by hand.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.embedded import _die_with_parent_preexec, stack_from_env_or_embedded
from connectors.history import HistoryReader
from connectors.mail_catcher import MailCatcher
from pipeline import metrics
from pipeline.cli import commands
from pipeline.cli.commands import Echo, Summary, publish, read_topic
from pipeline.config import Settings, load_settings
from pipeline.messages import Feedback, Profile, Rule, Tick
from pipeline.metrics import counter_value
from sinks.kafka import CheckedProducer
from sinks.redis_store import InAppFeed, RelevanceStore

SAMPLES = Path(__file__).parent / "samples"
# The sample user whose feed the printed inbox URL opens (every channel includes in_app).
DEMO_USER = "u-alice"
DEMO_ISSUER = "smart-alerts-demo"
DEMO_AUDIENCE = "smart-alerts-api"
# Long enough for an afternoon of trying; the secret, and so every token, dies with the run.
DEMO_TOKEN_SECONDS = 12 * 3600
DEMO_WINDOW_SECONDS = 300
# The sample's ticks are from a past day; alerts about them are years old by the wall clock.
SAMPLE_PUSH_AGE_LIMITS = {
    f"stale_{priority}_seconds": 100 * 365 * 86400
    for priority in ("low", "medium", "high", "critical")
}
# SIGTERM makes the live job close its input, drain its sinks and give provider calls
# ``engine.shutdown_grace_seconds`` (10 s by default); past this it is killed.
JOB_STOP_SECONDS = 60


def run_demo(
    state_dir: Path, echo: Echo = print, config: Path | None = None, *, serve: bool = False
) -> Summary:
    """The demo; with ``serve`` it then serves the API over the same stack until SIGINT or
    SIGTERM, and returns once the API and the stack have stopped."""
    with stack_from_env_or_embedded(state_dir) as urls:
        echo(f"stack: kafka {urls.kafka_bootstrap} | {urls.database_url} | {urls.redis_url}")
        settings = load_settings(
            config,
            kafka_bootstrap_servers=urls.kafka_bootstrap,
            database_url=urls.database_url,
            redis_url=urls.redis_url,
            engine={"window_seconds": DEMO_WINDOW_SECONDS},
            personalization=SAMPLE_PUSH_AGE_LIMITS,
        )
        echo(
            "the sample is from 2026-01-05: the push age limits are raised so that it is "
            "pushed (a live job shows alerts that old in-app only, recorded STALE)"
        )
        with contextlib.ExitStack() as resources:
            catcher = None
            if settings.delivery.email_provider is None:
                catcher = resources.enter_context(MailCatcher(state_dir / "mail"))
                echo(f"e-mail: SMTP to a local mail catcher on 127.0.0.1:{catcher.port}")
                settings = with_mail_catcher(settings, catcher.port)
            if serve:
                settings = with_fresh_recovery(settings, state_dir / "recovery")
            summary = run_demo_on(settings, echo, catcher)
            if serve:
                serve_api(settings, echo, state_dir)
            return summary


def with_mail_catcher(settings: Settings, port: int) -> Settings:
    """The settings with e-mail going over plain SMTP to a MailCatcher on ``port``."""
    delivery = settings.delivery.model_copy(
        update={
            "email_provider": "smtp",
            "email_from": settings.delivery.email_from or "alerts@vs9-demo.invalid",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "smtp_username": None,
        }
    )
    return settings.model_copy(update={"delivery": delivery})


def with_fresh_recovery(settings: Settings, directory: Path) -> Settings:
    """The settings with recovery snapshots in ``directory``, emptied first: the live job of
    ``--serve`` resumes where the bounded run stopped, instead of reading the sample again (a
    rule made meanwhile would fire on the sample's old ticks), and a snapshot of an earlier
    run names offsets of topics that are gone with its stack."""
    shutil.rmtree(directory, ignore_errors=True)
    recovery = settings.recovery.model_copy(update={"directory": directory.resolve()})
    return settings.model_copy(update={"recovery": recovery})


def run_demo_on(
    settings: Settings, echo: Echo = print, catcher: MailCatcher | None = None
) -> Summary:
    from pipeline.dataflow import run

    commands.topics_create(settings, echo)
    commands.run_migrations(settings, echo)
    load_sample(settings, echo)
    echo("running the dataflow over the sample ...")
    read_before = _reads(settings)
    started = time.monotonic()
    run(settings, bounded=True)
    echo(f"dataflow finished in {time.monotonic() - started:.1f} s")
    summary = summarize(settings, read_before)
    if catcher is not None:
        summary.add("e-mails caught", len(catcher.messages), str(catcher.directory))
    echo(summary.render())
    return summary


def load_sample(settings: Settings, echo: Echo) -> Counter[str]:
    topics = settings.topics
    producer = CheckedProducer(settings.require_servers()[0])
    produced: Counter[str] = Counter()
    try:
        for topic, model, name in (
            (topics.rules, Rule, "rules.json"),
            (topics.profiles, Profile, "profiles.json"),
            (topics.feedback, Feedback, "feedback.jsonl"),
            (topics.ticks, Tick, "ticks.csv"),
        ):
            messages = commands.load_messages(SAMPLES / name, model)
            produced[topic] += publish(producer, topic, messages, echo=echo)
    finally:
        producer.close()
    produced["malformed"] = commands.produce_raw(settings, SAMPLES / "bad_messages.jsonl")
    echo("loaded sample: " + ", ".join(f"{n} {topic}" for topic, n in produced.items()))
    return produced


def _reads(settings: Settings) -> dict[tuple[str, str], float]:
    """The job's input counters (process-wide, so the summary reports this run's increase)."""
    return {
        (topic, outcome): counter_value(metrics.EVENTS, topic=topic, outcome=outcome)
        for topic in settings.topics.inputs()
        for outcome in ("ok", "dead_letter")
    }


def summarize(settings: Settings, read_before: dict[tuple[str, str], float]) -> Summary:
    bootstrap, database_url, redis_url = settings.require_servers()
    topics = settings.topics
    summary = Summary()
    read_after = _reads(settings)
    for topic in topics.inputs():
        valid = read_after[(topic, "ok")] - read_before[(topic, "ok")]
        invalid = read_after[(topic, "dead_letter")] - read_before[(topic, "dead_letter")]
        rejected = f" + {invalid:.0f} invalid" if invalid else ""
        summary.add(f"read from {topic}", f"{valid:.0f}{rejected}", f"kafka {topic}")

    with HistoryReader(database_url) as history:
        per_rule = history.alerts_per_rule()
        for rule_id, count in per_rule:
            summary.add(f"alerts: {rule_id}", count, "postgres triggered_alerts")
        summary.add("alerts triggered", sum(c for _, c in per_rule), "postgres triggered_alerts")
        for status, count in history.alerts_by_status():
            summary.add(f"alerts {status}", count, "postgres triggered_alerts.status")
        for action, count in history.feedback_by_action():
            summary.add(f"feedback {action}", count, "postgres alert_feedback")
        summary.add("notifications", history.notification_count(), "postgres consolidated_alerts")
        for channel, status, error, count in history.deliveries_by_outcome():
            outcome = f"{status} ({error})" if status == "FAILED" and error else status
            summary.add(f"deliveries {channel} {outcome}", count, "postgres delivery_logs")
        users = history.user_ids_with_notifications()

    summary.add("alerts on topic", len(read_topic(bootstrap, topics.triggered)), topics.triggered)
    summary.add(
        "notifications on topic",
        len(read_topic(bootstrap, topics.notifications)),
        topics.notifications,
    )
    summary.add("dead letters", len(read_topic(bootstrap, topics.dlq)), f"kafka {topics.dlq}")

    feed = InAppFeed(redis_url)
    relevance = RelevanceStore(redis_url)
    try:
        entries = sum(len(feed.entries(user)) for user in users)
        summary.add("in-app feed entries", entries, "redis sa:inapp:{user}")
        scores: dict[str, Any] = {}
        for user in ("u-alice", "u-carol"):
            for name, value in relevance.read(user).items():
                if not name.startswith("updated_at"):
                    scores[f"{user} {name}"] = round(value, 3)
        for name, value in sorted(scores.items()):
            summary.add(f"relevance {name}", value, "redis sa:relevance:{user}")
    finally:
        feed.close()
        relevance.close()
    return summary


# ---------------------------------------------------------------- demo --serve


@dataclass(frozen=True)
class DemoAccess:
    """How the demo's users reach the API and the live job: the API's address, a token of the
    demo user, and the servers a hand-published tick goes to."""

    url: str
    token: str
    servers: dict[str, str]  # KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL
    command: str  # how this installation's ``smart-alerts`` is run

    def lines(self) -> list[str]:
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in self.servers.items())
        return [
            f"API: {self.url} (OpenAPI at {self.url}/docs)",
            f"inbox of {DEMO_USER}: {self.url}/inbox#token={self.token}",
            "try it:",
            f"  export TOKEN={self.token}",
            f'  curl -H "Authorization: Bearer $TOKEN" {self.url}/v1/inbox',
            "publish a tick by hand (the live job evaluates it; ts is the current time):",
            f"  export {exports}",
            f'  echo \'{{"symbol":"AAPL","ts":"\'$(date -u +%FT%TZ)\'","price":201}}\''
            f" > tick.jsonl && {self.command} replay tick.jsonl --topic ticks",
            "Ctrl-C to stop",
        ]


def smart_alerts_command() -> str:
    """The ``smart-alerts`` of this interpreter's environment, as a shell command."""
    script = Path(sys.executable).parent / "smart-alerts"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m pipeline.cli.main"


def job_environment(settings: Settings) -> dict[str, str]:
    """The environment of a job that runs with exactly ``settings``: this one's, without the
    variables that configure smart-alerts (the demo's overrides are in ``settings`` already,
    and the API's token secret is no business of the job), plus ``settings`` as variables."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SMART_ALERTS_")
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")
    }
    return {**inherited, **settings.as_environment()}


def start_job(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``smart-alerts run`` (unbounded) over ``settings``, its output appended to ``log_path``.

    With the bounded run's recovery directory in ``settings`` it resumes from that run's last
    snapshot: its state, and its input offsets at the end of the sample. It gets a session of
    its own, so a Ctrl-C in the terminal reaches the demo alone, which stops it in order; and
    it is killed if the demo dies without stopping it."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=job_environment(settings),
            start_new_session=True,
            preexec_fn=_die_with_parent_preexec(),
            close_fds=True,
        )


def stop_job(job: subprocess.Popen[bytes], log_path: Path, echo: Echo) -> None:
    """SIGTERM, then wait for the job to drain and exit (killed after ``JOB_STOP_SECONDS``)."""
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(JOB_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            echo(f"the job did not stop within {JOB_STOP_SECONDS} s: killed (log: {log_path})")
            job.kill()
            job.wait()
            return
    if job.returncode != 0:
        echo(f"the job exited with {job.returncode} (log: {log_path})")


def demo_api_settings(settings: Settings, port: int) -> Settings:
    """``settings`` with an [api] section accepting HS256 tokens from this run's secret, which
    is put in the process environment (where the API's token verifier reads it)."""
    from api.auth import HS256_SECRET_ENV

    os.environ[HS256_SECRET_ENV] = secrets.token_urlsafe(48)
    api = settings.api.model_copy(
        update={
            "host": "127.0.0.1",
            "port": port,
            "jwt_hs256": True,
            "jwt_issuer": DEMO_ISSUER,
            "jwt_audience": DEMO_AUDIENCE,
        }
    )
    return settings.model_copy(update={"api": api})


def demo_token(settings: Settings, user_id: str = DEMO_USER, roles: list[str] | None = None) -> str:
    """A token of ``user_id`` signed with this run's secret (``demo_api_settings`` made it)."""
    import jwt

    from api.auth import HS256_SECRET_ENV

    now = int(time.time())
    claims = {
        "sub": user_id,
        "roles": roles or ["user"],
        "iss": settings.api.jwt_issuer,
        "aud": settings.api.jwt_audience,
        "iat": now,
        "exp": now + DEMO_TOKEN_SECONDS,
    }
    return jwt.encode(claims, os.environ[HS256_SECRET_ENV], algorithm="HS256")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or on a free port of ``host`` when that one is
    taken; handed to uvicorn, so no other process can take the port in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            sock.close()
            raise
        sock.bind((host, 0))
    sock.listen(128)
    return sock


def serve_api(settings: Settings, echo: Echo = print, state_dir: Path = Path(".")) -> None:
    """Run the job live and serve the API over ``settings``' stores until SIGINT/SIGTERM (a
    second one forces the exit of open connections), then stop the job, then the API."""
    import uvicorn

    from api.app import create_app

    job_log = state_dir / "job.log"
    with listen("127.0.0.1", settings.api.port) as sock:
        port = int(sock.getsockname()[1])
        job_settings = settings
        settings = demo_api_settings(settings, port)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                log_level="info",
                log_config=None,  # the lines go through pipeline/logs.py's set-up
                proxy_headers=False,
                lifespan="on",
                # open WebSocket/SSE streams must not hold the shutdown for long
                timeout_graceful_shutdown=5,
            )
        )
        # uvicorn in a thread of its own installs no signal handlers: this thread's handlers
        # decide, so the stop is an orderly return (exit 0) rather than a re-raised signal.
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
        )
        stop = threading.Event()

        def on_signal(_signum: int, _frame: object) -> None:
            if stop.is_set():
                server.force_exit = True
            stop.set()
            server.should_exit = True

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, on_signal) for signum in handled}
        job: subprocess.Popen[bytes] | None = None
        try:
            thread.start()
            while not server.started:
                if not thread.is_alive():
                    raise commands.CommandError("the API did not start (its log above says why)")
                time.sleep(0.05)
            job = start_job(job_settings, job_log)
            echo(f"job: running live on the same topics (pid {job.pid}), its log in {job_log}")
            bootstrap, database_url, redis_url = job_settings.require_servers()
            servers = {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
            }
            access = DemoAccess(
                f"http://127.0.0.1:{port}", demo_token(settings), servers, smart_alerts_command()
            )
            for line in access.lines():
                echo(line)
            sys.stdout.flush()
            job_reported = False
            while not stop.wait(0.5) and thread.is_alive():
                if not job_reported and job.poll() is not None:
                    job_reported = True
                    echo(
                        f"the job stopped by itself (exit {job.returncode}): new rules and ticks "
                        f"are not evaluated; its log: {job_log}"
                    )
            if not stop.is_set():
                raise commands.CommandError("the API stopped by itself (its log above says why)")
            echo("stopping the job, the API and the stack ...")
        finally:
            if job is not None:
                stop_job(job, job_log, echo)
            server.should_exit = True
            thread.join(timeout=30)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
