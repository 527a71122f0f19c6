"""Redis outputs: relevance scores and the in-app notification feed.

Key layout (a public contract: gateways and tools read these keys without this code;
``{user_id}`` is the user id verbatim, not a Redis Cluster hash tag):

``sa:relevance:{user_id}`` — hash, one per user
    ``{dimension}:{key}`` → the score as a plain decimal string in [0, 1] (``"0.62"``; no
    exponent, the shortest text that reads back to the same float), and
    ``updated_at:{dimension}:{key}`` → the event time of the update that produced it, RFC 3339
    UTC (``2026-01-05T14:30:00.125Z``). Dimensions: ``symbol`` and ``condition_type``:
    ``HGET sa:relevance:u-1 symbol:AAPL``, ``HGET sa:relevance:u-1 condition_type:rsi_above``.
    The key follows the first colon verbatim (an OCC option symbol keeps its spaces). A score is
    its value as of ``updated_at``; it relaxes toward 0.5 afterwards, so a reader at time t
    computes ``0.5 + (score - 0.5) * 0.5 ** ((t - updated_at) / half_life)`` (half_life 14 days
    by default; ``pipeline/personalize/learning.py``). Last write wins; the engine writes scores
    in the order it computed them, so a replay ends in the same state.

``sa:inapp:{user_id}`` — stream, the user's in-app feed, oldest first
    One entry per notification with the fields ``notification_id``, ``title``, ``message``,
    ``highest_priority`` (LOW/MEDIUM/HIGH/CRITICAL), ``alert_ids`` (a JSON list of strings),
    ``window_start``, ``window_end`` (RFC 3339 UTC) and ``json`` (the full notification as
    published on ``alerts.notifications``). Trimmed approximately to the newest ``maxlen``
    entries (``XADD MAXLEN ~``, default 1000). Read with ``XREVRANGE sa:inapp:u-1 + - COUNT 50``
    or follow with ``XREAD BLOCK``.

``sa:inapp:seen:{user_id}`` — set of the notification ids already added to the feed
    Makes the feed idempotent: a Lua script adds the id (``SADD``) and appends the stream entry
    only when the id was new, so replays after a crash never duplicate an entry.

``sa:inapp:state:{user_id}`` — hash, the read state of feed entries
    ``{notification_id}`` → ``seen``, ``read`` or ``archived`` (forward only: archived implies
    read implies seen), and ``{notification_id}:{state}_at`` → when (RFC 3339). The app or its
    gateway moves entries with ``InAppFeed.mark`` (or the same Lua logic); each change is also
    published on the live channel as ``{"notification_id": ..., "state": ...}``.

``sa:inapp:live:{user_id}`` — pub/sub channel
    Each new feed entry's notification JSON (the ``json`` field) is published here, inside the
    same script, so a gateway can push it to connected clients at once.

The script touches two keys of one user, so on Redis Cluster they must share a slot; this
layout targets a single Redis (or a primary with replicas).

Every call waits at most ``redis_timeout_seconds`` per connect or reply
(``pipeline.config.Dependencies``). A call that fails on the connection (refused, lost, timed
out: the server is down or frozen) is retried with redis-py's ``Retry`` and exponential backoff
with jitter, for ``retry_for_seconds`` from its start; then ``RedisUnavailableError`` says so in
one line. Every write here is idempotent, so a retry of one whose reply was lost is harmless.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from pipeline.config import Dependencies
from pipeline.messages import Notification, format_timestamp
from pipeline.personalize.learning import RelevanceScore

__all__ = [
    "DEFAULT_FEED_MAXLEN",
    "InAppFeed",
    "RedisUnavailableError",
    "RelevanceStore",
    "feed_key",
    "live_channel",
    "relevance_key",
    "seen_key",
]

log = logging.getLogger("smart_alerts.redis")

DEFAULT_FEED_MAXLEN = 1000
# Retry delays: base * 2**n seconds, at most the cap, half of it random (equal jitter).
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0


def relevance_key(user_id: str) -> str:
    return f"sa:relevance:{user_id}"


def feed_key(user_id: str) -> str:
    return f"sa:inapp:{user_id}"


def seen_key(user_id: str) -> str:
    return f"sa:inapp:seen:{user_id}"


def live_channel(user_id: str) -> str:
    return f"sa:inapp:live:{user_id}"


class RedisUnavailableError(RuntimeError):
    """Redis did not answer within the retry budget; the message is one line naming the server
    (never the password), the attempts, and the last error."""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _server_name(url: str) -> str:
    """``host:port/db`` (or the socket path) of a Redis URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


class _BudgetBackoff(EqualJitterBackoff):
    """Equal-jitter exponential backoff that never sleeps past the end of the retry budget,
    counted from the start of the call (Retry calls ``reset`` then)."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
        self.budget_s = budget_s
        self._began = time.monotonic()

    def reset(self) -> None:
        self._began = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def compute(self, failures: int) -> float:
        remaining = self.budget_s - self.elapsed()
        return max(0.0, min(super().compute(failures), remaining))


class _RedisClient:
    """A redis-py client with timeouts, retries, and one clear error type for a server that
    does not answer."""

    def __init__(self, redis_url: str, dependencies: Dependencies | None = None) -> None:
        """Pings at once, waiting for an unreachable server as long as for a write (so the
        start-up order of the servers does not matter); ``dependencies`` None: the defaults."""
        self._dependencies = dependencies or Dependencies()
        self.where = _server_name(redis_url)
        timeout = self._dependencies.redis_timeout_seconds
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                redis_url,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
                # Retries happen once per call in _call: redis-py's own would also retry the
                # connect inside each retried command, squaring the attempts on a frozen server.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {_redacted(redis_url)}: {exc}") from exc
        self._call(self._redis.ping)

    def _call(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``operation(*args, **kwargs)``, retried on connection errors and timeouts within the
        budget. A pipeline forgets its commands once executed: retry a function building it."""
        backoff = _BudgetBackoff(self._dependencies.retry_for_seconds)

        def give_up_or_warn(error: Exception, failures: int) -> None:
            elapsed = backoff.elapsed()
            if elapsed >= backoff.budget_s:
                raise RedisUnavailableError(
                    f"Redis at {self.where} did not answer: tried {failures} "
                    f"{'time' if failures == 1 else 'times'} over {elapsed:.1f} s; "
                    f"last error: {_describe(error)}"
                ) from error
            log.warning(
                "Redis at %s did not answer (%s); retry %d (giving up after %g s)",
                self.where,
                _describe(error),
                failures,
                backoff.budget_s,
            )

        # A new Retry per call: its backoff holds the call's start, and calls come from threads.
        retry = Retry(backoff, -1)
        return retry.call_with_retry(
            lambda: operation(*args, **kwargs), give_up_or_warn, with_failure_count=True
        )

    def close(self) -> None:
        self._redis.close()


_CONNECT_ERROR = re.compile(r"^Error -?\d+ connecting to \S+\.\s+(.*?)\.?$")


def _describe(error: Exception) -> str:
    """redis-py's error text on one line, without the address the message already names."""
    text = " ".join(str(error).split()) or type(error).__name__
    match = _CONNECT_ERROR.match(text)
    return match.group(1) if match else text


def _decimal_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"a relevance score must be finite, not {value!r}")
    text = format(Decimal(repr(float(value))), "f")
    return "0" if text in ("-0", "-0.0") else text


class RelevanceStore(_RedisClient):
    """Writes relevance scores to ``sa:relevance:{user_id}`` (see the module docstring)."""

    def write_batch(self, scores: list[RelevanceScore]) -> None:
        """Write all scores in one pipeline (one round trip); later scores win."""
        if not scores:
            return

        def send() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for score in scores:
                field = f"{score.dimension}:{score.key}"
                pipe.hset(
                    relevance_key(score.user_id),
                    mapping={
                        field: _decimal_text(score.score),
                        f"updated_at:{field}": format_timestamp(score.updated_at),
                    },
                )
            pipe.execute()

        self._call(send)

    def read(self, user_id: str) -> dict[str, float]:
        """``{"symbol:AAPL": 0.62, ...}`` for one user (timestamps left out)."""
        raw: dict[str, str] = self._call(self._redis.hgetall, relevance_key(user_id))
        return {
            field: float(value)
            for field, value in raw.items()
            if not field.startswith("updated_at:")
        }

    def read_updated_at(self, user_id: str) -> dict[str, str]:
        """``{"symbol:AAPL": "2026-01-05T14:30:00.125Z", ...}`` for one user."""
        raw: dict[str, str] = self._call(self._redis.hgetall, relevance_key(user_id))
        prefix = "updated_at:"
        return {
            field[len(prefix) :]: value for field, value in raw.items() if field.startswith(prefix)
        }


# KEYS: seen set, stream. ARGV: notification id, maxlen, live channel, json, field/value pairs.
_PUBLISH_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return false
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return id
"""


FEED_STATES = ("seen", "read", "archived")  # each implies the ones before it

# Moves one notification forward to a state (never back), stamps it, and tells the live
# channel, atomically: KEYS[1] state hash, ARGV = id, state, rank, at (RFC 3339), channel.
_SET_STATE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local ranks = {seen = 1, read = 2, archived = 3}
if current and ranks[current] >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':' .. ARGV[2] .. '_at', ARGV[4])
redis.call('PUBLISH', ARGV[5], cjson.encode({notification_id = ARGV[1], state = ARGV[2]}))
return 1
"""


def state_key(user_id: str) -> str:
    return f"sa:inapp:state:{user_id}"


class InAppFeed(_RedisClient):
    """The per-user in-app feed: an idempotent stream, read/seen/archived state, and a live
    pub/sub channel."""

    def __init__(
        self,
        redis_url: str,
        *,
        maxlen: int = DEFAULT_FEED_MAXLEN,
        dependencies: Dependencies | None = None,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        super().__init__(redis_url, dependencies)
        self.maxlen = maxlen
        self._script: Script = self._redis.register_script(_PUBLISH_ONCE)
        self._set_state: Script = self._redis.register_script(_SET_STATE)

    def mark(self, user_id: str, notification_id: str, state: str, at: datetime) -> bool:
        """Move a notification to ``seen``, ``read`` or ``archived`` (forward only); True when
        it moved. Each change is published on the user's live channel for other devices."""
        if state not in FEED_STATES:
            raise ValueError(f"state must be one of {FEED_STATES}, not {state!r}")
        keys = [state_key(user_id)]
        args = [notification_id, state, FEED_STATES.index(state) + 1, format_timestamp(at),
                live_channel(user_id)]  # fmt: skip
        return bool(self._call(self._set_state, keys=keys, args=args))

    def states(self, user_id: str) -> dict[str, str]:
        """notification id -> its state, for the notifications that have one."""
        raw: dict[str, str] = self._call(self._redis.hgetall, state_key(user_id))
        return {key: value for key, value in raw.items() if ":" not in key}

    def unread(self, user_id: str) -> int:
        """Feed entries neither read nor archived."""
        states = self.states(user_id)
        return sum(
            1
            for entry in self.entries(user_id)
            if states.get(entry["notification_id"]) not in ("read", "archived")
        )

    def publish(self, notification: Notification) -> str | None:
        """Append the notification to its user's feed; the entry id, or None if already there."""
        keys, args = self._script_call(notification)
        result = self._call(self._script, keys=keys, args=args)
        return _entry_id(result)

    def publish_batch(self, notifications: list[Notification]) -> list[str | None]:
        """``publish`` for many notifications in one pipeline; results in the same order."""
        if not notifications:
            return []
        calls = [self._script_call(notification) for notification in notifications]

        def send() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in calls:
                self._script(keys=keys, args=args, client=pipe)
            return pipe.execute()

        results: list[Any] = self._call(send)
        return [_entry_id(result) for result in results]

    def entries(self, user_id: str) -> list[dict[str, str]]:
        """The user's feed, oldest first: each entry's fields plus ``entry_id``."""
        raw: list[tuple[str, dict[str, str]]] = self._call(
            self._redis.xrange, feed_key(user_id), "-", "+"
        )
        return [{"entry_id": entry_id, **fields} for entry_id, fields in raw]

    def _script_call(self, notification: Notification) -> tuple[list[str], list[Any]]:
        user_id = notification.user_id
        document = notification.to_json().decode()
        fields = _stream_fields(notification, document)
        args: list[Any] = [
            notification.notification_id,
            self.maxlen,
            live_channel(user_id),
            document,
        ]
        for name, value in fields:
            args.extend((name, value))
        return [seen_key(user_id), feed_key(user_id)], args


def _stream_fields(notification: Notification, document: str) -> Iterable[tuple[str, str]]:
    return (
        ("notification_id", notification.notification_id),
        ("title", notification.title),
        ("message", notification.message),
        ("highest_priority", notification.highest_priority.value),
        ("alert_ids", json.dumps(list(notification.alert_ids))),
        ("window_start", format_timestamp(notification.window_start)),
        ("window_end", format_timestamp(notification.window_end)),
        ("json", document),
    )


def _entry_id(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, bytes):
        return result.decode()
    return str(result)
