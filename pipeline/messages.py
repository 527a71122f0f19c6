"""The single definition of every message on the wire (ARCHITECTURE.md §4).

Each topic's value is one of these pydantic models, serialized as a UTF-8 JSON object with
``"v": 1``. Timestamps are RFC 3339 UTC strings on output; readers also accept epoch
milliseconds. Models are frozen: a parsed message is a value, never mutated downstream.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from pipeline.evaluate.specs import (
    CONDITION_DEPTH_MESSAGE,
    CONDITION_MODELS,
    MAX_CONDITION_DEPTH,
    ConditionTree,
)
from pipeline.fields import MAX_COUNT, MAX_INT32, MAX_MAGNITUDE, NUL_FREE, NUL_MESSAGE, NUMBER

SCHEMA_VERSION: Literal[1] = 1
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 4096

# ---------------------------------------------------------------- timestamps
# Input timestamps lie in a range (docs/contracts.md, Field bounds): a producer's wrong unit or
# wrong clock is refused instead of believed, and no later date arithmetic can overflow.

EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EXPIRY = datetime(2200, 1, 1, tzinfo=UTC)  # Rule.expires_at
FUTURE_LEEWAY = timedelta(days=1)  # how far event times may run ahead of the wall clock
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch numbers in another unit, and the factor that turns them into milliseconds.
_OTHER_UNITS = (("seconds", 1000.0), ("microseconds", 1e-3), ("nanoseconds", 1e-6))


def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with millisecond precision, the wire format of every timestamp."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch_ms(value: datetime) -> float:
    return (value - _EPOCH) / timedelta(milliseconds=1)


class _EventHorizon:
    """The latest event time accepted: the wall clock + FUTURE_LEEWAY.

    The clock is read again only for an event past the horizon, so an event costs one
    comparison; and the horizon never moves back (not even when the clock is stepped back), so
    acceptance only grows with time and a replay accepts everything it accepted before.
    """

    def __init__(self) -> None:
        self.at = datetime.now(UTC) + FUTURE_LEEWAY
        self.ms = _epoch_ms(self.at)

    def admits(self, ts: datetime) -> bool:
        if ts > self.at:
            self._advance()
        return ts <= self.at

    def admits_ms(self, ms: float) -> bool:
        if ms > self.ms:
            self._advance()
        return ms <= self.ms

    def _advance(self) -> None:
        later = datetime.now(UTC) + FUTURE_LEEWAY
        if later > self.at:
            self.at, self.ms = later, _epoch_ms(later)


EVENT_HORIZON = _EventHorizon()


def _timestamp_error(message: str, **context: str) -> PydanticCustomError:
    return PydanticCustomError("timestamp", message, context or None)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:60] + "..."


class _TimeRange:
    """Reads a timestamp (RFC 3339 string, epoch milliseconds or aware datetime) into UTC,
    within ``[earliest, latest]``; ``horizon`` makes the event horizon the latest."""

    def __init__(
        self,
        earliest: datetime | None = None,
        latest: datetime | None = None,
        *,
        horizon: bool = False,
    ) -> None:
        self.earliest = earliest
        self.latest = latest
        self.horizon = horizon
        self.earliest_ms = _epoch_ms(earliest) if earliest is not None else -math.inf
        self.latest_ms = _epoch_ms(latest) if latest is not None else math.inf

    def __call__(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise _timestamp_error(
                "expected an RFC 3339 string or epoch milliseconds, got {value}",
                value=str(value).lower(),
            )
        if isinstance(value, int | float):
            return self._from_epoch_ms(value)
        if isinstance(value, str):
            value = _from_rfc3339(value)
        elif not isinstance(value, datetime):
            return value  # pydantic's datetime validation names the wrong type
        elif value.tzinfo is None:
            raise _timestamp_error("datetime must be timezone-aware")
        if self.earliest is not None and value < self.earliest:
            raise self._out_of_range(_describe_time(value), early=True)
        if not (EVENT_HORIZON.admits(value) if self.horizon else self._before_latest(value)):
            raise self._out_of_range(_describe_time(value), early=False)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # only unbounded (output) timestamps get here
            raise _timestamp_error(
                "{value} is beyond the years 1-9999 in UTC", value=str(value)
            ) from None

    def _before_latest(self, ts: datetime) -> bool:
        return self.latest is None or ts <= self.latest

    def _admits_ms(self, ms: float) -> bool:
        if ms < self.earliest_ms:
            return False
        return EVENT_HORIZON.admits_ms(ms) if self.horizon else ms <= self.latest_ms

    def _from_epoch_ms(self, ms: float) -> datetime:
        try:
            number = float(ms)
        except OverflowError:  # an integer beyond any float
            number = math.inf if ms > 0 else -math.inf
        else:
            if not math.isfinite(number):
                raise _timestamp_error("timestamp must be finite")
        if not self._admits_ms(number):
            unit = next(
                (name for name, factor in _OTHER_UNITS if self._admits_ms(number * factor)), None
            )
            hint = f"; epoch numbers are milliseconds (this looks like {unit})" if unit else ""
            early = number < self.earliest_ms
            raise self._out_of_range(_describe_epoch_ms(number), early=early, hint=hint)
        try:
            return datetime.fromtimestamp(ms / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):  # only unbounded (output) timestamps
            raise _timestamp_error(
                "{value} is beyond the years 1-9999", value=_describe_epoch_ms(number)
            ) from None

    def _out_of_range(self, when: str, *, early: bool, hint: str = "") -> PydanticCustomError:
        if early:
            bound = f"before {_rfc3339(self.earliest or _EPOCH)}"
        elif self.horizon:
            bound = f"after now + 1 day ({_rfc3339(EVENT_HORIZON.at.replace(microsecond=0))})"
        else:
            bound = f"after {_rfc3339(self.latest or _EPOCH)}"
        return _timestamp_error("{when} is {bound}{hint}", when=when, bound=bound, hint=hint)


def _describe_time(value: datetime) -> str:
    try:
        return format_timestamp(value)
    except OverflowError:  # in year 1 or 9999 with an offset that leaves the years in UTC
        return value.isoformat()


def _describe_epoch_ms(ms: float) -> str:
    if not math.isfinite(ms):
        return "an epoch number beyond 1e308"
    try:
        return format_timestamp(_EPOCH + timedelta(milliseconds=ms))
    except OverflowError:
        return f"{ms:.0f} ms since 1970" if abs(ms) < 1e21 else f"{ms:g} ms since 1970"


def _from_rfc3339(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _timestamp_error(
            "not an RFC 3339 timestamp: {value}", value=_short_repr(value)
        ) from None
    if parsed.tzinfo is None:
        raise _timestamp_error(
            "timestamp needs a UTC offset or 'Z': {value}", value=_short_repr(value)
        )
    return parsed


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _time_schema(earliest: datetime, latest: datetime | None) -> dict[str, Any]:
    """An input timestamp in JSON Schema: an RFC 3339 string (bounds as ajv-formats'
    ``formatMinimum`` / ``formatMaximum``) or epoch milliseconds. The event horizon moves with
    the clock, so the description states it."""
    text: dict[str, Any] = {
        "type": "string",
        "format": "date-time",
        "formatMinimum": _rfc3339(earliest),
    }
    number: dict[str, Any] = {"type": "number", "minimum": int(_epoch_ms(earliest))}
    if latest is not None:
        text["formatMaximum"] = _rfc3339(latest)
        number["maximum"] = int(_epoch_ms(latest))
    until = _rfc3339(latest) if latest is not None else "the wall clock + 1 day"
    return {
        "anyOf": [text, number],
        "description": (
            f"RFC 3339 time (UTC offset or Z) or epoch milliseconds, "
            f"from {_rfc3339(earliest)} to {until}"
        ),
    }


_AS_WIRE_TEXT = PlainSerializer(format_timestamp, return_type=str, when_used="json")
# Times the job writes (alerts, notifications, dead letters): made from bounded input times.
Timestamp = Annotated[datetime, BeforeValidator(_TimeRange()), _AS_WIRE_TEXT]
# When an event happened: the ``ts`` of ticks, prints, positions and feedback.
EventTimestamp = Annotated[
    datetime,
    BeforeValidator(_TimeRange(EARLIEST_TIMESTAMP, horizon=True)),
    _AS_WIRE_TEXT,
    WithJsonSchema(_time_schema(EARLIEST_TIMESTAMP, None), mode="validation"),
]
# Any other input time (a rule's expiry): far ahead is fine, beyond date arithmetic is not.
BoundedTimestamp = Annotated[
    datetime,
    BeforeValidator(_TimeRange(EARLIEST_TIMESTAMP, LATEST_EXPIRY)),
    _AS_WIRE_TEXT,
    WithJsonSchema(_time_schema(EARLIEST_TIMESTAMP, LATEST_EXPIRY), mode="validation"),
]


def _calendar_date(value: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise PydanticCustomError(
            "calendar_date",
            "{value} is not a calendar date: {why}",
            {"value": value, "why": str(exc)},
        ) from None
    return value


# "YYYY-MM-DD" on the wire, and a real date.
CalendarDate = Annotated[
    str,
    Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", json_schema_extra={"format": "date"}),
    AfterValidator(_calendar_date),
]

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NUL_FREE)]
Symbol = Annotated[str, Field(min_length=1, max_length=32, pattern=NUL_FREE)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
Price = Annotated[float, Field(gt=0, le=MAX_MAGNITUDE), NUMBER]
NonNegative = Annotated[float, Field(ge=0, le=MAX_MAGNITUDE), NUMBER]
Finite = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE), NUMBER]


class Priority(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class Channel(StrEnum):
    PUSH = "push"
    EMAIL = "email"
    SMS = "sms"
    VOICE = "voice"
    WEBHOOK = "webhook"
    IN_APP = "in_app"


class Message(BaseModel):
    """Base of every wire message: strict about unknown fields, frozen, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    v: Literal[1] = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# ---------------------------------------------------------------- market data


class Tick(Message):
    symbol: Symbol
    ts: EventTimestamp
    price: Price
    size: NonNegative | None = None
    bid: NonNegative | None = None
    ask: NonNegative | None = None
    iv: NonNegative | None = None
    delta: Finite | None = None
    gamma: Finite | None = None
    theta: Finite | None = None
    vega: Finite | None = None
    open_interest: NonNegative | None = None
    underlying: Symbol | None = None
    # The underlying's price when this option tick happened (added within v 1): with it, a
    # tick without ``iv`` or greeks gets them derived (pipeline/evaluate/greeks.py).
    underlying_price: Price | None = None


class OptionsFlow(Message):
    id: Id
    ts: EventTimestamp
    underlying: Symbol
    contract: Symbol
    right: Literal["C", "P"]
    strike: Price
    expiry: CalendarDate
    price: Price
    size: Annotated[int, Field(gt=0, le=MAX_COUNT), NUMBER]
    premium: NonNegative | None = None
    side: Literal["ask", "bid", "mid", "above_ask", "below_bid"]
    trade_type: Literal["sweep", "block", "split", "single"]
    open_interest: NonNegative | None = None
    day_volume: NonNegative | None = None
    underlying_price: Price | None = None
    iv: NonNegative | None = None

    @property
    def effective_premium(self) -> float:
        return self.premium if self.premium is not None else self.price * self.size * 100


# Fields of a tick or print that the job derived instead of reading them from the feed
# (pipeline/evaluate/greeks.py). Kept in the instance dict, as ``sent_ms`` is: never serialized,
# never compared, but pickled with the message when it moves between workers.
_DERIVED = "derived_fields"
_NONE_DERIVED: frozenset[str] = frozenset()


def mark_derived(message: Tick | OptionsFlow, names: Iterable[str]) -> None:
    message.__dict__[_DERIVED] = frozenset(names)


def derived_fields(message: Tick | OptionsFlow) -> frozenset[str]:
    derived: frozenset[str] = message.__dict__.get(_DERIVED, _NONE_DERIVED)
    return derived


# ---------------------------------------------------------------- rules


class Rule(Message):
    id: Id
    version: Annotated[int, Field(ge=1, le=MAX_INT32), NUMBER] = 1
    user_id: Id
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=NUL_FREE)]
    symbol: Symbol | None = None
    symbols: Annotated[list[Symbol], Field(min_length=1, max_length=1000)] | None = None
    priority: Priority = Priority.MEDIUM
    mode: Literal["once", "recurring"] = "recurring"
    cooldown_seconds: Annotated[int, Field(ge=0, le=31 * 24 * 3600), NUMBER] = 300
    expires_at: BoundedTimestamp | None = None
    active: bool = True
    channels: list[Channel] | None = None
    conditions: ConditionTree
    # NYSE sessions the rule is evaluated in: "regular" (09:30-16:00 ET, 13:00 on half days),
    # "extended" (pre 04:00 ET to post 20:00 ET), "any" (always). See docs/rules.md. Left out
    # of the output when "any", so rules read the same to consumers that predate the field.
    sessions: Literal["any", "regular", "extended"] = Field(
        "any", exclude_if=lambda value: value == "any"
    )

    @model_validator(mode="after")
    def _one_symbol_scope(self) -> Rule:
        if self.symbol is not None and self.symbols is not None:
            raise ValueError("set either 'symbol' or 'symbols' (a watchlist), not both")
        return self

    @property
    def is_wildcard(self) -> bool:
        return self.symbol is None and self.symbols is None

    @property
    def scope(self) -> list[str]:
        """The symbols this rule watches; empty for a wildcard rule (every symbol)."""
        if self.symbol is not None:
            return [self.symbol]
        return list(self.symbols or [])


# ---------------------------------------------------------------- portfolio, users


class Position(Message):
    user_id: Id
    symbol: Symbol
    underlying: Symbol | None = None
    quantity: Finite
    avg_price: NonNegative
    multiplier: Price | None = None
    ts: EventTimestamp


class FeedbackAction(StrEnum):
    DELIVERED = "delivered"
    OPENED = "opened"
    ACTED = "acted"
    DISMISSED = "dismissed"
    SNOOZED = "snoozed"
    MUTED = "muted"
    UNMUTED = "unmuted"  # lifts a mute (docs/contracts.md, Changes); added within v 1


class Feedback(Message):
    user_id: Id
    alert_id: Id
    action: FeedbackAction
    ts: EventTimestamp
    symbol: Symbol | None = None
    condition_type: Annotated[str, Field(max_length=64, pattern=NUL_FREE)] | None = None


ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: ClockTime
    end: ClockTime


WebhookUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\x00]*$")]
MAX_WEBHOOKS = 10


class WebhookDestination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: WebhookUrl
    # An environment variable's name, or "endpoint:<uuid>": an endpoint made through the HTTP
    # API, whose secret the job reads from the database.
    secret_ref: Annotated[str, Field(min_length=1, max_length=256, pattern=NUL_FREE)]


class Destinations(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    email: Annotated[str, Field(max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")] | None = None
    phone: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")] | None = None
    push_tokens: (
        Annotated[
            list[Annotated[str, Field(max_length=4096, pattern=NUL_FREE)]], Field(max_length=20)
        ]
        | None
    ) = None
    webhook: WebhookDestination | None = None
    # More webhooks (the HTTP API adds its endpoints here); each gets every webhook delivery.
    webhooks: Annotated[list[WebhookDestination], Field(max_length=MAX_WEBHOOKS)] | None = None


def _default_channels() -> dict[Priority, list[Channel]]:
    return {
        Priority.LOW: [Channel.IN_APP],
        Priority.MEDIUM: [Channel.IN_APP],
        Priority.HIGH: [Channel.IN_APP],
        Priority.CRITICAL: [Channel.IN_APP],
    }


def _iana_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name such as 'America/New_York' or 'UTC'"
        ) from None
    return name


# An IANA time zone name that zoneinfo knows ("America/New_York", "UTC").
TimeZoneName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=NUL_FREE), AfterValidator(_iana_timezone)
]


def _voice_only_when_critical(
    channels: dict[Priority, list[Channel]],
) -> dict[Priority, list[Channel]]:
    for priority, listed in channels.items():
        if Channel.VOICE in listed and priority is not Priority.CRITICAL:
            raise ValueError(f"voice calls are for CRITICAL alerts only, not {priority.value}")
    return channels


class Profile(Message):
    user_id: Id
    timezone: TimeZoneName = "UTC"  # quiet hours are wall-clock times in this zone
    channels: Annotated[
        dict[Priority, list[Channel]], AfterValidator(_voice_only_when_critical)
    ] = Field(default_factory=_default_channels)
    quiet_hours: QuietHours | None = None
    digest_seconds: Annotated[int, Field(gt=0, le=24 * 3600), NUMBER] | None = None
    max_per_hour: Annotated[int, Field(gt=0, le=MAX_INT32), NUMBER] | None = None
    min_relevance: Annotated[float, Field(ge=0, le=1), NUMBER] | None = None
    destinations: Destinations = Field(default_factory=Destinations)
    # Hold notifications below CRITICAL outside the NYSE regular session (pipeline.market_calendar).
    # Left out of the output when false, so profiles read the same to older consumers.
    market_hours_only: bool = Field(False, exclude_if=lambda value: value is False)


# ---------------------------------------------------------------- outputs


class TriggeredAlert(Message):
    alert_id: Id
    rule_id: Id
    rule_version: int
    user_id: Id
    symbol: Symbol
    priority: Priority
    title: Annotated[str, Field(max_length=255)]
    message: Text
    triggered_at: Timestamp
    condition_types: list[str]
    values: dict[str, float | str | None]

    @classmethod
    def trusted(
        cls,
        *,
        alert_id: str,
        rule_id: str,
        rule_version: int,
        user_id: str,
        symbol: str,
        priority: Priority,
        title: str,
        message: str,
        triggered_at: datetime,
        condition_types: list[str],
        values: dict[str, float | str | None],
    ) -> TriggeredAlert:
        """What ``model_construct`` with every field but ``v`` builds (same fields, default, fields
        set), without its generic loop over aliases and defaults: the engine builds one per firing
        rule (1.4 per event with 1M rules), from values it made itself, so none is validated."""
        alert = cls.__new__(cls)
        _set_attribute(
            alert,
            "__dict__",
            {
                "v": SCHEMA_VERSION,
                "alert_id": alert_id,
                "rule_id": rule_id,
                "rule_version": rule_version,
                "user_id": user_id,
                "symbol": symbol,
                "priority": priority,
                "title": title,
                "message": message,
                "triggered_at": triggered_at,
                "condition_types": condition_types,
                "values": values,
            },
        )
        _set_attribute(alert, "__pydantic_fields_set__", set(_ALERT_FIELDS_SET))
        _set_attribute(alert, "__pydantic_extra__", None)
        _set_attribute(alert, "__pydantic_private__", None)
        return alert


_set_attribute = object.__setattr__  # as pydantic sets them (the models are frozen)
_ALERT_FIELDS_SET = frozenset(TriggeredAlert.model_fields) - {"v"}


class Notification(Message):
    notification_id: Id
    user_id: Id
    alert_ids: list[Id]
    title: Annotated[str, Field(max_length=255)]
    message: Text
    highest_priority: Priority
    channels: list[Channel]
    window_start: Timestamp
    window_end: Timestamp
    # Set on a follow-up: the alerts of a window that reached it after it was sent, with the
    # id of the notification sent first (added within v 1; left out when not a follow-up).
    follow_up_of: Id | None = None


class DeadLetter(Message):
    source_topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None
    error: Text
    ts: Timestamp

    def to_json(self) -> bytes:
        # key and value are required, null when the record had none (its schema says so), so
        # they are written even when None, unlike the optional fields of other messages.
        return self.model_dump_json().encode()


# ---------------------------------------------------------------- decoding

MAX_MESSAGE_BYTES = 1 << 20
M = TypeVar("M", bound=BaseModel)


class InvalidMessage(ValueError):
    """A message that cannot become a model; ``str()`` is the reason for the dead letter."""


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(step) for step in _without_union_tags(error["loc"])) or "message"
        parts.append(f"{where}: {_reason(error)}")
    return "; ".join(parts)


def _reason(error: ErrorDetails) -> str:
    # Every text pattern refuses NUL; say so rather than quote a regular expression.
    if error["type"] == "string_pattern_mismatch" and "\x00" in error["input"]:
        return NUL_MESSAGE
    return error["msg"]


def _without_union_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    """The path of an error as a person writes it: no union tags from the condition tree."""
    leaf_tags = CONDITION_MODELS.keys()
    steps = list(loc)
    kept = []
    for index, step in enumerate(steps):
        following = steps[index + 1] if index + 1 < len(steps) else None
        if step in leaf_tags or (step in ("all", "any") and following == step):
            continue
        kept.append(step)
    return kept


def decode(model: type[M], raw: bytes | None) -> M:
    """Parse one Kafka value into ``model`` or raise InvalidMessage with a precise reason."""
    if raw is None:
        raise InvalidMessage("empty value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidMessage(_why_not_json(raw, model, first["ctx"]["error"])) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise InvalidMessage(f"expected a JSON object, got {_json_kind(raw)}") from None
        raise InvalidMessage(f"invalid {model.__name__}: {describe_validation_error(exc)}") from exc


def _why_not_json(raw: bytes, model: type[BaseModel], parser_error: str) -> str:
    """The precise reason a value is not JSON (the slow path, for bad input only)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    if parser_error.startswith("recursion limit exceeded"):
        return _too_deep(raw, model)
    return f"not JSON: {parser_error}"


_JSON_KINDS = {ord("["): "an array", ord('"'): "a string", ord("t"): "true", ord("f"): "false"}


def _json_kind(raw: bytes) -> str:
    """What a valid JSON value that is not an object is, from its first character."""
    first = raw.lstrip()[:1]
    if first == b"n":
        return "null"
    return _JSON_KINDS.get(first[0], "a number") if first else "nothing"


# Objects and arrays nested in one message: what pydantic's JSON parser reads (jiter's limit).
JSON_DEPTH_LIMIT = 201
# A string (group 1: its text; group 2: the colon that makes it a member name), or a bracket.
_JSON_TOKEN = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|[\[\]{}]')
_GROUPS = (b"all", b"any")


def _too_deep(raw: bytes, model: type[BaseModel]) -> str:
    """Why a message nested past the parser's limit is refused: how deep, under which field, and
    for a condition tree how many levels of all/any. The scan keeps its own stack of names, so
    no nesting can exhaust Python's."""
    names: list[bytes | None] = []  # per open object or array: the member being read in it
    groups = 0  # how many of those members are all/any
    deepest, field, deepest_groups = 0, None, 0
    for token in _JSON_TOKEN.finditer(raw):
        name = token.group(1)
        if token.group(2) is not None:
            if names:
                groups += (name in _GROUPS) - (names[-1] in _GROUPS)
                names[-1] = name
        elif name is None:
            if token.group() in (b"[", b"{"):
                names.append(None)
                if len(names) > deepest:
                    deepest, field, deepest_groups = len(names), names[0], groups
            elif names:
                groups -= names.pop() in _GROUPS
    where = f"{field[:64].decode('utf-8', 'replace')}: " if field else ""
    in_tree = field == b"conditions" and "conditions" in model.model_fields
    if in_tree and deepest_groups > MAX_CONDITION_DEPTH:
        reason = CONDITION_DEPTH_MESSAGE.format(depth=deepest_groups, limit=MAX_CONDITION_DEPTH)
    else:
        reason = f"JSON nested {deepest} levels deep; at most {JSON_DEPTH_LIMIT} levels are read"
    return f"invalid {model.__name__}: {where}{reason}"


# ---------------------------------------------------------------- tombstones
# An empty value on a compacted topic deletes what its key named; these carry that key.


@dataclass(frozen=True, slots=True)
class RuleTombstone:
    rule_id: str


@dataclass(frozen=True, slots=True)
class ProfileReset:
    """The user's profile was deleted: documented defaults apply again."""

    user_id: str


@dataclass(frozen=True, slots=True)
class PositionClosed:
    user_id: str
    symbol: str


def message_key(message: BaseModel) -> str:
    """The Kafka key of a message on its topic (ARCHITECTURE.md §4)."""
    if isinstance(message, Tick):
        return message.symbol
    if isinstance(message, OptionsFlow):
        return message.underlying
    if isinstance(message, Rule):
        return message.id
    if isinstance(message, Position):
        return f"{message.user_id}:{message.symbol}"
    if isinstance(message, Feedback | Profile | TriggeredAlert | Notification):
        return message.user_id
    if isinstance(message, DeadLetter):
        return message.key or ""
    raise TypeError(f"no Kafka key defined for {type(message).__name__}")
