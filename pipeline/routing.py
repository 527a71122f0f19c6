"""Where things go: evaluation shards by symbol, and the rule changes each shard must see.

Evaluation is keyed by shard, ``shard_of(symbol)``; a rule lives in the shards of the symbols it
watches, and a wildcard rule in every shard (a broadcast, ARCHITECTURE.md §3). A rule that moves
(a new version watching other symbols) or is deleted must leave the shards it was in, so the
router remembers, per rule id, which shards hold it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from pipeline.messages import Rule, RuleTombstone


def shard_of(symbol: str, shard_count: int) -> str:
    """The evaluation key of a symbol; stable across processes and runs (not ``hash()``)."""
    return f"shard-{zlib.crc32(symbol.encode()) % shard_count:04d}"


def all_shards(shard_count: int) -> list[str]:
    return [f"shard-{index:04d}" for index in range(shard_count)]


RuleChange = Rule | RuleTombstone


@dataclass
class RuleRouter:
    """Per rule id: the shards currently holding it. Engine-free; one instance per rule id."""

    shard_count: int
    shards: set[str] = field(default_factory=set)

    def route(self, rule_id: str, rule: Rule | None) -> list[tuple[str, RuleChange]]:
        """The (shard, change) pairs for a new rule version, or for a deletion when None."""
        if rule is None:
            target: set[str] = set()
        elif rule.is_wildcard:
            target = set(all_shards(self.shard_count))
        else:
            target = {shard_of(symbol, self.shard_count) for symbol in rule.scope}
        changes: list[tuple[str, RuleChange]] = []
        if rule is not None:
            changes += [(shard, rule) for shard in sorted(target)]
        changes += [(shard, RuleTombstone(rule_id)) for shard in sorted(self.shards - target)]
        self.shards = target
        return changes
