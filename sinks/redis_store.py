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
    by default; ``pipeline/learning.py``). Last write wins; the engine writes scores in the order
    it computed them, so a replay ends in the same state.

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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.commands.core import Script

from pipeline.learning import RelevanceScore
from pipeline.messages import Notification, format_timestamp

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

DEFAULT_FEED_MAXLEN = 1000
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0


def relevance_key(user_id: str) -> str:
    return f"sa:relevance:{user_id}"


def feed_key(user_id: str) -> str:
    return f"sa:inapp:{user_id}"


def seen_key(user_id: str) -> str:
    return f"sa:inapp:seen:{user_id}"


def live_channel(user_id: str) -> str:
    return f"sa:inapp:live:{user_id}"


class RedisUnavailableError(RuntimeError):
    """Redis could not be reached or timed out; the message names the server (no password)."""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class _RedisClient:
    """A redis-py client with timeouts and one clear error type for an unreachable server."""

    def __init__(self, redis_url: str) -> None:
        self.where = _redacted(redis_url)
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                redis_url,
                decode_responses=True,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self.where}: {exc}") from exc
        self._call(self._redis.ping)  # fail fast with a clear message

    def _call(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailableError(f"cannot reach Redis at {self.where}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()


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
        self._call(pipe.execute)

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

    def __init__(self, redis_url: str, *, maxlen: int = DEFAULT_FEED_MAXLEN) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        super().__init__(redis_url)
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
        pipe = self._redis.pipeline(transaction=False)
        for notification in notifications:
            keys, args = self._script_call(notification)
            self._script(keys=keys, args=args, client=pipe)
        results: list[Any] = self._call(pipe.execute)
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
