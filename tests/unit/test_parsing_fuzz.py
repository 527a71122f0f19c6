"""Fuzz: no record content makes parsing raise, and what parsing accepts goes through the
domain steps without raising (ARCHITECTURE.md §2, "Never crash on input").

Two kinds of records on each of the six input topics: (a) anything at all (bytes, any JSON
value, with and without keys), (b) a valid message with one field, at any depth, replaced by a
hostile JSON value. Every accepted item then goes through the plain domain classes with
context that makes them do real work: rules of every condition family, market events, a
position, the user's alerts.
"""

from __future__ import annotations

import copy
import json
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Topics
from pipeline.evaluate.engine import ShardEngine
from pipeline.evaluate.routing import RuleRouter
from pipeline.messages import (
    EARLIEST_TIMESTAMP,
    Feedback,
    Message,
    OptionsFlow,
    Position,
    PositionClosed,
    Profile,
    ProfileReset,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)
from pipeline.parsing import ParsedItem, parse_record
from pipeline.personalize.desk import UserDesk

TOPICS = Topics()
INPUT_TOPICS = (
    TOPICS.ticks,
    TOPICS.options_flow,
    TOPICS.rules,
    TOPICS.positions,
    TOPICS.feedback,
    TOPICS.profiles,
)
T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # a Monday, in the NYSE regular session
OCC = "AAPL  260116C00200000"

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=250,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 7
    timestamp_ms: int | None = 1767625200000


# ---------------------------------------------------------------- valid messages, one per shape

TICKS: list[dict[str, Any]] = [
    {"v": 1, "symbol": "AAPL", "ts": "2026-01-05T15:00:00.125Z", "price": 198.85, "size": 100,
     "bid": 198.84, "ask": 198.86},
    {"symbol": OCC, "ts": 1767625200125, "price": 3.2, "size": 5, "bid": 3.1, "ask": 3.3,
     "iv": 31.0, "delta": 0.45, "gamma": 0.02, "theta": -0.05, "vega": 0.11,
     "open_interest": 1200, "underlying": "AAPL"},
]  # fmt: skip
FLOWS: list[dict[str, Any]] = [
    {"id": "f-1", "ts": "2026-01-05T15:00:01Z", "underlying": "AAPL", "contract": OCC,
     "right": "C", "strike": 200, "expiry": "2026-01-16", "price": 3.2, "size": 500,
     "premium": 160000, "side": "ask", "trade_type": "sweep", "open_interest": 1000,
     "day_volume": 5000, "underlying_price": 198.5, "iv": 31},
]  # fmt: skip
RULES: list[dict[str, Any]] = [
    {"v": 1, "id": "r-1", "version": 3, "user_id": "u-1", "name": "AAPL breakout",
     "symbol": "AAPL", "priority": "HIGH", "mode": "recurring", "cooldown_seconds": 1800,
     "expires_at": "2027-01-01T00:00:00Z", "active": True, "channels": ["push", "email"],
     "sessions": "regular",
     "conditions": {"all": [{"type": "price_crosses_above", "threshold": 200},
                            {"any": [{"type": "iv_rank_above", "threshold": 80,
                                      "lookback_days": 252},
                                     {"type": "volume_spike", "multiple": 3, "period": 20,
                                      "timeframe": "1m"}]}]}},
    {"id": "r-2", "user_id": "u-2", "name": "flow", "symbols": ["AAPL", "MSFT"],
     "mode": "once",
     "conditions": {"any": [{"type": "flow_sweep", "min_premium": 1000, "right": "C",
                             "sides": ["ask", "above_ask"], "min_days_to_expiry": 0,
                             "max_days_to_expiry": 30, "moneyness": "otm",
                             "atm_band_pct": 2, "min_size": 10},
                            {"type": "put_call_premium_ratio", "threshold": 2,
                             "comparison": "below", "window_seconds": 600}]}},
    {"id": "r-3", "user_id": "u-1", "name": "position", "symbol": OCC, "priority": "CRITICAL",
     "conditions": {"any": [{"type": "position_pnl_pct_below", "threshold": -20},
                            {"type": "expiry_within_days", "days": 5},
                            {"type": "rsi_below", "threshold": 30, "period": 14,
                             "timeframe": "5m"}]}},
]  # fmt: skip
POSITIONS: list[dict[str, Any]] = [
    {"user_id": "u-1", "symbol": OCC, "underlying": "AAPL", "quantity": 10, "avg_price": 2.5,
     "multiplier": 100, "ts": "2026-01-05T14:59:00Z"},
]  # fmt: skip
FEEDBACK: list[dict[str, Any]] = [
    {"user_id": "u-1", "alert_id": "a-1", "action": "muted", "ts": "2026-01-05T15:01:00Z",
     "symbol": "AAPL", "condition_type": "price_above"},
]  # fmt: skip
PROFILES: list[dict[str, Any]] = [
    {"user_id": "u-1", "timezone": "America/New_York",
     "channels": {"LOW": ["in_app"], "MEDIUM": ["in_app", "push"], "HIGH": ["push", "email"],
                  "CRITICAL": ["sms", "voice"]},
     "quiet_hours": {"start": "22:00", "end": "07:00"}, "digest_seconds": 300,
     "max_per_hour": 3, "min_relevance": 0.2, "market_hours_only": True,
     "destinations": {"email": "u@example.com", "phone": "+15551234567",
                      "push_tokens": ["token-1"],
                      "webhook": {"url": "https://example.com/hook", "secret_ref": "s-1"}}},
]  # fmt: skip
BASES: list[tuple[str, dict[str, Any]]] = [
    *((TOPICS.ticks, m) for m in TICKS),
    *((TOPICS.options_flow, m) for m in FLOWS),
    *((TOPICS.rules, m) for m in RULES),
    *((TOPICS.positions, m) for m in POSITIONS),
    *((TOPICS.feedback, m) for m in FEEDBACK),
    *((TOPICS.profiles, m) for m in PROFILES),
]
FIELD_NAMES = sorted({name for _, base in BASES for name in base} | {"all", "any", "type"})


def key_of(topic: str, message: Any) -> str | None:
    """The key the contract gives the message, when its fields are strings."""
    if not isinstance(message, dict):
        return None
    names = {
        TOPICS.ticks: ("symbol",),
        TOPICS.options_flow: ("underlying",),
        TOPICS.rules: ("id",),
        TOPICS.positions: ("user_id", "symbol"),
        TOPICS.feedback: ("user_id",),
        TOPICS.profiles: ("user_id",),
    }[topic]
    parts = [message.get(name) for name in names]
    return ":".join(str(p) for p in parts) if all(isinstance(p, str) for p in parts) else None


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value where a value can be put."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for name, child in node.items():
            found += paths(child, (*prefix, name))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


def replaced(message: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(message)
    parent: Any = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return out


# ---------------------------------------------------------------- hostile values


@dataclass(frozen=True)
class Deep:
    """JSON nested too deep for ``json.dumps`` to write: spliced in as text by ``dump``."""

    text: str


def nested_lists(depth: int) -> Deep:
    return Deep("[" * depth + "]" * depth)


def nested_tree(depth: int) -> Deep:
    groups = [("all", "any")[level % 2] for level in range(depth)]
    leaf = '{"type": "price_above", "threshold": 1}'
    return Deep("".join(f'{{"{g}": [' for g in groups) + leaf + "]}" * depth)


def dump(value: Any, ascii_only: bool = True) -> bytes:
    spliced: dict[str, str] = {}

    def placeholders(node: Any) -> Any:
        if isinstance(node, Deep):
            token = f"@deep-{len(spliced)}@"
            spliced[json.dumps(token)] = node.text
            return token
        if isinstance(node, dict):
            return {name: placeholders(child) for name, child in node.items()}
        if isinstance(node, list):
            return [placeholders(child) for child in node]
        return node

    text = json.dumps(placeholders(value), allow_nan=True, ensure_ascii=ascii_only)
    for token, deep in spliced.items():
        text = text.replace(token, deep)
    return text.encode("utf-8", "surrogatepass")


def _now_plus(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


EDGE_NUMBERS = [
    0, -0.0, -1, 1, 0.5, 5e-324, 1e-300, 1e15, 1e15 + 2, -1e15 - 2, 1e300, -1e300, 1e308,
    2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63), 10**30, 10**400,
    float("nan"), float("inf"), float("-inf"),
    946684799999, 946684800000, 1767625200, 1767625200000000, 1767625200000000000, 1e20, -1e20,
]  # fmt: skip
EDGE_TIMES = [
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59", "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "2199-12-31T23:59:59Z",
    "2200-01-01T00:00:00.001Z", "2026-13-45T00:00:00Z", "2026-01-05T14:30:00",
    "2026-01-05 14:30:00Z", "20260105T143000Z", "2026-01-05T14:30:00+25:00", "now", "", " ",
    "2026-02-30", "0000-01-01", "2026-1-5", "9999-12-31", "٢٠٢٦-٠١-٠٥",
]  # fmt: skip
LENGTHS = [0, 1, 31, 32, 33, 64, 65, 127, 128, 129, 255, 256, 320, 2048, 2049, 4096, 4097, 70000]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(EDGE_NUMBERS)
    | st.sampled_from(EDGE_TIMES)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
hostile = st.one_of(
    st.integers(1, 600).map(nested_lists),
    st.integers(1, 300).map(nested_tree),
    st.sampled_from(EDGE_NUMBERS),
    st.integers() | st.floats(),
    st.booleans(),
    st.text(max_size=12).map(lambda text: text + "\x00" + text),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.sampled_from(EDGE_TIMES),
    st.sampled_from([-25.0, -23.0, 23.0, 25.0, 24 * 365 * 80.0]).map(_now_plus),
    st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat()),
    st.sampled_from(LENGTHS).map(lambda n: "x" * n),
    st.sampled_from([None, [], {}, "", [None], {"": None}]),
    json_values,
)


keys = (
    st.none()
    | st.binary(max_size=24)
    | st.sampled_from([b"", b"AAPL", b"r-1", b"u-1:" + OCC.encode(), b"u-1"])
)
arbitrary_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.builds(dump, json_values, st.booleans()),
    st.builds(dump, st.integers(1, 3000).map(nested_lists)),
    st.builds(dump, st.integers(1, 600).map(nested_tree)),
)


@st.composite
def arbitrary_records(draw: st.DrawFn) -> Record:
    return Record(
        topic=draw(st.sampled_from(INPUT_TOPICS)),
        key=draw(keys),
        value=draw(arbitrary_values),
        timestamp_ms=draw(st.none() | st.integers(-1, 2**63 - 1)),
    )


@st.composite
def hostile_records(draw: st.DrawFn) -> Record:
    topic, base = draw(st.sampled_from(BASES))
    path = draw(st.sampled_from(paths(base)))
    message = replaced(base, path, draw(hostile))
    key = key_of(topic, message)
    return Record(
        topic=topic,
        key=key.encode("utf-8", "surrogatepass") if key is not None else None,
        value=dump(message, draw(st.booleans())),
    )


# ---------------------------------------------------------------- the properties


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in strings(item)]
    return []


def accepted(record: Record) -> ParsedItem | None:
    parsed = parse_record(record, TOPICS)
    assert (parsed.item is None) != (parsed.dead_letter is None)
    if parsed.dead_letter is not None:
        letter = parsed.dead_letter
        assert letter.error.strip()
        assert (letter.source_topic, letter.offset) == (record.topic, record.offset)
        letter.to_json()
        return None
    item = parsed.item
    assert item is not None
    content = item.model_dump(mode="json") if isinstance(item, Message) else astuple(item)
    assert not [text for text in strings(content) if "\x00" in text]
    if isinstance(item, Message):
        item.to_json()
    return item


def context_rules(user_id: str) -> list[Rule]:
    """Wildcard rules of every condition family, for the user, so any symbol does real work."""
    trees: dict[str, list[dict[str, Any]]] = {
        "ticks": [
            {"type": "price_above", "threshold": 0.01},
            {"type": "price_crosses_below", "threshold": 1e9},
            {"type": "percent_move_up", "percent": 0.1, "window_seconds": 300},
            {"type": "percent_move_down", "percent": 0.1, "window_seconds": 300},
            {"type": "spread_pct_above", "threshold": 0.01},
            {"type": "iv_above", "threshold": 0},
            {"type": "iv_change_pct", "percent": -5, "window_seconds": 300},
            {"type": "delta_below", "threshold": 2},
            {"type": "vega_above", "threshold": -1},
        ],
        "bars": [
            {"type": "rsi_above", "threshold": 50, "period": 2},
            {"type": "sma_cross_up", "fast": 2, "slow": 3},
            {"type": "bollinger_break_upper", "period": 2, "stddev": 0.5},
            {"type": "bollinger_break_lower", "period": 2, "stddev": 0.5},
            {"type": "new_high", "period": 2},
            {"type": "volume_spike", "multiple": 1.1, "period": 2},
            {"type": "iv_rank_above", "threshold": 10, "lookback_days": 2},
        ],
        "flow": [
            {"type": "unusual_volume", "ratio": 1},
            {"type": "flow_premium_above", "threshold": 1},
            {"type": "flow_sweep", "moneyness": "otm"},
            {"type": "flow_block"},
            {"type": "flow_repeated_hits", "count": 2, "window_seconds": 600},
            {"type": "put_call_premium_ratio", "threshold": 0.5, "window_seconds": 600},
        ],
        "positions": [
            {"type": "position_pnl_pct_above", "threshold": -100},
            {"type": "position_pnl_below", "threshold": 1e12},
            {"type": "expiry_within_days", "days": 3650},
        ],
    }
    priorities = {"ticks": "MEDIUM", "bars": "LOW", "flow": "HIGH", "positions": "CRITICAL"}
    return [
        Rule.model_validate(
            {
                "id": f"ctx-{name}",
                "user_id": user_id,
                "name": name,
                "cooldown_seconds": 0,
                "priority": priorities[name],
                "conditions": {"any": leaves},
            }
        )
        for name, leaves in trees.items()
    ]


PRICE_PATH = (150, 210, 180, 260, 90, 205, 195, 300, 50, 199)  # every level crossed both ways


def market_events(symbol: str, user_id: str, until: datetime) -> list[Any]:
    """Ticks (as a stock and as an option), prints and a position on ``symbol``, before
    ``until``: enough for bars to close and windows to fill."""
    start = max(until - timedelta(minutes=10), EARLIEST_TIMESTAMP)
    step = (until - start) / 10
    events: list[Any] = [
        Position(user_id=user_id, symbol=symbol, quantity=5, avg_price=250, multiplier=100,
                 ts=start)
    ]  # fmt: skip
    for index, price in enumerate(PRICE_PATH):
        events.append(
            Tick(symbol=symbol, ts=start + step * index, price=price, size=10 * index,
                 bid=price * 0.99, ask=price * 1.01, iv=20 + index, delta=0.5, vega=0.1)
        )  # fmt: skip
    for index, right in enumerate(("C", "P", "C")):
        events.append(
            OptionsFlow(id=f"ctx-{index}", ts=start + step * (index + 5), underlying=symbol,
                        contract=OCC, right=right, strike=200, expiry="2026-01-16", price=3,
                        size=100, side="ask", trade_type=("sweep", "block", "single")[index],
                        open_interest=10, day_volume=100, underlying_price=199)
        )  # fmt: skip
    return events


def exercise(item: ParsedItem) -> None:
    """The accepted item through the engine, the rule router and the user desk."""
    user = "u-1"
    desk_items: list[Any] = []
    if isinstance(item, Rule | RuleTombstone):
        RuleRouter(8).route(item)
        symbol = item.scope[0] if isinstance(item, Rule) and item.scope else "AAPL"
        user = item.user_id if isinstance(item, Rule) else user
        batch = [item, *market_events(symbol, user, T0)]
    elif isinstance(item, Tick | OptionsFlow | Position | PositionClosed):
        symbol = item.underlying if isinstance(item, OptionsFlow) else item.symbol
        if isinstance(item, Position | PositionClosed):
            user = item.user_id
        until = item.ts if isinstance(item, Tick | OptionsFlow | Position) else T0
        batch = [*context_rules(user), *market_events(symbol, user, until), *repeated(item)]
    else:
        assert isinstance(item, Profile | ProfileReset | Feedback)
        user, desk_items = item.user_id, [item]
        batch = [*context_rules(user), *market_events("AAPL", user, T0)]
        if isinstance(item, Feedback):
            desk_items.append(feedback_alert(item))
    engine = ShardEngine()
    alerts = engine.process(batch) + engine.close_bars()
    for alert in alerts:
        alert.to_json()
    desk = UserDesk()
    desk.process([*desk_items, *(alert for alert in alerts if alert.user_id == user)])
    desk.close_all()


def repeated(item: ParsedItem) -> list[ParsedItem]:
    """A market event and copies of it a minute and two before: extreme values in several bars
    and windows at once, the way a broken feed sends them."""
    if not isinstance(item, Tick | OptionsFlow):
        return [item]
    earlier = [max(item.ts - timedelta(minutes=m), EARLIEST_TIMESTAMP) for m in (2, 1)]
    return [*(item.model_copy(update={"ts": ts}) for ts in earlier), item]


def feedback_alert(feedback: Feedback) -> TriggeredAlert:
    """The alert a feedback names, triggered just before it."""
    return TriggeredAlert(
        alert_id=feedback.alert_id,
        rule_id="r-fb",
        rule_version=1,
        user_id=feedback.user_id,
        symbol=feedback.symbol or "AAPL",
        priority="MEDIUM",
        title="t",
        message="m",
        triggered_at=max(feedback.ts - timedelta(seconds=1), EARLIEST_TIMESTAMP),
        condition_types=[feedback.condition_type or "price_above"],
        values={"price": 1.0},
    )


@settings(FUZZ, max_examples=1000)
@given(arbitrary_records())
def test_any_record_content_is_an_item_or_a_dead_letter(record: Record) -> None:
    item = accepted(record)
    if item is not None:
        exercise(item)


@settings(FUZZ, max_examples=4000)
@given(hostile_records())
def test_a_hostile_field_in_a_valid_message_never_crashes_a_step(record: Record) -> None:
    item = accepted(record)
    if item is not None:
        exercise(item)


@settings(FUZZ, max_examples=len(BASES))
@given(st.sampled_from(BASES))
def test_the_valid_messages_are_accepted_and_do_real_work(base: tuple[str, dict[str, Any]]) -> None:
    topic, message = base
    key = key_of(topic, message)
    item = accepted(Record(topic, key.encode() if key else None, dump(message)))
    assert item is not None
    exercise(item)
