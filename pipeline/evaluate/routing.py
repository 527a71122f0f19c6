"""Where things go: evaluation shards by symbol, and the rule changes each shard must see.

Evaluation is keyed by shard, ``shard_of(symbol)``; a rule lives in the shards of the symbols it
watches, and a wildcard rule in every shard (a broadcast, ARCHITECTURE.md §3). A rule that moves
(a new version watching other symbols) or is deleted must leave the shards it was in, so the
router remembers, per rule id, which shards hold it. Personalization is keyed by user shard,
``user_shard_of(user_id)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from functools import cache

from pipeline.event_time import Progress
from pipeline.messages import Rule, RuleTombstone


def shard_of(symbol: str, shard_count: int) -> str:
    """The evaluation key of a symbol; stable across processes and runs (not ``hash()``)."""
    return all_shards(shard_count)[zlib.crc32(symbol.encode()) % shard_count]


@cache
def all_shards(shard_count: int) -> tuple[str, ...]:
    return tuple(f"shard-{index:04d}" for index in range(shard_count))


def user_shard_of(user_id: str, user_shard_count: int) -> str:
    """The personalization key of a user: many users share one key, so a watermark can reach
    every user by going to each key (ARCHITECTURE.md §2)."""
    return all_user_shards(user_shard_count)[zlib.crc32(user_id.encode()) % user_shard_count]


@cache
def all_user_shards(user_shard_count: int) -> tuple[str, ...]:
    return tuple(f"users-{index:04d}" for index in range(user_shard_count))


RuleChange = Rule | RuleTombstone
_EVERY_SHARD = "*"


@dataclass
class RuleRouter:
    """The rule changes of one rules partition, routed to shards. Engine-free.

    It remembers per rule id which shards hold the rule (one shard, every shard, or a set), so a
    new version watching other symbols, or a tombstone, leaves the shards it is no longer for.
    A progress marker of the partition follows its rules to every shard.
    """

    shard_count: int
    placed: dict[str, str | frozenset[str]] = field(default_factory=dict)

    def route(self, change: RuleChange) -> list[tuple[str, RuleChange]]:
        """The (shard, change) pairs of a new rule version or a tombstone."""
        if isinstance(change, RuleTombstone):
            rule_id, rule = change.rule_id, None
        else:
            rule_id, rule = change.id, change
        before = self._shards(self.placed.pop(rule_id, None))
        if rule is None:
            target: set[str] = set()
        elif rule.is_wildcard:
            target = set(all_shards(self.shard_count))
            self.placed[rule_id] = _EVERY_SHARD
        else:
            target = {shard_of(symbol, self.shard_count) for symbol in rule.scope}
            self.placed[rule_id] = next(iter(target)) if len(target) == 1 else frozenset(target)
        changes: list[tuple[str, RuleChange]] = []
        if rule is not None:
            changes += [(shard, rule) for shard in sorted(target)]
        changes += [(shard, RuleTombstone(rule_id)) for shard in sorted(before - target)]
        return changes

    def broadcast(self, progress: Progress) -> list[tuple[str, Progress]]:
        """The partition's progress marker, after its rules, to every shard."""
        return [(shard, replace(progress, to=shard)) for shard in all_shards(self.shard_count)]

    def _shards(self, placed: str | frozenset[str] | None) -> set[str]:
        if placed is None:
            return set()
        if placed == _EVERY_SHARD:
            return set(all_shards(self.shard_count))
        return {placed} if isinstance(placed, str) else set(placed)
