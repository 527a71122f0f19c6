"""The safety net of the stateful steps: one item that makes a step raise becomes a dead letter.

Parsing catches every fault a message's content can cause (pipeline/parsing.py). What is left is
a bug, or content no validation foresaw; either way one item must not stop the job, and with
recovery on it would stop it again at every restart (a poison pill). So each stateful step hands
every item to ``SafetyNet.run``: an exception becomes a dead letter naming the step, the error
and the item, and the step goes on with the next item. ``engine.on_item_error = "stop"`` lets the
exception through instead, for operators who would rather stop.

A dead letter made here has ``partition`` and ``offset`` -1 (the record's position is not kept
past parsing); ``source_topic`` and ``key`` are those of the item's topic, ``value`` the item as
parsed, and ``error`` starts with the step's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pipeline.config import Topics
from pipeline.messages import (
    DeadLetter,
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
    message_key,
)

log = logging.getLogger("smart_alerts.safety")

T = TypeVar("T")
Out = TypeVar("Out")


@dataclass(frozen=True)
class SafetyNet:
    step: str
    topics: Topics
    stop: bool = False

    def run(self, item: T, handle: Callable[[T], Sequence[Out]]) -> list[Out | DeadLetter]:
        return self.run_each([item], handle)

    def run_each(
        self, items: Sequence[T], handle: Callable[[T], Sequence[Out]]
    ) -> list[Out | DeadLetter]:
        """``handle`` each item in order; one that raises becomes a dead letter and the next
        goes on (one ``try`` for the whole run, not one per item: this is the hot path)."""
        out: list[Out | DeadLetter] = []
        index, count = 0, len(items)
        while index < count:
            try:
                while index < count:
                    out.extend(handle(items[index]))
                    index += 1
            except Exception as exc:
                if self.stop:
                    raise
                letter = self.dead_letter(items[index], exc)
                log.error("%s: %s (dead-lettered)", self.step, letter.error)
                out.append(letter)
                index += 1
        return out

    def run_for_user(
        self, user_id: str, handle: Callable[[str], Sequence[Out]]
    ) -> list[Out | DeadLetter]:
        """``run`` for work on one user's state that no single input item caused (a watermark
        or a timer reached it)."""
        try:
            return list(handle(user_id))
        except Exception as exc:
            if self.stop:
                raise
            letter = DeadLetter(
                source_topic=self.topics.triggered,
                partition=-1,
                offset=-1,
                key=user_id,
                value=None,
                error=f"{self.step}: user {user_id}: {type(exc).__name__}: {exc}"[:4096],
                ts=datetime.now(UTC),
            )
            log.error("%s (dead-lettered)", letter.error)
            return [letter]

    def dead_letter(self, item: object, exc: Exception) -> DeadLetter:
        topic, key = self._origin(item)
        value = item.to_json().decode() if isinstance(item, Message) else repr(item)
        ts = getattr(item, "ts", None) or getattr(item, "triggered_at", None)
        return DeadLetter(
            source_topic=topic,
            partition=-1,
            offset=-1,
            key=key,
            value=value[:65536],
            error=f"{self.step}: {type(exc).__name__}: {exc}"[:4096],
            ts=ts if isinstance(ts, datetime) else datetime.now(UTC),
        )

    def _origin(self, item: object) -> tuple[str, str | None]:
        t = self.topics
        if isinstance(item, Tick):
            return t.ticks, message_key(item)
        if isinstance(item, OptionsFlow):
            return t.options_flow, message_key(item)
        if isinstance(item, Rule):
            return t.rules, item.id
        if isinstance(item, RuleTombstone):
            return t.rules, item.rule_id
        if isinstance(item, Position):
            return t.positions, message_key(item)
        if isinstance(item, PositionClosed):
            return t.positions, f"{item.user_id}:{item.symbol}"
        if isinstance(item, Profile | ProfileReset | Feedback | TriggeredAlert):
            topic = {
                Profile: t.profiles,
                ProfileReset: t.profiles,
                Feedback: t.feedback,
                TriggeredAlert: t.triggered,
            }[type(item)]
            return topic, item.user_id
        return "", None
