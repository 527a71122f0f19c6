"""Event time across partitions, shards and processes: progress markers and watermarks.

Windows must close when *every* input has passed them, not when one batch happened to bring a
newer event. Three pieces carry that knowledge through the dataflow in-band, behind the data it
describes, so it holds with any number of partitions, workers and processes:

1. Each input partition follows its records with a ``Progress`` marker (``ProgressReporter``
   decides when): the newest event time read so far, whether the partition is caught up with
   its end, and whether it has gone idle. Markers travel the same route as the partition's
   records (a rules partition's through the rule router, a market partition's to every
   evaluation shard), and routes preserve order, so a shard that sees a marker has seen every
   record that came before it.
2. Each evaluation shard joins the markers of all market partitions (``WatermarkJoin``): the
   watermark is the slowest partition's newest event time; an idle partition stops holding it
   back. After its own alerts the shard emits a ``Watermark``: it will send no alert triggered
   before ``complete_before`` (the watermark minus the allowed lateness).
3. Each personalization shard joins the watermarks of every evaluation shard the same way and
   closes the consolidation windows that end at or before their minimum.

Reference topics (rules, positions, profiles) use the same markers for the start-up gate: a
step evaluates nothing until every reference partition reported being caught up once
(``ReferenceGate``), so rules present at start-up apply to the first tick in 1 or N processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

PROGRESS_INTERVAL_S = 0.5  # markers per partition at most this often while records flow


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one input partition ("topic#partition") has been read."""

    part: str
    newest: datetime | None  # newest event time read so far; None before the first event
    caught_up: bool  # at the partition's end when the marker was made
    idle: bool  # caught up and quiet for the idle timeout, or read to the end of a bounded run
    to: str = ""  # the key of the step it was sent to (a shard learns its own name from it)


@dataclass(frozen=True, slots=True)
class Watermark:
    """From one evaluation shard: no alert triggered before ``complete_before`` will follow."""

    shard: str
    complete_before: datetime | None
    caught_up: bool  # every market partition was at its end, as far as this shard knows


@dataclass
class ProgressReporter:
    """When one source partition sends its ``Progress`` marker: at once when its state changes
    (caught up, idle), else at most every ``PROGRESS_INTERVAL_S`` while records flow. Wall-clock
    seconds are passed in, so the rule is testable; only latency depends on them."""

    part: str
    idle_after: float  # seconds caught up with no new record before the partition is idle
    bounded: bool  # a bounded run's partition at its end is idle for good
    newest: datetime | None = None
    _sent: Progress | None = None
    _sent_at: float = float("-inf")
    _quiet_since: float | None = None

    def after_batch(
        self, newest: datetime | None, records: int, at_end: bool, now: float
    ) -> Progress | None:
        """The marker to send after a batch of ``records`` records (``newest``: the newest
        event time among them), or None."""
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest
        if records or not at_end:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        idle = at_end and (
            self.bounded
            or (self._quiet_since is not None and now - self._quiet_since >= self.idle_after)
        )
        current = Progress(self.part, self.newest, at_end, idle)
        sent = self._sent
        changed = sent is None or (sent.caught_up, sent.idle) != (at_end, idle)
        if not changed and (current == sent or now - self._sent_at < PROGRESS_INTERVAL_S):
            return None
        self._sent, self._sent_at = current, now
        return current


@dataclass
class _Source:
    newest: datetime | None
    caught_up: bool
    idle: bool


@dataclass
class WatermarkJoin:
    """The watermark of a set of sources: the minimum of their newest event times.

    A source that never reported holds the watermark at None. Idle sources do not hold it back;
    when every source is idle it is the newest time any of them reached. The watermark never
    moves backwards: an event older than it, arriving later, is late.
    """

    expected: frozenset[str]
    sources: dict[str, _Source] = field(default_factory=dict)
    _watermark: datetime | None = None

    def observe(
        self, name: str, newest: datetime | None, *, caught_up: bool, idle: bool = False
    ) -> None:
        if name in self.expected:
            self.sources[name] = _Source(newest, caught_up, idle)

    def expect(self, expected: frozenset[str]) -> None:
        """The sources changed (partitions added on a restart): forget those that are gone."""
        self.expected = expected
        self.sources = {name: s for name, s in self.sources.items() if name in expected}

    @property
    def watermark(self) -> datetime | None:
        if len(self.sources) < len(self.expected):
            return self._watermark
        active = [s.newest for s in self.sources.values() if not s.idle]
        if active:
            candidate = None if None in active else min(t for t in active if t is not None)
        else:
            reached = [s.newest for s in self.sources.values() if s.newest is not None]
            candidate = max(reached, default=None)
        if candidate is not None and (self._watermark is None or candidate > self._watermark):
            self._watermark = candidate
        return self._watermark

    def passed(self, at: datetime) -> bool:
        """Every source reported, and each has read past ``at``, is at its end, or is idle."""
        return len(self.sources) == len(self.expected) and all(
            source.idle or source.caught_up or (source.newest is not None and source.newest >= at)
            for source in self.sources.values()
        )

    @property
    def caught_up(self) -> bool:
        return len(self.sources) == len(self.expected) and all(
            s.caught_up for s in self.sources.values()
        )


@dataclass
class ReferenceGate:
    """Opens once every expected reference partition reported being caught up; stays open."""

    expected: frozenset[str]
    loaded: set[str] = field(default_factory=set)
    is_open: bool = False

    def __post_init__(self) -> None:
        self.is_open = self.is_open or not self.expected

    def observe(self, progress: Progress) -> bool:
        """Note a marker; True when this marker opened the gate."""
        if self.is_open or progress.part not in self.expected or not progress.caught_up:
            return False
        self.loaded.add(progress.part)
        self.is_open = self.loaded >= self.expected
        return self.is_open


def floor_second(ts: datetime | None) -> datetime | None:
    """Watermarks are sent at one-second steps: window ends and lateness are whole seconds."""
    return None if ts is None else ts.replace(microsecond=0)


def minus(ts: datetime | None, delta: timedelta) -> datetime | None:
    return None if ts is None else ts - delta
