"""Delivery: the outbox, retries, deadlines, circuit breakers and rate limits of every channel.

Order of events for one (notification, channel, destination):
1. ``submit`` records it PENDING in ``delivery_logs`` (the transactional outbox) before anything
   is sent; a row that is DELIVERED already is skipped, so replays never send twice;
2. a worker of the channel takes it from a bounded queue: a full queue leaves the row PENDING
   for the next ``resume`` scan, so a slow or dead provider never blocks the dataflow;
3. one attempt through the channel's Sender, under its rate limits and its provider's circuit
   breaker; the outcome is written back: DELIVERED (with the provider's message id), RETRYING
   (with the next attempt's time: exponential backoff with full jitter, at least the provider's
   Retry-After) or FAILED (a permanent error, or the channel's deadline passed: an alert
   minutes late is worthless);
4. on start, and every ``resume_seconds``, open rows are queued again, so a crash between
   recording and sending delivers after the restart, exactly once.
Every worker of the job has a core and scans the whole outbox, so two cores may hold a job for
one row: before each attempt the row is claimed (SENDING, with a lease) and only the core whose
claim succeeds sends. Destinations a provider called dead are recorded and not tried again.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pipeline.logs import delivery_fields
from pipeline.masking import mask_destination
from pipeline.messages import Channel, Notification
from pipeline.metrics import CIRCUIT_OPEN, DELIVERY_ATTEMPTS, DELIVERY_SECONDS, OUTBOX_DEPTH
from sinks.channels.base import Delivery, PermanentError, Sender, SendResult, TransientError
from sinks.postgres import Claim, DeliveryRecord, OpenDelivery

log = logging.getLogger("smart_alerts.delivery")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``base · 2^(attempt−1)`` capped at ``cap``, full jitter, within ``deadline``."""

    base: float = 1.0
    cap: float = 60.0
    deadline: float = 300.0  # seconds after the notification was recorded

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)


DEFAULT_POLICIES = {
    Channel.PUSH: RetryPolicy(deadline=300),
    Channel.EMAIL: RetryPolicy(deadline=900),
    Channel.SMS: RetryPolicy(deadline=300),
    Channel.VOICE: RetryPolicy(deadline=120),
    Channel.WEBHOOK: RetryPolicy(deadline=600),
    Channel.IN_APP: RetryPolicy(deadline=3600),
}


class CircuitBreaker:
    """Per provider: open after ``threshold`` consecutive transient failures, for ``cooldown``
    seconds; then one trial call decides whether it closes again."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Calls are refused now (open, and the cooldown before the trial call not over)."""
        opened_at = self.opened_at
        return opened_at is not None and self.clock() - opened_at < self.cooldown

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.clock() - self.opened_at >= self.cooldown:
                self.opened_at = self.clock()  # half-open: this caller is the trial
                return True
            return False

    def record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.failures, self.opened_at = 0, None
                return
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = self.clock()


class RateLimiter:
    """At most ``limit`` sends per ``per`` seconds for each key (a sliding log)."""

    def __init__(self, limit: int, per: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.per, self.clock = limit, per, clock
        self.sent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_time(self, key: str) -> float:
        """0 and the send is counted, or how long to wait before it may go."""
        with self._lock:
            now = self.clock()
            log_ = self.sent.setdefault(key, deque())
            while log_ and log_[0] <= now - self.per:
                log_.popleft()
            if len(log_) < self.limit:
                log_.append(now)
                return 0.0
            return log_[0] + self.per - now


class Outbox(Protocol):
    def record_deliveries(self, records: list[DeliveryRecord]) -> list[bool]: ...
    def claim_delivery(
        self, notification_id: str, channel: str, destination: str, lease_seconds: float,
        provider: str | None = None,
    ) -> Claim: ...  # fmt: skip
    def mark_delivered(
        self, notification_id: str, channel: str, destination: str, provider_message_id: str | None
    ) -> None: ...
    def mark_failed(
        self, notification_id: str, channel: str, destination: str, error: str, *, retry: bool,
        next_attempt_at: datetime | None = None,
    ) -> None: ...  # fmt: skip
    def disable_destination(self, channel: str, destination: str, reason: str) -> None: ...
    def open_deliveries(self, channels: Iterable[str], limit: int) -> list[OpenDelivery]: ...
    def outbox_depth(self, channels: Iterable[str]) -> dict[tuple[str, str], int]: ...
    def release_claim(self, notification_id: str, channel: str, destination: str) -> None: ...


@dataclass(order=True)
class _Job:
    due: float
    sequence: int
    notification: Notification = field(compare=False)
    channel: Channel = field(compare=False)
    destination: str = field(compare=False)
    attempt: int = field(compare=False)
    recorded_at: float = field(compare=False)
    secret_ref: str | None = field(compare=False, default=None)
    last_error: str | None = field(compare=False, default=None)


class DeliveryCore:
    def __init__(
        self,
        outbox: Outbox,
        senders: dict[Channel, Sender],
        *,
        policies: dict[Channel, RetryPolicy] | None = None,
        queue_size: int = 10_000,
        per_user_per_minute: int = 30,
        per_channel_per_second: int = 50,
        lease_seconds: float = 120.0,
        resume_seconds: float | None = None,
        threads_per_channel: int = 4,
        breaker_failures: int = 5,
        breaker_cooldown_seconds: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self.outbox = outbox
        self.senders = senders
        self.policies = {**DEFAULT_POLICIES, **(policies or {})}
        self.breakers = {
            sender.provider: CircuitBreaker(breaker_failures, breaker_cooldown_seconds)
            for sender in senders.values()
        }
        self.user_limit = RateLimiter(per_user_per_minute, 60.0)
        self.channel_limit = RateLimiter(per_channel_per_second, 1.0)
        # Unbounded so that a worker putting a job back never blocks; the bound is on the jobs
        # a channel holds (queued, in hand, or waiting for a retry), counted in _inflight.
        self.queues: dict[Channel, queue.PriorityQueue[_Job]] = {
            channel: queue.PriorityQueue() for channel in senders
        }
        self.queue_size = queue_size
        self.lease_seconds = lease_seconds
        self.rng = random.Random(seed)
        self._outbox_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._inflight: dict[Channel, set[tuple[str, str]]] = {
            channel: set() for channel in senders
        }
        self._sequence = 0
        self._in_hand: dict[str, _Job] = {}  # thread name -> the job it is attempting
        self._stop = threading.Event()
        # Provider calls take 50-500 ms: several threads per channel keep a burst moving.
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(channel,),
                name=f"deliver-{channel.value}-{index}",
                daemon=True,
            )
            for channel in senders
            for index in range(threads_per_channel)
        ]
        if resume_seconds is not None:
            self._threads.append(
                threading.Thread(
                    target=self._resume_every,
                    args=(resume_seconds,),
                    name="deliver-resume",
                    daemon=True,
                )  # fmt: skip
            )
        _CORES.add(self)
        for channel, sender in senders.items():
            CIRCUIT_OPEN.labels(channel=channel.value).set_function(
                functools.partial(_any_open, sender.provider)
            )
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ input

    def submit(
        self,
        notification: Notification,
        channel: Channel,
        destination: str,
        secret_ref: str | None = None,
    ) -> bool:
        """Record PENDING, then queue; False when it was delivered before (nothing to do)."""
        return self.submit_many([(notification, channel, destination, secret_ref)])[0]

    def submit_many(
        self, requests: list[tuple[Notification, Channel, str, str | None]]
    ) -> list[bool]:
        """``submit`` for a batch: one outbox transaction for all of them."""
        records = [
            DeliveryRecord(
                note.notification_id,
                note.user_id,
                channel.value,
                destination,
                ref,
                note.window_start,
            )  # fmt: skip
            for note, channel, destination, ref in requests
        ]
        with self._outbox_lock:
            fresh = self.outbox.record_deliveries(records)
        self.enqueue_recorded([r for r, is_open in zip(requests, fresh, strict=True) if is_open])
        return fresh

    def enqueue_recorded(
        self, requests: list[tuple[Notification, Channel, str, str | None]]
    ) -> None:
        """Queue deliveries the caller recorded PENDING in the outbox itself."""
        now = time.time()
        for note, channel, destination, ref in requests:
            self._enqueue(note, channel, destination, 1, now, ref)

    def resume(self) -> int:
        """Queue the open rows of this core's channels (after a restart): returns how many.
        Also refreshes the outbox-depth gauge of these channels."""
        channels = [channel.value for channel in self.senders]
        with self._outbox_lock:
            rows = self.outbox.open_deliveries(
                channels,
                self.queue_size * len(self.senders),  # no more than the queues can take
            )
            depth = self.outbox.outbox_depth(channels)
        for channel in channels:
            for status in OPEN_STATUSES:
                OUTBOX_DEPTH.labels(channel=channel, status=status).set(
                    depth.get((channel, status), 0)
                )
        for row in rows:
            due = row.next_attempt_at.timestamp() if row.next_attempt_at is not None else None
            self._enqueue(
                row.notification, Channel(row.channel), row.destination, row.attempts + 1,
                row.created_at.timestamp(), row.secret_ref, due,
            )  # fmt: skip
        return len(rows)

    def _resume_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.resume()
            except Exception:  # the database may be back at the next scan
                log.exception("delivery resume scan failed")

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until no attempt is under way and none is due before ``timeout`` ends (a
        bounded run's end: a retry due later stays RETRYING for the next start's resume)."""
        end = time.time() + timeout
        while not all(_idle_until(q, end) for q in self.queues.values()):
            if time.time() >= end:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads: no new attempt starts, a call under way gets ``timeout`` in all to
        finish. The claim of a call still under way then is released (its row is RETRYING, due
        at once), so the next start sends it without waiting for the lease to lapse."""
        self._stop.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        with self._jobs_lock:
            stuck = list(self._in_hand.values())
        for job in stuck:
            with self._outbox_lock:
                self.outbox.release_claim(
                    job.notification.notification_id, job.channel.value, job.destination
                )
        if stuck:
            log.warning("released %d delivery claims of calls still under way at close", len(stuck))
        for sender in self.senders.values():
            sender.close()

    def _enqueue(
        self, notification: Notification, channel: Channel, destination: str, attempt: int,
        recorded_at: float, secret_ref: str | None, due: float | None = None,
    ) -> None:  # fmt: skip
        if channel not in self.queues:
            log.warning(
                "no sender for channel %s; %s stays PENDING", channel, notification.notification_id,
                extra=delivery_fields(notification, channel.value, destination, "PENDING", attempt),
            )  # fmt: skip
            return
        key = (notification.notification_id, destination)
        with self._jobs_lock:
            held = self._inflight[channel]
            if key in held:
                return  # already held: a resume scan must not send it twice
            if len(held) >= self.queue_size:
                log.warning(
                    "%s queue full: %s stays PENDING until the next resume",
                    channel.value, notification.notification_id,
                    extra=delivery_fields(
                        notification, channel.value, destination, "PENDING", attempt
                    ),
                )  # fmt: skip
                return
            held.add(key)
            self._sequence += 1
            sequence = self._sequence
        job = _Job(
            due or time.time(), sequence, notification, channel, destination, attempt,
            recorded_at, secret_ref,
        )  # fmt: skip
        self.queues[channel].put(job)

    def _done(self, job: _Job) -> None:
        with self._jobs_lock:
            self._inflight[job.channel].discard((job.notification.notification_id, job.destination))

    # ------------------------------------------------------------ workers

    def _work(self, channel: Channel) -> None:
        q = self.queues[channel]
        while not self._stop.is_set():
            try:
                job = q.get(timeout=0.1)
            except queue.Empty:
                continue
            name = threading.current_thread().name
            try:
                if job.due > time.time():  # not due yet: look again shortly
                    self._stop.wait(min(job.due - time.time(), 0.05))
                if job.due > time.time() or self._stop.is_set():  # a stop starts no attempt
                    self._requeue(job, job.due)
                    continue
                with self._jobs_lock:
                    self._in_hand[name] = job
                self._attempt(job)
            except Exception:  # a bug must not kill the worker; the row stays open for resume
                log.exception(
                    "delivery worker error for %s", job.notification.notification_id,
                    extra=_job_fields(job, "SENDING"),
                )  # fmt: skip
                self._done(job)
            finally:
                with self._jobs_lock:
                    self._in_hand.pop(name, None)
                q.task_done()

    def _requeue(self, job: _Job, due: float) -> None:
        with self._jobs_lock:
            self._sequence += 1
            job.due, job.sequence = due, self._sequence
        self.queues[job.channel].put(job)

    def _attempt(self, job: _Job) -> None:
        sender = self.senders[job.channel]
        policy = self.policies[job.channel]
        note, channel, destination = job.notification, job.channel.value, job.destination
        if time.time() - job.recorded_at > policy.deadline:
            if self._claim(job) is not None:
                self._fail(job, _expired(job.attempt - 1, job.last_error), retry=False)
                DELIVERY_ATTEMPTS.labels(channel=channel, outcome="expired").inc()
                log.warning(
                    "expired %s via %s: past the channel's deadline before attempt %d",
                    note.notification_id, channel, job.attempt,
                    extra={**_job_fields(job, "FAILED"), "outcome": "expired"},
                )  # fmt: skip
            return
        breaker = self.breakers[sender.provider]
        limited = max(
            self.user_limit.wait_time(f"{note.user_id}:{channel}"),
            self.channel_limit.wait_time(channel),
        )
        if limited > 0 or not breaker.allow():
            self._requeue(job, time.time() + max(limited, 1.0))
            DELIVERY_ATTEMPTS.labels(
                channel=channel, outcome="throttled" if limited > 0 else "circuit_open"
            ).inc()
            return
        claim = self._claim(job)
        if claim is None:
            return
        if claim.disabled_reason is not None:
            self._fail(job, f"destination disabled: {claim.disabled_reason}", retry=False)
            DELIVERY_ATTEMPTS.labels(channel=channel, outcome="disabled").inc()
            log.warning(
                "disabled %s via %s: the destination is disabled (%s)",
                note.notification_id, channel, claim.disabled_reason,
                extra={**_job_fields(job, "FAILED"), "outcome": "disabled"},
            )  # fmt: skip
            return
        key = f"{note.notification_id}:{channel}:{destination}"
        delivery = Delivery(note, job.channel, destination, job.attempt, key, job.secret_ref)
        started = time.monotonic()
        try:
            result = _send(sender, delivery)
        except PermanentError as exc:
            breaker.record(True)  # the provider answered: it is up
            if exc.disable_destination:
                with self._outbox_lock:
                    self.outbox.disable_destination(channel, destination, exc.reason)
            self._fail(job, exc.reason, retry=False)
            self._attempted(job, "permanent_error", started, exc.reason)
            return
        except TransientError as exc:
            breaker.record(False)
            delay = policy.delay(job.attempt, exc.retry_after, self.rng)
            job.last_error = exc.reason
            if time.time() + delay - job.recorded_at > policy.deadline:
                self._fail(job, _expired(job.attempt, exc.reason), retry=False)
                self._attempted(job, "expired", started, exc.reason)
                return
            due = time.time() + delay
            self._fail(job, exc.reason, retry=True, next_attempt=due)
            self._attempted(job, "retry", started, f"{exc.reason}; next in {delay:.1f} s")
            job.attempt += 1
            self._requeue(job, due)
            return
        breaker.record(True)
        with self._outbox_lock:
            self.outbox.mark_delivered(
                note.notification_id, channel, destination, result.provider_message_id
            )
        self._done(job)
        self._attempted(job, "delivered", started, f"id {result.provider_message_id}")

    def _attempted(self, job: _Job, outcome: str, started: float, detail: str) -> None:
        """One log line and the metrics of a provider call."""
        seconds = time.monotonic() - started
        channel = job.channel.value
        DELIVERY_SECONDS.labels(channel=channel).observe(seconds)
        DELIVERY_ATTEMPTS.labels(channel=channel, outcome=outcome).inc()
        log.log(
            logging.INFO if outcome == "delivered" else logging.WARNING,
            "%s %s via %s to %s: attempt %d, %.0f ms, %s",
            outcome, job.notification.notification_id, channel,
            mask_destination(channel, job.destination), job.attempt, seconds * 1000, detail,
            extra={
                **_job_fields(job, _STATUS_AFTER[outcome]),
                "outcome": outcome,
                "duration_ms": round(seconds * 1000, 1),
            },
        )  # fmt: skip

    def _claim(self, job: _Job) -> Claim | None:
        """The claim on the job's row, or None (and the job is dropped) when another worker
        holds it or it is closed already."""
        with self._outbox_lock:
            claim = self.outbox.claim_delivery(
                job.notification.notification_id, job.channel.value, job.destination,
                self.lease_seconds, self.senders[job.channel].provider,
            )  # fmt: skip
        if not claim.claimed:
            self._done(job)
            return None
        return claim

    def _fail(
        self, job: _Job, reason: str, *, retry: bool, next_attempt: float | None = None
    ) -> None:
        at = datetime.fromtimestamp(next_attempt, UTC) if next_attempt is not None else None
        with self._outbox_lock:
            self.outbox.mark_failed(
                job.notification.notification_id, job.channel.value, job.destination, reason[:1000],
                retry=retry, next_attempt_at=at,
            )  # fmt: skip
        if not retry:
            self._done(job)


OPEN_STATUSES = ("PENDING", "SENDING", "RETRYING")

# Every core of this process (one per worker): a provider's circuit gauge is 1 while any of
# their breakers for it is open.
_CORES: weakref.WeakSet[DeliveryCore] = weakref.WeakSet()


def _any_open(provider: str) -> float:
    return float(
        any(core.breakers[provider].is_open for core in list(_CORES) if provider in core.breakers)
    )


def _idle_until(jobs: queue.PriorityQueue[_Job], end: float) -> bool:
    with jobs.mutex:
        in_hand = jobs.unfinished_tasks - len(jobs.queue)
        return in_hand == 0 and all(job.due > end for job in jobs.queue)


def _send(sender: Sender, delivery: Delivery) -> SendResult:
    """The sender's answer; anything it raises besides our two errors (an SDK tripping over an
    odd response, say) is transient, so the row is retried and then FAILED with the reason
    rather than left SENDING."""
    try:
        return sender.send(delivery)
    except (PermanentError, TransientError):
        raise
    except Exception as exc:
        log.exception(
            "%s sender raised %s", sender.provider, type(exc).__name__,
            extra=delivery_fields(
                delivery.notification, delivery.channel.value, delivery.destination, "SENDING",
                delivery.attempt,
            ),
        )  # fmt: skip
        raise TransientError(
            f"{sender.provider}: unexpected {type(exc).__name__}: {exc}"[:500]
        ) from exc


def _expired(attempts: int, last_error: str | None) -> str:
    if last_error is None:
        return "deadline exceeded"
    return f"deadline exceeded after {attempts} attempts; last error: {last_error}"


def _job_fields(job: _Job, status: str) -> dict[str, object]:
    return delivery_fields(
        job.notification, job.channel.value, job.destination, status, job.attempt
    )


# The row's status after an attempt with each outcome.
_STATUS_AFTER = {
    "delivered": "DELIVERED",
    "retry": "RETRYING",
    "permanent_error": "FAILED",
    "expired": "FAILED",
}
