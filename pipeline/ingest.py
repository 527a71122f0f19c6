"""INGEST: one input partition's records, parsed, keyed for the step that takes them, and
followed by its progress markers.

Each topic has one route through the dataflow:

- ``rules``: to the rule router, keyed by the rules partition (so a partition's marker follows
  its rules through the router, which then hands both to the evaluation shards);
- ``market``: ticks, options flow and positions to evaluation, keyed by the shard of their
  symbol (``routing.shard_of``); a marker goes to every shard;
- ``users``: profiles and feedback to personalization, keyed by the user's shard
  (``routing.user_shard_of``); a profiles marker goes to every user shard.

Ticks and flow prints carry the event time that drives evaluation's watermark, feedback the one
personalization also waits for (relevance must have learnt from a window's feedback before it
closes); rules, positions and profiles are reference data whose markers drive the start-up
gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from pipeline.config import Topics
from pipeline.evaluate.routing import all_shards, all_user_shards, shard_of, user_shard_of
from pipeline.event_time import Progress
from pipeline.messages import (
    Feedback,
    OptionsFlow,
    Position,
    PositionClosed,
    Profile,
    ProfileReset,
    Tick,
)
from pipeline.parsing import ParsedItem, RawRecord, parse_record

Keyed = tuple[str, object]


class Route(StrEnum):
    RULES = "rules"
    MARKET = "market"
    USERS = "users"


def route_of(topic: str, topics: Topics) -> Route:
    if topic == topics.rules:
        return Route.RULES
    if topic in (topics.ticks, topics.options_flow, topics.positions):
        return Route.MARKET
    if topic in (topics.profiles, topics.feedback):
        return Route.USERS
    raise ValueError(f"{topic!r} is not an input topic")


def part_name(topic: str, partition: int) -> str:
    return f"{topic}#{partition}"


@dataclass(frozen=True)
class Partitioning:
    """The keys of the stateful steps; every process computes the same ones."""

    shard_count: int
    user_shard_count: int

    def shards(self) -> tuple[str, ...]:
        return all_shards(self.shard_count)

    def user_shards(self) -> tuple[str, ...]:
        return all_user_shards(self.user_shard_count)


class PartitionIngest:
    """Parses and keys the records of one input partition; knows where its markers go."""

    def __init__(self, part: str, route: Route, topics: Topics, keys: Partitioning) -> None:
        self.part = part
        self.route = route
        self.topics = topics
        self.keys = keys
        self._marker_keys: tuple[str, ...] = {
            Route.RULES: (part,),
            Route.MARKET: keys.shards(),
            Route.USERS: keys.user_shards(),
        }[route]

    def records(self, records: Sequence[RawRecord]) -> tuple[list[object], datetime | None]:
        """Keyed items and dead letters, in order; and the newest event time among them."""
        out: list[object] = []
        newest: datetime | None = None
        for record in records:
            parsed = parse_record(record, self.topics)
            item = parsed.item
            if item is None:
                out.append(parsed.dead_letter)
                continue
            out.append((self._key(item), item))
            if isinstance(item, Tick | OptionsFlow | Feedback):
                ts = item.ts
                if newest is None or ts > newest:
                    newest = ts
        return out, newest

    def markers(self, progress: Progress) -> list[Keyed]:
        return [(key, replace(progress, to=key)) for key in self._marker_keys]

    def _key(self, item: ParsedItem) -> str:
        keys = self.keys
        if self.route is Route.RULES:
            return self.part
        if isinstance(item, Tick | Position | PositionClosed):
            return shard_of(item.symbol, keys.shard_count)
        if isinstance(item, OptionsFlow):
            return shard_of(item.underlying, keys.shard_count)
        if isinstance(item, Profile | ProfileReset | Feedback):
            return user_shard_of(item.user_id, keys.user_shard_count)
        raise TypeError(f"{type(item).__name__} has no route")
