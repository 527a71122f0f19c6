"""The single definition of every message on the wire (ARCHITECTURE.md §4).

Each topic's value is one of these pydantic models, serialized as a UTF-8 JSON object with
``"v": 1``. Timestamps are RFC 3339 UTC strings on output; readers also accept epoch
milliseconds. Models are frozen: a parsed message is a value, never mutated downstream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
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
    model_validator,
)

from pipeline.condition_specs import CONDITION_MODELS, ConditionNode

SCHEMA_VERSION: Literal[1] = 1
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 4096


def _to_utc_datetime(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("timestamp must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be finite")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from exc
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp needs a UTC offset or 'Z': {value!r}")
        return parsed.astimezone(UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        return value.astimezone(UTC)
    return value


def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with millisecond precision, the wire format of every timestamp."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_utc_datetime),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Symbol = Annotated[str, Field(min_length=1, max_length=32)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
Price = Annotated[float, AfterValidator(_finite), Field(gt=0)]
NonNegative = Annotated[float, AfterValidator(_finite), Field(ge=0)]
Finite = Annotated[float, AfterValidator(_finite)]


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
    ts: Timestamp
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


class OptionsFlow(Message):
    id: Id
    ts: Timestamp
    underlying: Symbol
    contract: Symbol
    right: Literal["C", "P"]
    strike: Price
    expiry: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    price: Price
    size: Annotated[int, Field(gt=0)]
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


# ---------------------------------------------------------------- rules


class Rule(Message):
    id: Id
    version: Annotated[int, Field(ge=1)] = 1
    user_id: Id
    name: Annotated[str, Field(min_length=1, max_length=255)]
    symbol: Symbol | None = None
    symbols: Annotated[list[Symbol], Field(min_length=1, max_length=1000)] | None = None
    priority: Priority = Priority.MEDIUM
    mode: Literal["once", "recurring"] = "recurring"
    cooldown_seconds: Annotated[int, Field(ge=0, le=31 * 24 * 3600)] = 300
    expires_at: Timestamp | None = None
    active: bool = True
    channels: list[Channel] | None = None
    conditions: ConditionNode
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
    multiplier: Annotated[float, Field(gt=0)] | None = None
    ts: Timestamp


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
    ts: Timestamp
    symbol: Symbol | None = None
    condition_type: Annotated[str, Field(max_length=64)] | None = None


ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: ClockTime
    end: ClockTime


class WebhookDestination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
    secret_ref: Annotated[str, Field(min_length=1, max_length=256)]


class Destinations(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    email: Annotated[str, Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    phone: Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$")] | None = None
    push_tokens: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=20)] | None
    ) = None
    webhook: WebhookDestination | None = None


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
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_iana_timezone)]


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
    digest_seconds: Annotated[int, Field(gt=0, le=24 * 3600)] | None = None
    max_per_hour: Annotated[int, Field(gt=0)] | None = None
    min_relevance: Annotated[float, Field(ge=0, le=1)] | None = None
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


# ---------------------------------------------------------------- decoding

MAX_MESSAGE_BYTES = 1 << 20
M = TypeVar("M", bound=BaseModel)


class InvalidMessage(ValueError):
    """A message that cannot become a model; ``str()`` is the reason for the dead letter."""


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(step) for step in _without_union_tags(error["loc"])) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


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
        if not any(error["type"] in ("json_invalid", "model_type") for error in exc.errors()):
            raise InvalidMessage(
                f"invalid {model.__name__}: {describe_validation_error(exc)}"
            ) from exc
    raise InvalidMessage(_why_not_a_json_object(raw))


def _why_not_a_json_object(raw: bytes) -> str:
    """The precise reason a value is not one JSON object (the slow path, for bad input only)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        return f"not JSON: {exc}"
    return f"expected a JSON object, got {type(payload).__name__}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


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
